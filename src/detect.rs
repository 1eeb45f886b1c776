//! Detect: evaluate the definition's metrics, derived numbers and rules for
//! one account at one moment of event time, and compute score and tier.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{Expr, LiteralValue};
use cel::common::types::CelDouble as Double;
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::objects::{AsKeyRef, KeyRef};
use cel::parser::Expression;
use cel::{Context, Program, Value};
use serde_json::Value as Json;

use crate::config::definition::MetricKind;
use crate::config::CompiledDefinition;
use crate::state::account::{bucket_of, AccountState, WindowSums};

/// The outcome of one rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Fires,
    DoesNotFire,
    /// The condition could not be evaluated (e.g. a trait of the wrong
    /// type); the rule does not fire.
    Error(String),
}

/// Everything known about an account at one moment.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Metrics then derived numbers, in definition order.
    pub values: Vec<(String, f64)>,
    /// Per rule, in definition order.
    pub outcomes: Vec<Outcome>,
    /// Indices of the rules that fire.
    pub fired: Vec<usize>,
    /// 0..=100.
    pub score: u32,
    /// Index into `CompiledDefinition::tiers`.
    pub tier: usize,
    pub account_age_days: f64,
}

impl Evaluation {
    pub fn value(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|v| v.0 == name).map(|v| v.1)
    }
}

/// The `account` variable of rules: the account's traits from `group`
/// calls, plus `domain` (when the traits do not give one: the most common
/// work-email domain of its users) and `personal_account` (every user with
/// an email is on a free mail provider). Only the traits `fields` names,
/// when it names them (see [`TraitFields`]).
pub fn account_to_cel(acct: &AccountState, var: AccountVar<'_>) -> Value {
    let mut json: serde_json::Map<String, Json> = serde_json::from_str(&acct.traits_json).unwrap_or_default();
    if var.fields.holds("domain") || var.fields.holds("personal_account") {
        let (domain, personal) = acct.identity(var.free_mail);
        if let Some(d) = domain {
            json.insert("domain".into(), Json::String(d));
        }
        json.insert("personal_account".into(), Json::Bool(personal));
    }
    if let TraitFields::Only(_) = var.fields {
        json.retain(|k, _| var.fields.holds(k));
    }
    match json_to_cel(&Json::Object(json)) {
        v @ Value::Map(_) => v,
        _ => Value::from(HashMap::<String, Value>::new()),
    }
}

/// What an account's `account` variable is made of besides its record: the
/// free mail providers (for `personal_account`), and which of its traits
/// the expressions that read it can see.
#[derive(Debug, Clone, Copy)]
pub struct AccountVar<'a> {
    pub free_mail: &'a HashSet<String>,
    pub fields: &'a TraitFields,
}

/// Which of an account's traits the `account` variable holds: those the
/// definitions' expressions name (`account.f`, `has(account.f)`), or all
/// of them when an expression reads `account` in any other way
/// (`account["f"]`, `"f" in account`, `account.size()`, a comprehension
/// binding the name, ...) or names could resolve otherwise (a container).
///
/// The map is kept with each cached account once an evaluation read it
/// (see [`crate::state::store::AccountEntry::traits_cel`]). With all
/// traits, a rule that reads one at every evaluation made it the largest
/// part of a cached account's memory (739 bytes in 16 allocations for the
/// simulator's four traits, more for the dozens a real `group` call
/// carries); the shipped definition reads two, and only once a rule fires.
/// The expressions cannot tell the difference: the names they can read
/// have the same values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TraitFields {
    #[default]
    All,
    /// Sorted, without repeats.
    Only(Vec<String>),
}

impl TraitFields {
    /// Whether the map holds the trait `name` (when the account has it).
    pub fn holds(&self, name: &str) -> bool {
        match self {
            TraitFields::All => true,
            TraitFields::Only(f) => f.binary_search_by(|x| x.as_str().cmp(name)).is_ok(),
        }
    }

    /// What either of two definitions reads (they share an account's map).
    pub fn union(&self, other: &TraitFields) -> TraitFields {
        match (self, other) {
            (TraitFields::Only(a), TraitFields::Only(b)) => {
                let mut f: Vec<String> = a.iter().chain(b).cloned().collect();
                f.sort_unstable();
                f.dedup();
                TraitFields::Only(f)
            }
            _ => TraitFields::All,
        }
    }
}

/// Adds to `out` the traits `e` reads through the `account` variable (as
/// [`Vars`] resolves names where the first `seen` derived numbers are
/// known); `None` once it may read any.
fn account_reads(e: &Expression, def: &CompiledDefinition, seen: usize, out: &mut Option<Vec<String>>) {
    use cel::common::ast::EntryExpr;
    if out.is_none() {
        return;
    }
    let is_account = |name: &str| matches!(slot_of(def, seen, name), Some(Slot::Account));
    let mut sub = |e: &Expression| account_reads(e, def, seen, out);
    match &e.expr {
        Expr::Select(sel) => match &sel.operand.expr {
            Expr::Ident(name) if is_account(name) => {
                if let Some(f) = out {
                    f.push(sel.field.clone());
                }
            }
            _ => sub(&sel.operand),
        },
        Expr::Ident(name) => {
            // (`.account`, with a leading dot, is the same variable.)
            if is_account(name.strip_prefix('.').unwrap_or(name)) {
                *out = None;
            }
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                sub(t);
            }
            c.args.iter().for_each(sub);
        }
        Expr::Comprehension(c) => {
            let binds = [Some(&c.iter_var), c.iter_var2.as_ref(), Some(&c.accu_var)];
            if binds.into_iter().flatten().any(|v| v == "account") {
                *out = None;
                return;
            }
            [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result].into_iter().for_each(sub);
        }
        Expr::List(l) => l.elements.iter().for_each(sub),
        Expr::Map(m) => m.entries.iter().for_each(|en| match &en.expr {
            EntryExpr::MapEntry(me) => {
                sub(&me.key);
                sub(&me.value);
            }
            EntryExpr::StructField(sf) => sub(&sf.value),
        }),
        Expr::Struct(s) => s.entries.iter().for_each(|en| match &en.expr {
            EntryExpr::MapEntry(me) => {
                sub(&me.key);
                sub(&me.value);
            }
            EntryExpr::StructField(sf) => sub(&sf.value),
        }),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// Converts account traits (a JSON object) into a CEL map.
pub fn traits_to_cel(traits_json: &str) -> Value {
    let json: Json = serde_json::from_str(traits_json).unwrap_or(Json::Object(Default::default()));
    match json_to_cel(&json) {
        v @ Value::Map(_) => v,
        _ => Value::from(HashMap::<String, Value>::new()),
    }
}

fn json_to_cel(j: &Json) -> Value {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::List(a.iter().map(json_to_cel).collect::<Vec<_>>().into()),
        Json::Object(o) => {
            Value::from(o.iter().map(|(k, v)| (k.clone(), json_to_cel(v))).collect::<HashMap<String, Value>>())
        }
    }
}

/// The variables of an evaluation, handed to CEL through a
/// [`VariableResolver`] instead of a map of named, boxed values built and
/// dropped per evaluation: the metric and derived numbers are `Double`s in
/// one vector, looked up by the names the definition already holds, and the
/// account's traits are converted to a CEL map only if an expression reads
/// `account`.
///
/// Which names it knows, and which value a name gives, is exactly what a
/// context with `add_variable_from_value` for the metrics, then
/// `account_age_days` and `account`, then the derived numbers computed so far
/// would give (a later binding replaces an earlier one of the same name).
struct Vars<'a> {
    def: &'a CompiledDefinition,
    /// The metrics, in definition order, then the derived numbers computed
    /// so far (the first `nums.len() - def.metrics.len()` of `def.derived`).
    nums: &'a [Double],
    age: Double,
    /// The account's traits as a CEL map, made from `acct` ([`account_to_cel`])
    /// on first use: most evaluations read none (the shipped definition's
    /// score terms that do run only once a rule fires).
    traits: &'a OnceLock<Value>,
    acct: &'a AccountState,
    var: AccountVar<'a>,
    /// `traits` as a CEL value, made on first use.
    account: &'a OnceLock<Box<dyn Val>>,
}

/// What a variable name stands for.
enum Slot {
    /// `nums[i]`.
    Num(usize),
    Age,
    Account,
}

impl Vars<'_> {
    fn traits(&self) -> &Value {
        self.traits.get_or_init(|| account_to_cel(self.acct, self.var))
    }

    fn slot(&self, name: &str) -> Option<Slot> {
        slot_of(self.def, self.nums.len() - self.def.metrics.len(), name)
    }
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        Some(CowVal::Borrowed(match self.slot(name)? {
            Slot::Num(i) => &self.nums[i],
            Slot::Age => &self.age,
            Slot::Account => self
                .account
                .get_or_init(|| {
                    // As `Context::add_variable_from_value` does; a map from
                    // `traits_to_cel` always converts.
                    Box::<dyn Val>::try_from(self.traits().clone()).unwrap()
                })
                .as_ref(),
        }))
    }
}

/// A value of the native fast path ([`Fast`]).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar {
    Double(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
}

impl From<Scalar> for Value {
    /// What `Program::execute` returns for the same CEL value.
    fn from(s: Scalar) -> Value {
        match s {
            Scalar::Double(d) => Value::Float(d),
            Scalar::Int(i) => Value::Int(i),
            Scalar::UInt(u) => Value::UInt(u),
            Scalar::Bool(b) => Value::Bool(b),
        }
    }
}

/// An expression of the native fast path, with its names resolved when the
/// definition is compiled ([`Plans`]).
///
/// It evaluates without the CEL interpreter an expression made only of
/// number and boolean literals, the numeric variables (metrics, derived
/// numbers, `account_age_days`), `has(account.f)` and `account.f` (a number or
/// boolean trait), `? :`, `&&`, `||`, `!`, and `+ - * /`, unary `-` on
/// doubles, `< <= > >= == !=` on numbers. That covers the usual rules and
/// score terms, and spares the interpreter's per-comparison cost: cel 0.15
/// builds (and drops) a "no such overload" error for every `<`, `<=`, `>`,
/// `>=` it evaluates, even one that succeeds (`compare_values` makes its
/// error context eagerly), which is several allocations per comparison. It
/// also spares converting the traits to a CEL map. Names are resolved once,
/// not looked up by string on every evaluation of every event.
///
/// `None` from [`Fast::eval`] means: leave it to CEL. That is the answer for
/// anything else (strings, lists, functions, nested fields, ... : a
/// [`Fast::Cel`] node) and for every case where CEL would give an error (a
/// non-boolean condition, `NaN` compared, mixed types in arithmetic, a
/// missing trait read): the fast path only answers when CEL gives that very
/// answer, with no error, and CEL is pure, so evaluating there again is
/// exact. The semantics mirrored are those of
/// `cel::objects::Value::resolve_val` and of the operator traits of `Double`
/// and `Int`: IEEE arithmetic, numbers of different types compared by value,
/// `&&`/`||` short-circuiting from the left.
#[derive(Debug, Clone)]
enum Fast {
    Lit(Scalar),
    /// `nums[i]` of [`Vars`].
    Num(usize),
    Age,
    /// `has(account.f)`.
    Has(String),
    /// `account.f`, read from the traits map as is.
    Trait(String),
    Cond(Box<[Fast; 3]>),
    And(Box<[Fast; 2]>),
    Or(Box<[Fast; 2]>),
    Not(Box<Fast>),
    Neg(Box<Fast>),
    Arith(Arith, Box<[Fast; 2]>),
    /// A comparison: true when the ordering of the two is one of `.0`.
    Cmp([bool; 3], Box<[Fast; 2]>),
    /// Not mirrored: CEL evaluates it.
    Cel,
}

#[derive(Debug, Clone, Copy)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// The fast-path form ([`Fast`]) of each derived number, rule and score
/// term of a definition, in definition order.
#[derive(Debug, Clone, Default)]
pub struct Plans {
    derived: Vec<Fast>,
    rules: Vec<Fast>,
    bonus: Vec<Fast>,
    /// How a [`Memo`] keeps each of them (derived numbers, then rules, then
    /// score terms): `None` for one not kept (a CEL node, which may read
    /// anything; the account's age, which is new every event).
    kept: Vec<Option<Kept>>,
    /// The numbers all the kept ones read.
    memo_len: usize,
    /// Tells these plans from any other (for [`Memo`]); a clone keeps it.
    id: u64,
    /// The traits its expressions read through `account`.
    account: TraitFields,
}

/// A plan kept by a [`Memo`]: where its inputs start in `Memo::inputs`,
/// the numbers it reads (indexes into `Vars::nums`), and whether it reads
/// traits.
#[derive(Debug, Clone)]
struct Kept {
    start: usize,
    nums: Vec<usize>,
    traits: bool,
}

/// The inputs of a plan with no CEL node.
#[derive(Debug, Clone, Default)]
struct Reads {
    nums: Vec<usize>,
    age: bool,
    traits: bool,
}

impl Reads {
    fn of(f: &Fast) -> Option<Reads> {
        let mut r = Reads::default();
        r.add(f).then_some(r)
    }

    /// Adds what `f` reads; `false` if it has a CEL node.
    fn add(&mut self, f: &Fast) -> bool {
        match f {
            Fast::Lit(_) => true,
            Fast::Num(i) => {
                if !self.nums.contains(i) {
                    self.nums.push(*i);
                }
                true
            }
            Fast::Age => {
                self.age = true;
                true
            }
            Fast::Has(_) | Fast::Trait(_) => {
                self.traits = true;
                true
            }
            Fast::Cond(a) => a.iter().all(|x| self.add(x)),
            Fast::And(a) | Fast::Or(a) | Fast::Arith(_, a) | Fast::Cmp(_, a) => a.iter().all(|x| self.add(x)),
            Fast::Not(a) | Fast::Neg(a) => self.add(a),
            Fast::Cel => false,
        }
    }
}

/// The last result of each plan of one definition, with the inputs it was
/// computed from (the engine keeps a few thousand, each used by the
/// accounts whose id falls on it; never written). A plan whose inputs are
/// what they were gives what it gave, for whichever account: the fast path
/// is pure, and the inputs are compared exactly (the bits of every number it
/// reads, and the very map of traits, held here so that a new map cannot
/// take its address; each account's map is its own). A plan that reads the
/// account's age, new every event, is not kept. This is how rules are
/// evaluated only when an input they read has changed: on dense accounts
/// most events change the event counts, not the active users, signals or
/// traits that most rules and score terms read.
#[derive(Debug, Clone, Default)]
pub struct Memo {
    plans: u64,
    /// The numbers each plan last read, one plan after another (from
    /// `Kept::start`).
    inputs: Vec<u64>,
    /// Per plan: its last result, and the generation of `traits` it was
    /// computed with if it reads traits (`None`: it did not get to read them).
    results: Vec<Option<(Memoized, Option<u64>)>>,
    /// The map of traits the latest results that read traits were computed
    /// with; a new map is a new generation.
    traits: Option<Value>,
    traits_gen: u64,
}

#[derive(Debug, Clone)]
enum Memoized {
    Num(f64),
    Outcome(Outcome),
    Term(Option<f64>),
}

fn same_map(a: &Value, b: &Value) -> bool {
    matches!((a, b), (Value::Map(a), Value::Map(b)) if Arc::ptr_eq(&a.map, &b.map))
}

impl Memo {
    /// Plan `p`'s result for the numbers `nums` (and `traits`, if it reads
    /// them), computed by `compute` unless its inputs are those of its last
    /// result.
    fn get_or(
        &mut self,
        plans: &Plans,
        p: usize,
        nums: &[Double],
        traits: &OnceLock<Value>,
        compute: impl FnOnce() -> Memoized,
    ) -> Memoized {
        let Some(Some(r)) = plans.kept.get(p) else { return compute() };
        if self.plans != plans.id {
            *self = Memo {
                plans: plans.id,
                inputs: vec![0; plans.memo_len],
                results: vec![None; plans.kept.len()],
                traits: None,
                traits_gen: 0,
            };
        }
        let bits = |i: usize| nums.get(i).map(|n| n.inner().to_bits());
        let key = &mut self.inputs[r.start..r.start + r.nums.len()];
        if let Some((result, gen)) = &self.results[p] {
            let same_nums = r.nums.iter().zip(key.iter()).all(|(&i, &k)| bits(i) == Some(k));
            let same_traits = !r.traits
                || (*gen == Some(self.traits_gen)
                    && matches!((&self.traits, traits.get()), (Some(a), Some(b)) if same_map(a, b)));
            if same_nums && same_traits {
                return result.clone();
            }
        }
        let result = compute();
        for (k, &i) in key.iter_mut().zip(&r.nums) {
            *k = bits(i).unwrap_or(0);
        }
        // The traits it read (made by reading them): the map the results
        // that read traits were computed with from now on.
        let gen = match traits.get().filter(|_| r.traits) {
            Some(t) => {
                if !self.traits.as_ref().is_some_and(|m| same_map(m, t)) {
                    self.traits = Some(t.clone());
                    self.traits_gen += 1;
                }
                Some(self.traits_gen)
            }
            None => None,
        };
        self.results[p] = Some((result.clone(), gen));
        result
    }
}

impl Plans {
    /// Resolves the names of `def`'s programs as [`Vars::slot`] does at
    /// their place: derived number `j` sees the metrics and the derived
    /// numbers before it; rules and score terms see them all.
    pub fn new(def: &CompiledDefinition) -> Plans {
        // With a container set, CEL would look a name up under it first
        // (where a type might answer); the fast path only knows plain names.
        let native = def.env.container_name().is_empty();
        let plan = |program: &Program, seen: usize| {
            if native {
                compile(program.expression(), def, seen)
            } else {
                Fast::Cel
            }
        };
        let all = def.derived.len();
        let derived: Vec<Fast> = def.derived.iter().enumerate().map(|(j, d)| plan(&d.1, j)).collect();
        let rules: Vec<Fast> = def.rules.iter().map(|r| plan(&r.program, all)).collect();
        let bonus: Vec<Fast> = def.bonus.iter().map(|p| plan(p, all)).collect();
        let mut memo_len = 0;
        let kept = derived
            .iter()
            .chain(&rules)
            .chain(&bonus)
            .map(|f| {
                let r = Reads::of(f).filter(|r| !r.age)?;
                memo_len += r.nums.len();
                Some(Kept { start: memo_len - r.nums.len(), nums: r.nums, traits: r.traits })
            })
            .collect();
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let account = if native {
            let mut reads = Some(Vec::new());
            for (j, (_, program)) in def.derived.iter().enumerate() {
                account_reads(program.expression(), def, j, &mut reads);
            }
            for program in def.rules.iter().map(|r| &r.program).chain(&def.bonus) {
                account_reads(program.expression(), def, all, &mut reads);
            }
            reads.map_or(TraitFields::All, |mut f| {
                f.sort_unstable();
                f.dedup();
                TraitFields::Only(f)
            })
        } else {
            TraitFields::All
        };
        Plans { derived, rules, bonus, kept, memo_len, id, account }
    }

    /// The traits the definition's expressions read through `account`.
    pub fn account_fields(&self) -> &TraitFields {
        &self.account
    }
}

/// What `name` stands for where the first `seen` derived numbers are known:
/// the latest derived number of that name, else `account_age_days` or
/// `account`, else the latest metric of that name.
fn slot_of(def: &CompiledDefinition, seen: usize, name: &str) -> Option<Slot> {
    let n_metrics = def.metrics.len();
    if let Some(j) = def.derived[..seen].iter().rposition(|d| d.0 == name) {
        return Some(Slot::Num(n_metrics + j));
    }
    match name {
        "account_age_days" => Some(Slot::Age),
        "account" => Some(Slot::Account),
        _ => def.metrics.iter().rposition(|m| m.name == name).map(Slot::Num),
    }
}

fn compile(e: &Expression, def: &CompiledDefinition, seen: usize) -> Fast {
    use cel::common::ast::operators as op;
    let sub = |e: &Expression| compile(e, def, seen);
    let two = |a: &[Expression]| Box::new([sub(&a[0]), sub(&a[1])]);
    match &e.expr {
        Expr::Literal(LiteralValue::Double(d)) => Fast::Lit(Scalar::Double(*d.inner())),
        Expr::Literal(LiteralValue::Int(i)) => Fast::Lit(Scalar::Int(*i.inner())),
        Expr::Literal(LiteralValue::UInt(u)) => Fast::Lit(Scalar::UInt(*u.inner())),
        Expr::Literal(LiteralValue::Boolean(b)) => Fast::Lit(Scalar::Bool(*b.inner())),
        Expr::Ident(name) => match slot_of(def, seen, name) {
            Some(Slot::Num(i)) => Fast::Num(i),
            Some(Slot::Age) => Fast::Age,
            Some(Slot::Account) | None => Fast::Cel,
        },
        Expr::Select(sel) => {
            let Expr::Ident(name) = &sel.operand.expr else { return Fast::Cel };
            if !matches!(slot_of(def, seen, name), Some(Slot::Account)) {
                return Fast::Cel;
            }
            if sel.test {
                return Fast::Has(sel.field.clone());
            }
            // CEL looks the whole name `account.f` up first, as a variable
            // (names have no dots, but still) and as a type.
            let mut buf = [0u8; 128];
            let Some(whole) = join_dotted(&mut buf, name, &sel.field) else { return Fast::Cel };
            if slot_of(def, seen, whole).is_some() || def.env.types().find_type(whole).is_some() {
                return Fast::Cel;
            }
            Fast::Trait(sel.field.clone())
        }
        Expr::Call(call) if call.target.is_none() => {
            let a = &call.args;
            // [less, equal, greater]: the orderings that make it true.
            let cmp = |when: [bool; 3]| Fast::Cmp(when, two(a));
            match (call.func_name.as_str(), a.len()) {
                (op::CONDITIONAL, 3) => Fast::Cond(Box::new([sub(&a[0]), sub(&a[1]), sub(&a[2])])),
                (op::LOGICAL_AND, 2) => Fast::And(two(a)),
                (op::LOGICAL_OR, 2) => Fast::Or(two(a)),
                (op::LOGICAL_NOT, 1) => Fast::Not(Box::new(sub(&a[0]))),
                (op::NEGATE, 1) => Fast::Neg(Box::new(sub(&a[0]))),
                (op::ADD, 2) => Fast::Arith(Arith::Add, two(a)),
                (op::SUBSTRACT, 2) => Fast::Arith(Arith::Sub, two(a)),
                (op::MULTIPLY, 2) => Fast::Arith(Arith::Mul, two(a)),
                (op::DIVIDE, 2) => Fast::Arith(Arith::Div, two(a)),
                (op::LESS, 2) => cmp([true, false, false]),
                (op::LESS_EQUALS, 2) => cmp([true, true, false]),
                (op::GREATER, 2) => cmp([false, false, true]),
                (op::GREATER_EQUALS, 2) => cmp([false, true, true]),
                // `==` never fails in CEL (`NaN == x` is false), but only the
                // case of two numbers is mirrored here.
                (op::EQUALS, 2) => cmp([false, true, false]),
                (op::NOT_EQUALS, 2) => cmp([true, false, true]),
                _ => Fast::Cel,
            }
        }
        _ => Fast::Cel,
    }
}

impl Fast {
    fn eval(&self, vars: &Vars) -> Option<Scalar> {
        use Scalar::{Bool, Double as D};
        let bool_of = |e: &Fast| match e.eval(vars)? {
            Bool(b) => Some(b),
            _ => None,
        };
        let double_of = |e: &Fast| match e.eval(vars)? {
            D(d) => Some(d),
            _ => None,
        };
        let traits = || match vars.traits() {
            Value::Map(map) => Some(map),
            _ => None,
        };
        match self {
            Fast::Lit(v) => Some(*v),
            Fast::Num(i) => Some(D(*vars.nums.get(*i)?.inner())),
            Fast::Age => Some(D(*vars.age.inner())),
            Fast::Has(field) => Some(Bool(traits()?.map.get(&KeyRef::String(field) as &dyn AsKeyRef).is_some())),
            Fast::Trait(field) => match traits()?.map.get(&KeyRef::String(field) as &dyn AsKeyRef)? {
                Value::Float(d) => Some(D(*d)),
                Value::Int(i) => Some(Scalar::Int(*i)),
                Value::UInt(u) => Some(Scalar::UInt(*u)),
                Value::Bool(b) => Some(Bool(*b)),
                _ => None,
            },
            Fast::Cond(a) => (if bool_of(&a[0])? { &a[1] } else { &a[2] }).eval(vars),
            Fast::And(a) => Some(Bool(bool_of(&a[0])? && bool_of(&a[1])?)),
            Fast::Or(a) => Some(Bool(bool_of(&a[0])? || bool_of(&a[1])?)),
            Fast::Not(a) => Some(Bool(!bool_of(a)?)),
            Fast::Neg(a) => Some(D(-double_of(a)?)),
            Fast::Arith(op, a) => {
                let (l, r) = (double_of(&a[0])?, double_of(&a[1])?);
                Some(D(match op {
                    Arith::Add => l + r,
                    Arith::Sub => l - r,
                    Arith::Mul => l * r,
                    Arith::Div => l / r,
                }))
            }
            Fast::Cmp(when, a) => {
                // Ordering of two numbers, as `Double::compare` and
                // `Int::compare`; `None` where that is an error (`NaN`,
                // another type) or not mirrored (a uint on the left).
                let ord = match (a[0].eval(vars)?, a[1].eval(vars)?) {
                    (D(l), D(r)) => l.partial_cmp(&r),
                    (D(l), Scalar::Int(r)) => l.partial_cmp(&(r as f64)),
                    (D(l), Scalar::UInt(r)) => l.partial_cmp(&(r as f64)),
                    (Scalar::Int(l), Scalar::Int(r)) => Some(l.cmp(&r)),
                    (Scalar::Int(l), Scalar::UInt(r)) => Some(u64::try_from(l).map_or(Ordering::Less, |l| l.cmp(&r))),
                    (Scalar::Int(l), D(r)) => (l as f64).partial_cmp(&r),
                    _ => None,
                }?;
                // (Less, Equal, Greater: -1, 0, 1.)
                Some(Bool(when[(ord as i8 + 1) as usize]))
            }
            Fast::Cel => None,
        }
    }
}

/// `a.b`, in `buf`; `None` if it does not fit.
fn join_dotted<'a>(buf: &'a mut [u8], a: &str, b: &str) -> Option<&'a str> {
    let n = a.len() + 1 + b.len();
    let out = buf.get_mut(..n)?;
    out[..a.len()].copy_from_slice(a.as_bytes());
    out[a.len()] = b'.';
    out[a.len() + 1..].copy_from_slice(b.as_bytes());
    std::str::from_utf8(out).ok()
}

/// `program` on `vars`: natively if its plan can ([`Fast`]), else by CEL,
/// in a context whose only variables are `vars` (an `Arc` clone and empty
/// maps: no allocation).
fn run(program: &Program, plan: &Fast, vars: &Vars) -> Result<Value, cel::ExecutionError> {
    if let Some(v) = plan.eval(vars) {
        return Ok(v.into());
    }
    let mut ctx = Context::with_env(vars.def.env.clone());
    ctx.set_variable_resolver(vars);
    program.execute(&ctx)
}

/// Evaluates the definition for `acct` at event time `now_ms`. `traits` is
/// the account's traits as a CEL map ([`traits_to_cel`]).
pub fn evaluate(def: &CompiledDefinition, acct: &AccountState, traits: &Value, now_ms: i64) -> Evaluation {
    evaluate_with(def, acct, None, traits, now_ms)
}

/// [`evaluate`], with the account's running window sums (see
/// [`WindowSums`]) for its `events` metrics: the same evaluation, cheaper.
pub fn evaluate_with(
    def: &CompiledDefinition,
    acct: &AccountState,
    sums: Option<&mut WindowSums>,
    traits: &Value,
    now_ms: i64,
) -> Evaluation {
    let traits = OnceLock::from(traits.clone());
    let free_mail = HashSet::new();
    let var = AccountVar { free_mail: &free_mail, fields: &TraitFields::All };
    let mut e = evaluate_unnamed(def, acct, sums, &traits, var, now_ms);
    e.name_values(def);
    e
}

impl Evaluation {
    /// Fills in the names of `values` left empty by [`evaluate_unnamed`].
    pub fn name_values(&mut self, def: &CompiledDefinition) {
        let names = def.metrics.iter().map(|m| &m.name).chain(def.derived.iter().map(|d| &d.0));
        for (v, name) in self.values.iter_mut().zip(names) {
            if v.0.is_empty() {
                v.0.clone_from(name);
            }
        }
    }
}

/// [`evaluate_with`], except that the names in `values` are left empty (no
/// allocation per metric per evaluation) until
/// [`Evaluation::name_values`]: for the engine, which needs them only when
/// it announces.
pub fn evaluate_unnamed(
    def: &CompiledDefinition,
    acct: &AccountState,
    sums: Option<&mut WindowSums>,
    traits: &OnceLock<Value>,
    var: AccountVar<'_>,
    now_ms: i64,
) -> Evaluation {
    let mut out = Evaluation::default();
    evaluate_memoized_into(def, acct, sums, traits, var, now_ms, None, &mut out);
    out
}

thread_local! {
    /// The numbers of [`evaluate_memoized_into`] (kept from one evaluation
    /// to the next: no allocation each).
    static NUMS: std::cell::Cell<Vec<Double>> = const { std::cell::Cell::new(Vec::new()) };
}

/// [`evaluate_unnamed`] into `out`, whose vectors are reused (an
/// evaluation per event and definition allocated four of them, 3 % of the
/// engine thread on a long tail), reusing the results in `memo` of the
/// plans whose inputs have not changed since (see [`Memo`]): the same
/// evaluation.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_memoized_into(
    def: &CompiledDefinition,
    acct: &AccountState,
    mut sums: Option<&mut WindowSums>,
    traits: &OnceLock<Value>,
    var: AccountVar<'_>,
    now_ms: i64,
    mut memo: Option<&mut Memo>,
    out: &mut Evaluation,
) {
    let now = bucket_of(now_ms, def.bucket_seconds);
    let values = &mut out.values;
    values.clear();
    let mut nums = NUMS.take();
    nums.clear();
    for m in &def.metrics {
        let v = match sums.as_deref_mut() {
            Some(sums) if m.kind == MetricKind::Events => sums.events(acct, m, now),
            Some(sums) if m.kind == MetricKind::ActiveUsers => sums.active_users(acct, m, now),
            _ => acct.metric(m, now, def.bucket_seconds),
        };
        values.push((String::new(), v));
        nums.push(Double::from(v));
    }
    let age = acct.age_days(now_ms);
    let account = OnceLock::new();
    let plans = &def.plans;
    // Plan `p` (derived numbers, rules, score terms, in that order), through
    // the memo when there is one.
    let mut through = |p: usize, nums: &[Double], compute: &mut dyn FnMut() -> Memoized| -> Memoized {
        match memo.as_deref_mut() {
            Some(m) => m.get_or(plans, p, nums, traits, compute),
            None => compute(),
        }
    };
    // Each derived number sees the metrics and the derived numbers before it.
    for (j, ((_, program), plan)) in def.derived.iter().zip(&plans.derived).enumerate() {
        let v = {
            let vars = Vars { def, nums: &nums, age: Double::from(age), traits, acct, var, account: &account };
            let mut compute = || {
                Memoized::Num(match run(program, plan, &vars) {
                    Ok(v) => as_f64(&v).filter(|x| x.is_finite()).unwrap_or(0.0),
                    Err(_) => 0.0,
                })
            };
            match through(j, &nums, &mut compute) {
                Memoized::Num(v) => v,
                _ => unreachable!("a derived number's memo holds a number"),
            }
        };
        nums.push(Double::from(v));
        values.push((String::new(), v));
    }
    let vars = Vars { def, nums: &nums, age: Double::from(age), traits, acct, var, account: &account };
    let outcomes = &mut out.outcomes;
    outcomes.clear();
    let fired = &mut out.fired;
    fired.clear();
    let mut points = 0.0;
    let first_rule = def.derived.len();
    for (i, (r, plan)) in def.rules.iter().zip(&plans.rules).enumerate() {
        let mut compute = || {
            Memoized::Outcome(match run(&r.program, plan, &vars) {
                Ok(Value::Bool(true)) => Outcome::Fires,
                Ok(Value::Bool(false)) => Outcome::DoesNotFire,
                Ok(other) => Outcome::Error(format!("condition gave {other:?}, not true/false")),
                Err(e) => Outcome::Error(e.to_string()),
            })
        };
        let o = match through(first_rule + i, &nums, &mut compute) {
            Memoized::Outcome(o) => o,
            _ => unreachable!("a rule's memo holds an outcome"),
        };
        if o == Outcome::Fires {
            fired.push(i);
            points += f64::from(r.points);
        }
        outcomes.push(o);
    }
    // Each bonus term stands alone: one that cannot be evaluated (say, a
    // trait of the wrong type) adds nothing and does not spoil the others.
    let bonus: f64 = if fired.is_empty() {
        0.0
    } else {
        let first_term = first_rule + def.rules.len();
        def.bonus
            .iter()
            .zip(&plans.bonus)
            .enumerate()
            .map(|(k, (p, plan))| {
                let mut compute =
                    || Memoized::Term(run(p, plan, &vars).ok().and_then(|v| as_f64(&v)).filter(|x| x.is_finite()));
                match through(first_term + k, &nums, &mut compute) {
                    Memoized::Term(v) => v.unwrap_or(0.0),
                    _ => unreachable!("a score term's memo holds a number"),
                }
            })
            .sum()
    };
    let score = if fired.is_empty() { 0 } else { (points + bonus).round().clamp(0.0, 100.0) as u32 };
    let tier = def.tiers.iter().position(|t| score >= t.1).unwrap_or(def.tiers.len() - 1);
    NUMS.set(nums);
    out.score = score;
    out.tier = tier;
    out.account_age_days = age;
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! Each rule of the default definition, on and just off its threshold,
    //! with controlled event time.
    use super::*;
    use crate::config::Config;

    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;
    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    struct Acct {
        def: CompiledDefinition,
        state: AccountState,
        users: HashMap<String, u32>,
    }

    impl Acct {
        fn new() -> Self {
            Acct {
                def: Config::default_config().validate().unwrap(),
                state: AccountState::default(),
                users: HashMap::new(),
            }
        }
        fn event(&mut self, user: &str, t: i64) {
            let b = bucket_of(t, self.def.bucket_seconds);
            if self.state.first_seen_ms == 0 {
                self.state.first_seen_ms = t;
            }
            self.state.last_seen_ms = self.state.last_seen_ms.max(t);
            self.state.add_event(b, &[0], self.def.counters.len());
            let old = self.users.get(user).copied();
            self.state.move_user(old, b);
            let e = self.users.entry(user.to_string()).or_insert(b);
            *e = (*e).max(b);
        }
        fn users(&mut self, n: usize, t: i64) {
            for u in 0..n {
                self.event(&format!("u{u}"), t);
            }
        }
        fn signal(&mut self, s: &str, t: i64) {
            let id = self.def.signals.iter().find(|x| x.name == s).expect("a signal of the definition").id;
            self.state.add_signal(id, "u0", t);
            self.state.last_seen_ms = self.state.last_seen_ms.max(t);
        }
        fn fired_at(&self, now: i64) -> Vec<String> {
            let e = evaluate(&self.def, &self.state, &traits_to_cel("{}"), now);
            e.fired.iter().map(|&i| self.def.rules[i].name.clone()).collect()
        }
    }

    /// The evaluation as it was first written: a context with every
    /// variable bound by name. The resolver-based [`evaluate`] must give
    /// exactly what this gives.
    fn reference_evaluate(def: &CompiledDefinition, acct: &AccountState, traits: &Value, now_ms: i64) -> Evaluation {
        let now = bucket_of(now_ms, def.bucket_seconds);
        let mut values: Vec<(String, f64)> =
            def.metrics.iter().map(|m| (m.name.clone(), acct.metric(m, now, def.bucket_seconds))).collect();
        let age = acct.age_days(now_ms);
        let mut ctx = Context::with_env(def.env.clone());
        for (k, v) in &values {
            ctx.add_variable_from_value(k.as_str(), Value::Float(*v));
        }
        ctx.add_variable_from_value("account_age_days", Value::Float(age));
        ctx.add_variable_from_value("account", traits.clone());
        for (name, program) in &def.derived {
            let v = match program.execute(&ctx) {
                Ok(v) => as_f64(&v).filter(|x| x.is_finite()).unwrap_or(0.0),
                Err(_) => 0.0,
            };
            ctx.add_variable_from_value(name.as_str(), Value::Float(v));
            values.push((name.clone(), v));
        }
        let mut outcomes = Vec::with_capacity(def.rules.len());
        let mut fired = Vec::new();
        let mut points = 0.0;
        for (i, r) in def.rules.iter().enumerate() {
            let o = match r.program.execute(&ctx) {
                Ok(Value::Bool(true)) => Outcome::Fires,
                Ok(Value::Bool(false)) => Outcome::DoesNotFire,
                Ok(other) => Outcome::Error(format!("condition gave {other:?}, not true/false")),
                Err(e) => Outcome::Error(e.to_string()),
            };
            if o == Outcome::Fires {
                fired.push(i);
                points += f64::from(r.points);
            }
            outcomes.push(o);
        }
        let bonus: f64 = if fired.is_empty() {
            0.0
        } else {
            def.bonus
                .iter()
                .map(|p| p.execute(&ctx).ok().and_then(|v| as_f64(&v)).filter(|x| x.is_finite()).unwrap_or(0.0))
                .sum()
        };
        let score = if fired.is_empty() { 0 } else { (points + bonus).round().clamp(0.0, 100.0) as u32 };
        let tier = def.tiers.iter().position(|t| score >= t.1).unwrap_or(def.tiers.len() - 1);
        Evaluation { values, outcomes, fired, score, tier, account_age_days: age }
    }

    /// The default definition plus derived numbers that read earlier derived
    /// numbers, `account_age_days` and `account`, rules that fail or give a
    /// non-boolean for some traits, and more bonus terms.
    fn extended_definition() -> CompiledDefinition {
        use crate::config::definition::{DerivedConfig, RuleConfig};
        let mut cfg = Config::default_config();
        let d = &mut cfg.definition;
        for (name, expr) in [
            ("half_velocity", "events_velocity_7d / 2.0 + account_age_days / 100.0"),
            ("employees", "has(account.employees) ? double(account.employees) : -1.0"),
            ("per_user", "active_users_28d > 0.0 ? events_28d / active_users_28d : 0.0"),
            ("mix", "half_velocity * 3.0 + per_user - events_velocity_7d"),
        ] {
            d.derived.push(DerivedConfig { name: name.into(), expr: expr.into() });
        }
        for (name, when, points) in [
            ("big_account", "has(account.employees) && account.employees >= 1000 && active_users_7d >= 1", 5),
            ("flagged", "has(account.flag) ? account.flag : false", 7),
            ("enterprise_plan", "has(account.plan) && account.plan.startsWith('ent')", 11),
            ("young_and_fast", "half_velocity > 1.0 || account_age_days < 2.0", 3),
            ("mixed", "mix >= 10.0 && employees > 10.0 && features_28d >= 2", 13),
        ] {
            d.rules.push(RuleConfig {
                name: name.into(),
                description: String::new(),
                when: when.into(),
                points,
                bypass_budget: false,
            });
        }
        d.score.bonus.extend(["employees > 0.0 ? employees / 1000.0 : 0.0".into(), "account_age_days / 10.0".into()]);
        cfg.validate().unwrap()
    }

    const TRAITS: &[&str] = &[
        "{}",
        r#"{"employees":5000}"#,
        r#"{"employees":12}"#,
        r#"{"employees":"many"}"#,
        r#"{"employees":1500.5}"#,
        r#"{"employees":null}"#,
        r#"{"flag":true}"#,
        r#"{"flag":"yes","plan":"enterprise"}"#,
        r#"{"plan":3,"employees":999}"#,
        r#"{"plan":"enterprise","employees":20000,"flag":false,"tags":["a",1]}"#,
        "not json",
        "[1,2]",
    ];
    const SIGNALS: &[&str] = &["admin_switch", "legal_page_visit", "hand_raise"];
    const FEATURES: &[&str] = &["Report Created", "Invite Sent", "Export", "Dashboard Shared"];

    fn assert_same(got: &Evaluation, want: &Evaluation) {
        let bits = |e: &Evaluation| e.values.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(got), bits(want), "values");
        assert_eq!(got.outcomes, want.outcomes, "outcomes");
        assert_eq!(got.fired, want.fired, "fired");
        assert_eq!(got.score, want.score, "score");
        assert_eq!(got.tier, want.tier, "tier");
        assert_eq!(got.account_age_days.to_bits(), want.account_age_days.to_bits(), "account_age_days");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Random accounts (users, events, features, signals, traits, any
        /// moment): the resolver-based evaluation equals the reference one,
        /// for the default definition and for one that uses every kind of
        /// variable.
        #[test]
        fn resolver_evaluation_equals_reference(
            ops in proptest::collection::vec((0u8..4, 0usize..12, 0i64..60 * 24, 0usize..4), 0..400),
            traits in 0usize..TRAITS.len(),
            now_h in 0i64..70 * 24,
        ) {
            use std::sync::LazyLock;
            static DEFS: LazyLock<[CompiledDefinition; 2]> =
                LazyLock::new(|| [Config::default_config().validate().unwrap(), extended_definition()]);
            let mut a = Acct::new();
            for &(kind, user, h, k) in &ops {
                let t = T0 + h * H;
                match kind {
                    0 | 1 => a.event(&format!("u{user}"), t),
                    2 => {
                        a.event(&format!("u{user}"), t);
                        a.state.touch_feature(FEATURES[k], bucket_of(t, a.def.bucket_seconds));
                    }
                    _ => a.signal(SIGNALS[k % SIGNALS.len()], t),
                }
            }
            let traits = traits_to_cel(TRAITS[traits]);
            let now = T0 + now_h * H + 1234;
            for def in DEFS.iter() {
                assert_same(&evaluate(def, &a.state, &traits, now), &reference_evaluate(def, &a.state, &traits, now));
            }
        }
    }

    /// An evaluation through `memo`, as the engine makes it.
    fn memoized(
        def: &CompiledDefinition,
        acct: &AccountState,
        traits: &OnceLock<Value>,
        var: AccountVar<'_>,
        now_ms: i64,
        memo: &mut Memo,
    ) -> Evaluation {
        let mut out = Evaluation::default();
        evaluate_memoized_into(def, acct, None, traits, var, now_ms, Some(memo), &mut out);
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Two accounts' evaluations one after another, through one memo
        /// per definition kept between them (as the engine's slot that both
        /// accounts' ids fall on), equal evaluations afresh: whatever
        /// changed in between (events, features, signals, traits, the clock,
        /// nothing, the other account).
        #[test]
        fn memoized_evaluation_equals_evaluating_afresh(
            ops in proptest::collection::vec((0u8..6, 0usize..12, 0i64..60 * 24, 0usize..TRAITS.len(), proptest::bool::ANY), 1..200),
        ) {
            use std::sync::LazyLock;
            static DEFS: LazyLock<[CompiledDefinition; 2]> =
                LazyLock::new(|| [Config::default_config().validate().unwrap(), extended_definition()]);
            let mut accounts = [(Acct::new(), OnceLock::new()), (Acct::new(), OnceLock::new())];
            let mut memos = [Memo::default(), Memo::default()];
            let free_mail = HashSet::new();
            let fields = DEFS[0].plans.account_fields().union(DEFS[1].plans.account_fields());
            let mut clock = T0;
            for &(kind, user, h, k, second) in &ops {
                let t = T0 + h * H;
                let (a, traits) = &mut accounts[usize::from(second)];
                match kind {
                    0 => a.event(&format!("u{user}"), t),
                    1 => a.signal(SIGNALS[k % SIGNALS.len()], t),
                    2 => {
                        // New traits: the cached map is dropped, as the engine does.
                        a.state.traits_json = TRAITS[k].to_string();
                        *traits = OnceLock::new();
                    }
                    3 => clock = clock.max(t) + 1234,
                    _ => {
                        for (def, memo) in DEFS.iter().zip(&mut memos) {
                            // (One map of traits for both, as the engine makes it.)
                            let var = AccountVar { free_mail: &free_mail, fields: &fields };
                            let got = memoized(def, &a.state, traits, var, clock, memo);
                            let all = AccountVar { free_mail: &free_mail, fields: &TraitFields::All };
                            let want = evaluate_unnamed(def, &a.state, None, &OnceLock::new(), all, clock);
                            assert_same(&got, &want);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_memo_follows_new_traits_and_other_accounts() {
        let def = Config::default_config().validate().unwrap();
        let free_mail = HashSet::new();
        let mut memo = Memo::default();
        let mut a = Acct::new();
        a.users(9, T0);
        let now = T0 + H;
        let score = |a: &Acct, traits: &OnceLock<Value>, memo: &mut Memo| {
            let var = AccountVar { free_mail: &free_mail, fields: def.plans.account_fields() };
            let got = memoized(&def, &a.state, traits, var, now, memo);
            let all = AccountVar { free_mail: &free_mail, fields: &TraitFields::All };
            assert_same(&got, &evaluate_unnamed(&def, &a.state, None, &OnceLock::new(), all, now));
            got.score
        };
        let traits = OnceLock::new();
        let before = score(&a, &traits, &mut memo);
        assert_eq!(score(&a, &traits, &mut memo), before, "the same inputs again");
        // New traits (the engine drops the cached map): the firmographics
        // term reads them.
        a.state.traits_json = r#"{"employees":5000}"#.into();
        let traits = OnceLock::new();
        assert_eq!(score(&a, &traits, &mut memo), before + 10);
        // Another account on the same memo, with the same numbers but no traits.
        let mut b = Acct::new();
        b.users(9, T0);
        assert_eq!(score(&b, &OnceLock::new(), &mut memo), before);
    }

    #[test]
    fn extended_definition_covers_errors_and_account_reads() {
        // The extended definition does reach the paths the property test is
        // about: errors, non-boolean conditions, traits read by derived numbers.
        let def = extended_definition();
        let mut a = Acct::new();
        a.users(9, T0);
        a.signal("hand_raise", T0);
        for t in TRAITS {
            let traits = traits_to_cel(t);
            assert_same(
                &evaluate(&def, &a.state, &traits, T0 + H),
                &reference_evaluate(&def, &a.state, &traits, T0 + H),
            );
        }
        let e = evaluate(&def, &a.state, &traits_to_cel(r#"{"flag":"yes","plan":3}"#), T0 + H);
        let errors = e.outcomes.iter().filter(|o| matches!(o, Outcome::Error(_))).count();
        assert_eq!(errors, 2, "{:?}", e.outcomes);
        let e = evaluate(&def, &a.state, &traits_to_cel(r#"{"employees":5000}"#), T0 + H);
        assert_eq!(e.value("employees"), Some(5000.0));
        assert!(e.fired.contains(&def.rules.iter().position(|r| r.name == "big_account").unwrap()));
    }

    /// The non-empty lines of `s`, trimmed.
    /// The traits a definition's `account` map holds: those its
    /// expressions name, or all of them when one reads `account` otherwise;
    /// the map made with them has those and nothing else.
    #[test]
    fn the_account_map_holds_the_traits_the_expressions_name() {
        let only = |f: &[&str]| TraitFields::Only(f.iter().map(|s| s.to_string()).collect());
        let def = Config::default_config().validate().unwrap();
        assert_eq!(def.plans.account_fields(), &only(&["employees", "personal_account"]));
        assert_eq!(
            extended_definition().plans.account_fields(),
            &only(&["employees", "flag", "personal_account", "plan"])
        );
        let with_rule = |when: &str| {
            let cfg = Config::with_one_rule(when, 1);
            cfg.validate().unwrap_or_else(|e| panic!("`{when}`: {e:?}")).plans.account_fields().clone()
        };
        assert_eq!(with_rule("active_users_28d >= 7.0"), only(&[]));
        assert_eq!(
            with_rule("has(account.plan) && account.plan.startsWith('ent') && has(account.tags.x)"),
            only(&["plan", "tags"])
        );
        for reads_any in [
            "has(account.plan) && account['plan'] == 'x'",
            "'plan' in account",
            "account.size() > 0",
            "account == {}",
            "[1].exists(account, account > 0)",
            "[account].size() == 1",
        ] {
            assert_eq!(with_rule(reads_any), TraitFields::All, "`{reads_any}`");
        }
        // The map made for the default definition.
        let acct = AccountState {
            traits_json: r#"{"name":"Acme","employees":1200,"plan":"pro","industry":"fintech"}"#.into(),
            ..Default::default()
        };
        let free_mail = HashSet::new();
        let keys = |fields: &TraitFields| -> Vec<String> {
            let Value::Map(m) = account_to_cel(&acct, AccountVar { free_mail: &free_mail, fields }) else {
                panic!("not a map")
            };
            let mut k: Vec<String> = m.map.keys().map(|k| format!("{k:?}")).collect();
            k.sort();
            k
        };
        assert_eq!(keys(def.plans.account_fields()), [r#"String("employees")"#, r#"String("personal_account")"#]);
        assert_eq!(keys(&TraitFields::All).len(), 5, "{:?}", keys(&TraitFields::All));
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
    }

    /// The fast path's answer for `e` where `vars` are known (its names
    /// resolved as [`Plans::new`] would at that place).
    fn fast(e: &Expression, vars: &Vars) -> Option<Scalar> {
        compile(e, vars.def, vars.nums.len() - vars.def.metrics.len()).eval(vars)
    }

    /// Wherever the native fast path answers, it answers what CEL does, for
    /// operators on every kind of operand (ints, uints, bools, doubles with
    /// zeros, infinities and NaN, traits of every JSON type, present or
    /// not), and it does answer for every expression of the default
    /// definition.
    #[test]
    fn fast_path_agrees_with_cel() {
        let def = Config::default_config().validate().unwrap();
        let exprs = lines(
            "
                events_7d
                account_age_days
                1.5
                7
                7u
                true
                -events_7d
                -7
                !true
                !(events_7d > 1.0)
                events_7d + events_28d
                events_7d - 1.0
                events_7d * 2.0
                events_7d / events_prev_28d
                events_7d / 0.0 > 1.0
                (events_7d - events_7d) / 0.0 >= 1.0
                events_7d + 1
                events_7d < 7
                events_7d <= 7u
                events_7d > 7.0
                events_7d >= events_28d
                events_7d == 3
                events_7d != 3.0
                events_7d == true
                events_7d < true
                7 < events_7d
                7 == events_7d
                7 < 8u
                -1 < 8u
                7u < 8
                7 == 7u
                true == true
                1 + 1 > 1
                events_7d > 1.0 && events_28d > 1.0
                events_7d > 1.0 || events_28d > 1.0
                events_7d > 1.0 && 1.0
                1.0 && events_7d > 1.0
                false && 1.0
                true || 1.0
                1.0 || true
                events_7d > 1.0 ? events_7d : 0.0
                events_7d ? 1.0 : 0.0
                events_7d > 1.0 ? 1 : 'x'
                events_7d > 1.0 ? 'x' : 2.0
                account_age_days >= 35
                double(events_7d) > 1.0
                [1.0][0] > 0.0
                int
                nope > 1.0
                events_7d / (events_prev_28d / 4.0) >= 2.0
                events_7d > 1.0 == true
                -(events_7d / 0.0) < 0.0
                has(account.employees) && account.employees >= 1000 ? 10.0 : 0.0
                has(account.employees)
                account.employees
                account.employees >= 1000
                account.employees > 999.5
                account.employees >= 999.5
                1 < 18446744073709551615u
                -1 < 0u
                account.employees == 5000
                account.employees < 7u
                1000 <= account.employees
                account.employees >= events_7d
                events_7d >= account.employees
                account.employees + 1.0
                -account.employees
                account.flag
                account.flag && events_7d > 1.0
                has(account.nope)
                account.nope > 1
                account.plan
                has(account.tags)
                account.tags
                has(account.tags.x)
                account
                .account.employees > 1
                account['employees'] > 1
            ",
        );
        let programs: Vec<Program> = exprs.iter().map(|e| def.env.compile(e).unwrap()).collect();
        let samples = [0.0, 1.0, 3.0, 7.0, 1000.0, -2.5, f64::INFINITY, f64::NAN];
        let mut answered = vec![false; exprs.len()];
        for t in TRAITS {
            let traits = traits_to_cel(t);
            for (k, &x) in samples.iter().enumerate() {
                let account = OnceLock::new();
                let nums: Vec<Double> = (0..def.metrics.len())
                    .map(|i| Double::from(if i % 2 == 0 { x } else { samples[(k + i) % samples.len()] }))
                    .collect();
                let (traits, acct, free_mail) =
                    (OnceLock::from(traits.clone()), AccountState::default(), HashSet::new());
                let vars = Vars {
                    def: &def,
                    nums: &nums,
                    age: Double::from(x),
                    traits: &traits,
                    acct: &acct,
                    var: AccountVar { free_mail: &free_mail, fields: &TraitFields::All },
                    account: &account,
                };
                let mut ctx = Context::with_env(def.env.clone());
                ctx.set_variable_resolver(&vars);
                for (i, (src, p)) in exprs.iter().zip(&programs).enumerate() {
                    if let Some(got) = fast(p.expression(), &vars) {
                        answered[i] = true;
                        let want = p.execute(&ctx);
                        let got = format!("{:?}", Ok::<Value, ()>(got.into()));
                        assert_eq!(got, format!("{want:?}"), "`{src}` at {x} with {t}");
                    }
                }
            }
        }
        let unanswered: Vec<&str> = exprs.iter().zip(&answered).filter(|(_, a)| !**a).map(|(e, _)| *e).collect();
        // Left to CEL: errors, other types, `==` beyond two numbers, uints on
        // the left, functions, lists, unknown names, nested or indexed traits.
        assert_eq!(
            unanswered,
            lines(
                "
                (events_7d - events_7d) / 0.0 >= 1.0
                events_7d + 1
                events_7d == true
                events_7d < true
                7u < 8
                true == true
                1 + 1 > 1
                1.0 && events_7d > 1.0
                1.0 || true
                events_7d ? 1.0 : 0.0
                double(events_7d) > 1.0
                [1.0][0] > 0.0
                int
                nope > 1.0
                events_7d > 1.0 == true
                account.nope > 1
                account.tags
                has(account.tags.x)
                account
                .account.employees > 1
                account['employees'] > 1
                "
            )
        );
        let traits = traits_to_cel(r#"{"employees":5000}"#);
        let account = OnceLock::new();
        let nums = vec![Double::from(1.0); def.metrics.len() + def.derived.len()];
        let (traits, acct, free_mail) = (OnceLock::from(traits), AccountState::default(), HashSet::new());
        let vars = Vars {
            def: &def,
            nums: &nums,
            age: Double::from(1.0),
            traits: &traits,
            acct: &acct,
            var: AccountVar { free_mail: &free_mail, fields: &TraitFields::All },
            account: &account,
        };
        for p in def.derived.iter().map(|d| &d.1).chain(def.rules.iter().map(|r| &r.program)).chain(&def.bonus) {
            assert!(fast(p.expression(), &vars).is_some(), "{:?} is not evaluated natively", p.expression());
        }
        // And the plans compiled with the definition are those.
        let plans = def.plans.derived.iter().chain(&def.plans.rules).chain(&def.plans.bonus);
        assert_eq!(plans.clone().count(), def.derived.len() + def.rules.len() + def.bonus.len());
        for plan in plans {
            assert!(plan.eval(&vars).is_some(), "{plan:?} is not evaluated natively");
        }
        assert!(account.get().is_none(), "the traits were converted to a CEL map");
    }

    #[test]
    fn team_adoption_at_seven_not_six() {
        let mut a = Acct::new();
        a.users(6, T0);
        assert!(a.fired_at(T0).is_empty());
        a.event("u6", T0 + H);
        assert_eq!(a.fired_at(T0 + H), ["team_adoption"]);
        // 28 days later (minus the bucket) the first six are still in...
        assert_eq!(a.fired_at(T0 + 28 * D - 2 * H), ["team_adoption"]);
        // ...and just after, they are not.
        assert!(a.fired_at(T0 + 28 * D + H).is_empty());
    }

    #[test]
    fn enterprise_evaluation_needs_three_users_and_a_fresh_signal() {
        let mut a = Acct::new();
        a.users(2, T0);
        a.signal("legal_page_visit", T0);
        assert!(a.fired_at(T0).is_empty(), "2 users are not enough");
        a.event("u2", T0 + H);
        assert_eq!(a.fired_at(T0 + H), ["enterprise_evaluation"]);
        // The visit is 14 days old (minus a bucket): still fires; 15 days: not.
        assert_eq!(a.fired_at(T0 + 14 * D - 2 * H), ["enterprise_evaluation"]);
        assert!(a.fired_at(T0 + 15 * D).is_empty());
        let mut b = Acct::new();
        b.users(3, T0);
        b.signal("admin_switch", T0 + 2 * H);
        assert_eq!(b.fired_at(T0 + 2 * H), ["enterprise_evaluation"]);
    }

    #[test]
    fn usage_spike_thresholds() {
        // Baseline: 21 events a week (one per user per day) from day 0.
        let base = |a: &mut Acct| {
            for day in 0..35 {
                for k in 0..3 {
                    a.event(&format!("u{k}"), T0 + day * D + k * H);
                }
            }
        };
        let week = |a: &mut Acct, n: i64| {
            for i in 0..n {
                a.event(&format!("u{}", i % 3), T0 + 35 * D + (i * 6 * D) / n.max(1));
            }
        };
        let now = T0 + 41 * D + 12 * H;
        let mut a = Acct::new();
        base(&mut a);
        week(&mut a, 100);
        let prev = a.state.metric(&a.def.metrics[4], bucket_of(now, 3600), 3600);
        assert!(prev < 100.0, "baseline of 28 days is {prev}");
        assert_eq!(a.fired_at(now), ["usage_spike"]);

        let mut b = Acct::new();
        base(&mut b);
        week(&mut b, 99);
        assert!(b.fired_at(now).is_empty(), "99 events is under 100");

        // Not 2x the weekly average: baseline 60/week, then 110.
        let mut c = Acct::new();
        for day in 0..35 {
            for k in 0..9 {
                c.event(&format!("u{}", k % 3), T0 + day * D + k * H);
            }
        }
        week(&mut c, 110);
        assert!(c.fired_at(now).is_empty(), "110 is under 2x a weekly average of 63");

        // A new account: busy first week, no baseline.
        let mut d = Acct::new();
        for i in 0..300 {
            d.event(&format!("u{}", i % 3), T0 + (i * 6 * D) / 300);
        }
        assert!(d.fired_at(T0 + 6 * D + 12 * H).is_empty(), "a new account's first week is no spike");
    }

    #[test]
    fn hand_raiser_fires_alone() {
        let mut a = Acct::new();
        a.event("u0", T0);
        a.signal("hand_raise", T0);
        assert_eq!(a.fired_at(T0), ["hand_raiser"]);
    }

    #[test]
    fn score_and_tier() {
        let mut a = Acct::new();
        a.users(9, T0);
        a.signal("hand_raise", T0);
        a.signal("admin_switch", T0);
        let e = evaluate(&a.def, &a.state, &traits_to_cel(r#"{"employees":5000}"#), T0);
        assert_eq!(e.fired.len(), 3);
        assert_eq!(e.score, 100);
        assert_eq!(a.def.tiers[e.tier].0, "hot");
        let mut b = Acct::new();
        b.users(7, T0);
        let e = evaluate(&b.def, &b.state, &traits_to_cel("{}"), T0);
        assert_eq!(e.score, 30 + 7);
        assert_eq!(b.def.tiers[e.tier].0, "warm");
        // A trait of the wrong type does not break scoring.
        let e = evaluate(&b.def, &b.state, &traits_to_cel(r#"{"employees":"many"}"#), T0);
        assert_eq!(e.score, 37);
    }
}
