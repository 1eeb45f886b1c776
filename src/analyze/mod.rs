//! `pqa-engine analyze`: signal discovery on history. Which behaviours set
//! apart the accounts that raised a hand (or that sales won), in the days
//! *before* they did?
//!
//! 1. **One pass** over the history ([`log`]): every line decoded with the
//!    engine's decoder, each event kept as 12 bytes in its account's log.
//! 2. **Positives** are the accounts where the label happened: a signal of
//!    the definition (`--label hand_raise`), or an outcome of the chosen
//!    kinds (`--outcomes FILE --positive won,opportunity`); each at its
//!    first label time, its *moment*.
//! 3. **Negatives** are all other accounts, each at a comparable moment:
//!    matched on account age. For each negative an age is drawn from the
//!    positives' ages at their moments (seeded by the account id: the same
//!    history gives the same draw), and its moment is its first usage event
//!    at or after that age (its last event if it went quiet before). Like a
//!    positive at its label, a negative is then active at its moment, at
//!    the same point of its life, so being active, or being new, sets
//!    neither group apart.
//! 4. **Strictly before:** only events before each account's moment, within
//!    the lookback (`--lookback 14d`), count. What follows the label (a
//!    sales call scheduled after a demo request) never ranks; it is counted
//!    apart (`positives_after`) so the report can say so.
//! 5. **Candidates:** every `track` event name, every page path pattern
//!    ([`paths`]: ids collapsed), every trait an `identify` changes to a
//!    value, and the definition's metrics and derived numbers at the
//!    moment, computed by the engine's own code ([`crate::detect`]) over a
//!    state rebuilt from the log, as the engine would have shown them at
//!    the account's last event before its moment.
//! 6. **Measures** ([`stats`]): per candidate, the positives and negatives
//!    that showed it, precision, recall, lift, phi; for numbers the
//!    point-biserial correlation and the threshold that best separates the
//!    groups (Youden's J), which makes them yes/no candidates too.
//! 7. **Ranking:** by the lower bound of the 95% Wilson interval of the
//!    precision (what share of the accounts that showed it are positive, at
//!    least, given how few they may be), among candidates shown by at least
//!    `--min-support` accounts. A behaviour 3 accounts showed, all
//!    positive, proves less than one 40 of 50 showed: this ranks it so.
//!
//! The output ([`output`]): `signals.csv`, `report.md` with histograms,
//! and `suggested.toml`, the definition with the top candidates as a
//! signal and a rule.

pub mod log;
pub mod output;
pub mod paths;
pub mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::{CompiledDefinition, Config, ConfigErrors, InputConfig};
use crate::outcome::{read_outcomes, OutcomeKind};
use crate::state::account::{bucket_of, AccountState};
use log::{CandidateKind, History, PAGE_WITHOUT_PATH};
use stats::{Split, Threshold};

/// What the positives are.
#[derive(Debug, Clone)]
pub enum Label {
    /// Accounts where this signal of the definition happened.
    Signal(String),
    /// Accounts with one of these outcomes in this file.
    Outcomes { file: PathBuf, positive: Vec<OutcomeKind> },
}

/// What to analyse.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Configuration (layered over the shipped defaults); its definition
    /// gives the signals and metrics, its `[input]` how to read events.
    pub config: Option<PathBuf>,
    /// Segment-Spec NDJSON (plain or gzip); `-` is standard input.
    pub input: PathBuf,
    pub label: Label,
    /// How far back before each account's moment behaviour counts.
    pub lookback_seconds: i64,
    /// Where the report goes (created).
    pub out: PathBuf,
    /// Candidates shown by fewer accounts are listed but not ranked.
    pub min_support: u64,
    /// How many candidates the suggested signal takes at most.
    pub suggest: usize,
    /// Seed of the negatives' moments.
    pub seed: u64,
    /// A progress bar on standard error.
    pub progress: bool,
}

impl AnalyzeOptions {
    /// The defaults: lookback 14 days, minimum support 5, 3 suggested, seed 42.
    pub fn new(input: PathBuf, label: Label, out: PathBuf) -> AnalyzeOptions {
        AnalyzeOptions {
            config: None,
            input,
            label,
            lookback_seconds: 14 * 86_400,
            out,
            min_support: 5,
            suggest: 3,
            seed: 42,
            progress: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("--label {name}: the definition has no signal of that name (its signals: {known})")]
    UnknownSignal { name: String, known: String },
    #[error("cannot read the history {path}: {source}")]
    Input { path: String, source: std::io::Error },
    #[error("cannot read the outcomes {path}: {source}")]
    Outcomes { path: String, source: std::io::Error },
    #[error("cannot write the report to {path}: {source}")]
    Output { path: String, source: std::io::Error },
    #[error("no positives: {0}")]
    NoPositives(String),
    #[error("no negatives: every account of the history is a positive, so nothing tells them apart")]
    NoNegatives,
}

/// What a candidate is, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RankedKind {
    Track,
    Page,
    Trait,
    /// A metric or derived number of the definition, at a threshold.
    Number,
}

impl RankedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RankedKind::Track => "track",
            RankedKind::Page => "page",
            RankedKind::Trait => "trait",
            RankedKind::Number => "number",
        }
    }
}

/// One candidate with its measures.
#[derive(Debug, Clone)]
pub struct Ranked {
    /// What people recognise: the event name or page path as in the input
    /// (ids collapsed to `:id`), `name = value` for a trait, the metric's
    /// name for a number.
    pub signal: String,
    pub kind: RankedKind,
    /// For a page: up to three paths as they appeared.
    pub examples: Vec<String>,
    /// For a trait: its name and value.
    pub trait_name: String,
    pub trait_value: String,
    /// How it splits the accounts (for a number: at its threshold).
    pub split: Split,
    /// For a number.
    pub threshold: Option<Threshold>,
    pub point_biserial: Option<f64>,
    /// Positives that showed it in the lookback *after* their moment.
    pub positives_after: u64,
    /// A signal of the definition that already matches it.
    pub in_definition: Option<String>,
    /// Shown by at least the minimum support (and not free text).
    pub eligible: bool,
    /// For a number: index into [`Analysis::numbers`].
    pub number: Option<usize>,
    /// For a behaviour: its candidate in the history.
    pub candidate: Option<u32>,
}

impl Ranked {
    /// How a definition writes it: `track_events = [...]`, `page_path =
    /// '...'`, `trait = {...}`, or the condition on the number.
    pub fn pattern(&self) -> String {
        match self.kind {
            RankedKind::Track => format!("track_events = [{}]", toml_str(&self.signal)),
            RankedKind::Page => format!("page_path = {}", toml_str(&paths::pattern_regex(&self.signal))),
            RankedKind::Trait => format!(
                "trait = {{ name = {}, becomes = [{}] }}",
                toml_str(&self.trait_name),
                toml_str(&self.trait_value)
            ),
            RankedKind::Number => match &self.threshold {
                Some(t) => format!("{} {} {}", self.signal, t.direction.symbol(), fmt_num(t.value)),
                None => self.signal.clone(),
            },
        }
    }
}

/// A TOML string (basic, escaped).
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A number without trailing zeros (`7`, `2.5`, `0.33`).
pub fn fmt_num(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The suggested signal: any of some top candidates.
#[derive(Debug, Clone)]
pub struct Suggested {
    /// Indices into [`Analysis::ranked`], best first.
    pub picked: Vec<usize>,
    /// Accounts that showed any of them.
    pub split: Split,
}

/// A metric's values at the moments, for histograms.
#[derive(Debug, Clone)]
pub struct NumberValues {
    pub name: String,
    pub positives: Vec<f64>,
    pub negatives: Vec<f64>,
}

/// The result of an analysis.
#[derive(Debug)]
pub struct Analysis {
    /// In words: "hand_raise (a signal of default-2026.11.1)".
    pub label: String,
    /// Short: the signal name, or "won or opportunity".
    pub label_short: String,
    pub version: String,
    pub input: String,
    pub lookback_seconds: i64,
    pub min_support: u64,
    pub seed: u64,
    pub positives: u64,
    pub negatives: u64,
    /// Positives with no event before their moment in the lookback.
    pub positives_without_history: u64,
    /// For `--outcomes`: accounts with a positive outcome that the history
    /// does not hold.
    pub positives_not_in_history: u64,
    /// Median account age at the moment (days), positives and negatives.
    pub median_age_days: (f64, f64),
    /// Best first.
    pub ranked: Vec<Ranked>,
    /// The candidates the suggested signal takes, and how it splits the
    /// accounts as a whole.
    pub suggested: Option<Suggested>,
    pub numbers: Vec<NumberValues>,
    /// Trait names left out as free text (too many values), with their count.
    pub free_text_traits: Vec<(String, u64)>,
    /// Lines, events kept, lines refused, events without an account.
    pub lines: u64,
    pub events: u64,
    pub rejected: u64,
    pub without_account: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// For `--outcomes`: the lines that were not outcomes, for people.
    pub outcome_problems: String,
    pub seconds: f64,
}

/// Trait names with more distinct values than this are free text (emails,
/// names): their values are not candidates.
pub const MAX_TRAIT_VALUES: u64 = 50;

/// Runs the analysis and writes the report.
pub fn analyze(opts: &AnalyzeOptions) -> Result<(Analysis, output::Files), AnalyzeError> {
    let cfg = Config::load(opts.config.as_deref())?;
    let def = cfg.validate()?;
    let analysis = run(&def, cfg.input.clone(), opts)?;
    let files = output::write(&opts.out, &analysis, &cfg, &def, opts)
        .map_err(|e| AnalyzeError::Output { path: opts.out.display().to_string(), source: e })?;
    Ok((analysis, files))
}

fn progress_bar(show: bool, size: Option<u64>) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = match size {
        Some(n) => {
            let b = indicatif::ProgressBar::new(n);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{wide_bar} {bytes}/{total_bytes}  {binary_bytes_per_sec}  {elapsed} (eta {eta})  {msg}",
                )
                .expect("valid template"),
            );
            b
        }
        None => {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {bytes}  {binary_bytes_per_sec}  {elapsed}  {msg}")
                    .expect("valid template"),
            );
            b
        }
    };
    b.enable_steady_tick(Duration::from_millis(200));
    b
}

/// The analysis without writing anything.
pub fn run(def: &CompiledDefinition, input_cfg: InputConfig, opts: &AnalyzeOptions) -> Result<Analysis, AnalyzeError> {
    let started = Instant::now();
    // The label first: a typo should not wait for the pass.
    let (label_signal, outcome_file) = match &opts.label {
        Label::Signal(name) => match def.signals.iter().position(|s| &s.name == name) {
            Some(i) => (Some(i), None),
            None => {
                return Err(AnalyzeError::UnknownSignal {
                    name: name.clone(),
                    known: def.signals.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
        },
        Label::Outcomes { file, .. } => {
            let f = read_outcomes(file)
                .map_err(|e| AnalyzeError::Outcomes { path: file.display().to_string(), source: e })?;
            (None, Some(f))
        }
    };
    let in_name = opts.input.display().to_string();
    let input_err = |e| AnalyzeError::Input { path: in_name.clone(), source: e };
    let (reader, bytes_read, size) = log::open(&opts.input).map_err(input_err)?;
    let bar = progress_bar(opts.progress, size);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let h = log::read_history(reader, def, input_cfg, now_ms, &mut |lines| {
        bar.set_position(bytes_read.load(std::sync::atomic::Ordering::Relaxed));
        bar.set_message(format!("{lines} lines"));
    })
    .map_err(input_err)?;
    bar.set_message(format!("{} lines; analysing {} accounts", h.lines, h.accounts.len()));

    let mut moments = match (&opts.label, label_signal, &outcome_file) {
        (Label::Signal(_), Some(s), _) => Moments::of_signal(&h, s),
        (Label::Outcomes { positive, .. }, _, Some(f)) => Moments::of_outcomes(&h, f, positive),
        _ => unreachable!("the label was checked above"),
    };
    if moments.positives == 0 {
        return Err(AnalyzeError::NoPositives(match &opts.label {
            Label::Signal(n) => format!("no account of the history shows the signal `{n}`"),
            Label::Outcomes { .. } => format!(
                "no account of the history has one of the chosen outcomes ({} such accounts are not in the history)",
                moments.not_in_history
            ),
        }));
    }
    moments.match_negatives(&h, opts.seed);
    if moments.negatives == 0 {
        return Err(AnalyzeError::NoNegatives);
    }
    let look = opts.lookback_seconds.clamp(1, u32::MAX as i64) as u32;
    let shown = Shown::count(&h, &moments, look);
    let numbers = numbers_at_moments(def, &h, &moments);
    bar.finish_and_clear();

    let free_text: Vec<(String, u64)> =
        h.trait_values.iter().filter(|(_, &n)| n > MAX_TRAIT_VALUES).map(|(k, &n)| (k.clone(), n)).collect();
    let ranked = rank(def, &h, &moments, &shown, &numbers, label_signal, &free_text, opts.min_support);
    let suggested = suggest(&h, &moments, look, &ranked, opts.suggest);
    let (label, label_short) = match &opts.label {
        Label::Signal(name) => (format!("`{name}` (a signal of {})", def.version), name.clone()),
        Label::Outcomes { file, positive } => {
            let names: Vec<&str> = positive.iter().map(|k| k.as_str()).collect();
            (format!("an outcome `{}` in {}", names.join("` or `"), file.display()), names.join(" or "))
        }
    };
    Ok(Analysis {
        label,
        label_short,
        version: def.version.clone(),
        input: opts.input.display().to_string(),
        lookback_seconds: opts.lookback_seconds,
        min_support: opts.min_support,
        seed: opts.seed,
        positives: moments.positives,
        negatives: moments.negatives,
        positives_without_history: shown.positives_without_history,
        positives_not_in_history: moments.not_in_history,
        median_age_days: (moments.median_age_days(&h, true), moments.median_age_days(&h, false)),
        ranked,
        suggested,
        numbers,
        free_text_traits: free_text,
        lines: h.lines,
        events: h.events,
        rejected: h.rejected.values().sum(),
        without_account: h.without_account,
        first_ms: h.first_ms,
        last_ms: h.last_ms,
        outcome_problems: match (&outcome_file, &opts.label) {
            (Some(f), Label::Outcomes { file, .. }) => f.describe_bad(&file.display().to_string(), 10),
            _ => String::new(),
        },
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Each account's moment (seconds, see [`log::secs`]) and whether it is a
/// positive; indexed like [`History::accounts`].
struct Moments {
    moment: Vec<Option<u32>>,
    positive: Vec<bool>,
    positives: u64,
    negatives: u64,
    /// Accounts with a positive outcome that the history does not hold.
    not_in_history: u64,
}

impl Moments {
    fn new(n: usize) -> Moments {
        Moments { moment: vec![None; n], positive: vec![false; n], positives: 0, negatives: 0, not_in_history: 0 }
    }

    fn set_positive(&mut self, i: usize, t: u32) {
        self.moment[i] = Some(t);
        self.positive[i] = true;
        self.positives += 1;
    }

    /// Positives: the accounts where signal `s` happened, at its first
    /// occurrence.
    fn of_signal(h: &History, s: usize) -> Moments {
        let mut m = Moments::new(h.accounts.len());
        for (i, acct) in h.accounts.iter().enumerate() {
            if let Some(hit) = acct.signals.iter().find(|x| x.signal as usize == s) {
                m.set_positive(i, hit.t);
            }
        }
        m
    }

    /// Positives: the accounts with one of `kinds`, at the first.
    fn of_outcomes(h: &History, f: &crate::outcome::OutcomeFile, kinds: &[OutcomeKind]) -> Moments {
        let mut m = Moments::new(h.accounts.len());
        let index = h.account_index();
        let mut first: std::collections::BTreeMap<&str, i64> = Default::default();
        for o in f.outcomes.iter().filter(|o| kinds.contains(&o.outcome)) {
            let e = first.entry(o.account_id.as_str()).or_insert(o.at_ms);
            *e = (*e).min(o.at_ms);
        }
        for (acct, at) in first {
            match index.get(acct) {
                Some(&i) => m.set_positive(i, log::secs(at)),
                None => m.not_in_history += 1,
            }
        }
        m
    }

    /// Every other account with an event is a negative, at an age drawn
    /// from the positives' ages at their moments (seeded by `seed` and the
    /// account id, so that the draw depends on nothing else), at its first
    /// usage event from that age on, or its last event if it went quiet
    /// before. With no positive age to draw from (every positive's moment
    /// precedes its history), at its last event.
    fn match_negatives(&mut self, h: &History, seed: u64) {
        let mut ages: Vec<u32> = (0..h.accounts.len())
            .filter(|&i| self.positive[i])
            .filter_map(|i| {
                let m = self.moment[i]?;
                let first = h.accounts[i].first_t()?;
                (m >= first).then(|| m - first)
            })
            .collect();
        ages.sort_unstable();
        let is_usage = |item: u32| {
            item == PAGE_WITHOUT_PATH
                || matches!(h.candidates[item as usize].kind, CandidateKind::Track | CandidateKind::Page)
        };
        for (i, log) in h.accounts.iter().enumerate() {
            if self.positive[i] {
                continue;
            }
            let Some(first) = log.first_t() else { continue };
            let last = log.events.last().map_or(first, |e| e.t);
            let m = if ages.is_empty() {
                last
            } else {
                let s = seed ^ xxhash_rust::xxh3::xxh3_64(h.account_ids[i].as_bytes());
                let age = ages[SmallRng::seed_from_u64(s).random_range(0..ages.len())];
                let from = log.events.partition_point(|e| e.t < first.saturating_add(age));
                log.events[from..].iter().find(|e| is_usage(e.item)).map_or(last, |e| e.t)
            };
            self.moment[i] = Some(m);
            self.negatives += 1;
        }
    }

    /// The median age (days) of positives (`true`) or negatives at their
    /// moments.
    fn median_age_days(&self, h: &History, positive: bool) -> f64 {
        let mut v: Vec<i64> = (0..h.accounts.len())
            .filter(|&i| self.positive[i] == positive)
            .filter_map(|i| Some(self.moment[i]? as i64 - h.accounts[i].first_t()? as i64))
            .collect();
        v.sort_unstable();
        v.get(v.len() / 2).map_or(0.0, |&x| x as f64 / 86_400.0)
    }
}

/// Per candidate, the accounts that showed it.
struct Shown {
    /// Positives and negatives that showed it in the lookback before their
    /// moment.
    before_pos: Vec<u64>,
    before_neg: Vec<u64>,
    /// Positives that showed it in the lookback after their moment.
    after_pos: Vec<u64>,
    positives_without_history: u64,
}

impl Shown {
    /// One look at each account's window: strictly before its moment, and
    /// for a positive also strictly after (what followed the label).
    fn count(h: &History, m: &Moments, look: u32) -> Shown {
        let n = h.candidates.len();
        let mut s = Shown {
            before_pos: vec![0; n],
            before_neg: vec![0; n],
            after_pos: vec![0; n],
            positives_without_history: 0,
        };
        // The last account each candidate was counted for: each account
        // counts once per candidate, without a set per account.
        let mut stamp = vec![u32::MAX; n];
        let mut stamp_after = vec![u32::MAX; n];
        let counts = |e: &log::LogEvent| e.item != PAGE_WITHOUT_PATH && e.item != 0;
        for (i, log) in h.accounts.iter().enumerate() {
            let Some(t) = m.moment[i] else { continue };
            let before = log.between(t.saturating_sub(look), t);
            if m.positive[i] && before.is_empty() {
                s.positives_without_history += 1;
            }
            for e in before.iter().filter(|e| counts(e)) {
                let c = e.item as usize;
                if stamp[c] != i as u32 {
                    stamp[c] = i as u32;
                    if m.positive[i] {
                        s.before_pos[c] += 1;
                    } else {
                        s.before_neg[c] += 1;
                    }
                }
            }
            if m.positive[i] {
                for e in log
                    .between(t.saturating_add(1), t.saturating_add(look).saturating_add(1))
                    .iter()
                    .filter(|e| counts(e))
                {
                    let c = e.item as usize;
                    if stamp_after[c] != i as u32 {
                        stamp_after[c] = i as u32;
                        s.after_pos[c] += 1;
                    }
                }
            }
        }
        s
    }
}

/// The definition's metrics and derived numbers at each account's moment.
fn numbers_at_moments(def: &CompiledDefinition, h: &History, m: &Moments) -> Vec<NumberValues> {
    let mut numbers: Vec<NumberValues> = def
        .metrics
        .iter()
        .map(|x| x.name.clone())
        .chain(def.derived.iter().map(|d| d.0.clone()))
        .map(|name| NumberValues { name, positives: Vec::new(), negatives: Vec::new() })
        .collect();
    let traits = crate::detect::traits_to_cel("{}");
    for (i, log) in h.accounts.iter().enumerate() {
        let Some(t) = m.moment[i] else { continue };
        for (k, v) in metrics_at(def, h, log, t, &traits).into_iter().enumerate() {
            if m.positive[i] {
                numbers[k].positives.push(v);
            } else {
                numbers[k].negatives.push(v);
            }
        }
    }
    numbers
}

/// Every candidate with its measures, best first: the behaviours (but free
/// text traits) and the numbers (but those counting the label signal
/// itself, 0 before every first label).
#[allow(clippy::too_many_arguments)]
fn rank(
    def: &CompiledDefinition,
    h: &History,
    m: &Moments,
    shown: &Shown,
    numbers: &[NumberValues],
    label_signal: Option<usize>,
    free_text: &[(String, u64)],
    min_support: u64,
) -> Vec<Ranked> {
    let mut ranked = Vec::new();
    for (c, cand) in h.candidates.iter().enumerate().skip(1) {
        let kind = match cand.kind {
            CandidateKind::Track => RankedKind::Track,
            CandidateKind::Page => RankedKind::Page,
            CandidateKind::Trait => RankedKind::Trait,
            CandidateKind::Touch => continue,
        };
        if kind == RankedKind::Trait && free_text.iter().any(|(n, _)| *n == cand.trait_name) {
            continue;
        }
        let split = Split { a: shown.before_pos[c], b: shown.before_neg[c], pos: m.positives, neg: m.negatives };
        ranked.push(Ranked {
            signal: cand.text.clone(),
            kind,
            examples: cand.examples.clone(),
            trait_name: cand.trait_name.clone(),
            trait_value: cand.trait_value.clone(),
            eligible: split.support() >= min_support,
            split,
            threshold: None,
            point_biserial: None,
            positives_after: shown.after_pos[c],
            in_definition: in_definition(def, cand),
            number: None,
            candidate: Some(c as u32),
        });
    }
    let counts_label = |k: usize| {
        def.metrics.get(k).is_some_and(|x| {
            x.kind == crate::config::definition::MetricKind::Signal
                && label_signal.is_some_and(|s| x.signal_id == def.signals[s].id)
        })
    };
    for (k, nv) in numbers.iter().enumerate() {
        if counts_label(k) {
            continue;
        }
        let Some(t) = stats::best_threshold(&nv.positives, &nv.negatives) else { continue };
        ranked.push(Ranked {
            signal: nv.name.clone(),
            kind: RankedKind::Number,
            examples: Vec::new(),
            trait_name: String::new(),
            trait_value: String::new(),
            eligible: t.split.support() >= min_support,
            split: t.split,
            threshold: Some(t),
            point_biserial: Some(stats::point_biserial(&nv.positives, &nv.negatives)),
            positives_after: 0,
            in_definition: None,
            number: Some(k),
            candidate: None,
        });
    }
    ranked.sort_by(|x, y| {
        y.eligible
            .cmp(&x.eligible)
            .then(y.split.precision_low().total_cmp(&x.split.precision_low()))
            .then(y.split.phi().total_cmp(&x.split.phi()))
            .then(x.kind.cmp(&y.kind))
            .then(x.signal.cmp(&y.signal))
    });
    ranked
}

/// The suggested signal, greedily: the best candidate that is a behaviour
/// (not a number), not matched by a signal of the definition already, and
/// better than the base rate even at the low end of its interval; then each
/// next such candidate, in rank order, that raises the signal's F1 score
/// (see [`Split::f1_low`]: the harmonic mean of its recall and of its
/// precision at the low end of its interval). A candidate that reaches a
/// few more positives but floods sales with negatives lowers it and stays
/// out. At most `max` candidates, one trait at most (a signal holds one).
fn suggest(h: &History, moments: &Moments, look: u32, ranked: &[Ranked], max: usize) -> Option<Suggested> {
    let pool: Vec<usize> = ranked
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.eligible && r.kind != RankedKind::Number && r.in_definition.is_none() && r.split.lift_low() > 1.0
        })
        .map(|(i, _)| i)
        .take(32)
        .collect();
    let first = *pool.first()?;
    let mut bit: HashMap<u32, u32> = HashMap::new();
    for (b, &i) in pool.iter().enumerate() {
        bit.insert(ranked[i].candidate.expect("a behaviour"), b as u32);
    }
    // Per account (positive or not): which of the pool it showed.
    let mut masks: Vec<(bool, u32)> = Vec::new();
    for (i, log) in h.accounts.iter().enumerate() {
        let Some(m) = moments.moment[i] else { continue };
        let mut mask = 0u32;
        for e in log.between(m.saturating_sub(look), m) {
            if let Some(b) = bit.get(&e.item) {
                mask |= 1 << b;
            }
        }
        masks.push((moments.positive[i], mask));
    }
    let base = ranked[first].split;
    let split_of = |chosen: u32| {
        let (mut a, mut b) = (0, 0);
        for &(p, m) in &masks {
            if m & chosen != 0 {
                if p {
                    a += 1;
                } else {
                    b += 1;
                }
            }
        }
        Split { a, b, pos: base.pos, neg: base.neg }
    };
    let mut chosen = 1u32;
    let mut picked = vec![first];
    let mut split = split_of(chosen);
    let mut has_trait = ranked[first].kind == RankedKind::Trait;
    for (b, &i) in pool.iter().enumerate().skip(1) {
        if picked.len() >= max {
            break;
        }
        if ranked[i].kind == RankedKind::Trait && has_trait {
            continue;
        }
        let with = split_of(chosen | 1 << b);
        if with.f1_low() > split.f1_low() {
            chosen |= 1 << b;
            picked.push(i);
            split = with;
            has_trait |= ranked[i].kind == RankedKind::Trait;
        }
    }
    Some(Suggested { picked, split })
}

/// The signal of the definition that already matches a candidate: its
/// track event, one of its page paths (as they appeared), its trait value.
fn in_definition(def: &CompiledDefinition, c: &log::Candidate) -> Option<String> {
    def.signals
        .iter()
        .find(|s| match c.kind {
            CandidateKind::Track => s.track_events.contains(&c.text),
            CandidateKind::Page => s.page_path.as_ref().is_some_and(|re| c.examples.iter().any(|p| re.is_match(p))),
            CandidateKind::Trait => s.trait_change.as_ref().is_some_and(|(n, becomes)| {
                *n == c.trait_name && becomes.iter().any(|b| b.eq_ignore_ascii_case(&c.trait_value))
            }),
            CandidateKind::Touch => false,
        })
        .map(|s| s.name.clone())
}

/// The definition's metrics and derived numbers for an account at moment
/// `m`, as the engine would have shown them after the account's last event
/// before `m` (all 0 when it had none): the engine's state for that
/// account, rebuilt from the log, evaluated by the engine's own code.
fn metrics_at(def: &CompiledDefinition, h: &History, log: &log::AccountLog, m: u32, traits: &cel::Value) -> Vec<f64> {
    let n = def.metrics.len() + def.derived.len();
    let before = log.between(0, m);
    let Some(last) = before.last() else { return vec![0.0; n] };
    let now_ms = log::ms(last.t);
    let retention = (def.retention_seconds + def.bucket_seconds).clamp(0, u32::MAX as i64) as u32;
    let lo = last.t.saturating_sub(retention);
    let mut st = AccountState {
        first_seen_ms: log::ms(before[0].t),
        last_seen_ms: now_ms,
        seq: before.len() as u64,
        ..Default::default()
    };
    let mut users: Vec<(u32, u32)> = Vec::new();
    let mut slots: Vec<usize> = Vec::with_capacity(4);
    for e in log.between(lo, last.t.saturating_add(1)) {
        let kind = if e.item == PAGE_WITHOUT_PATH { CandidateKind::Page } else { h.candidates[e.item as usize].kind };
        if !matches!(kind, CandidateKind::Track | CandidateKind::Page) {
            continue;
        }
        let idx = bucket_of(log::ms(e.t), def.bucket_seconds);
        slots.clear();
        slots.push(0);
        if kind == CandidateKind::Track {
            let cand = &h.candidates[e.item as usize];
            slots.extend(cand.counters.iter().copied().filter(|&c| c != 0));
            st.touch_feature(&cand.text, idx);
        }
        st.add_event(idx, &slots, def.counters.len());
        if e.user != log::NO_USER {
            match users.iter_mut().find(|u| u.0 == e.user) {
                Some(u) => u.1 = u.1.max(idx),
                None => users.push((e.user, idx)),
            }
        }
    }
    for (_, idx) in users {
        st.move_user(None, idx);
    }
    let s_lo = log.signals.partition_point(|s| s.t < lo);
    for s in log.signals[s_lo..].iter().take_while(|s| s.t <= last.t) {
        st.add_signal(def.signals[s.signal as usize].id, "", log::ms(s.t));
    }
    crate::detect::evaluate(def, &st, traits, now_ms).values.into_iter().map(|v| v.1).collect()
}

/// A few lines for the terminal.
pub fn describe(a: &Analysis, files: &output::Files) -> String {
    let mut s = format!(
        "analyzed {} lines in {:.2} s ({:.0} lines/s): {} positives ({}), {} negatives\n",
        a.lines,
        a.seconds,
        a.lines as f64 / a.seconds.max(1e-9),
        a.positives,
        a.label_short,
        a.negatives
    );
    for (i, r) in a.ranked.iter().filter(|r| r.eligible).take(5).enumerate() {
        s.push_str(&format!(
            "  {}. {:<40} {:>4} of {} positives, {:>5} of {} negatives, precision {:.0}% (at least {:.0}%)\n",
            i + 1,
            match &r.threshold {
                Some(t) => format!("{} {} {}", r.signal, t.direction.symbol(), fmt_num(t.value)),
                None => format!("{} ({})", r.signal, r.kind.as_str()),
            },
            r.split.a,
            r.split.pos,
            r.split.b,
            r.split.neg,
            100.0 * r.split.precision(),
            100.0 * r.split.precision_low()
        ));
    }
    match &files.suggestion {
        Some(x) => s.push_str(&format!(
            "  suggested: signal {} ({}) and rule {} in {}\n",
            x.signal,
            x.picked.join(", "),
            x.rule,
            files.suggested.display()
        )),
        None => s.push_str(&format!("  suggested: nothing new beat the base rate ({})\n", files.suggested.display())),
    }
    s.push_str(&format!("  report: {}\n  table:  {}", files.report.display(), files.signals_csv.display()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// The numbers `analyze` computes from its compact log are the
    /// engine's: at every announcement of a replay, the metrics and derived
    /// numbers the announcement carries are what [`metrics_at`] gives just
    /// after the triggering event.
    #[test]
    fn metrics_at_agree_with_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("h.ndjson");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
            let sim = crate::sim::Simulator::new(crate::sim::SimConfig {
                seed: 4,
                accounts: 120,
                start_unix: 1_767_225_600,
                days: 70,
            });
            for e in sim {
                writeln!(f, "{}", e.json).unwrap();
            }
        }
        let cfg = Config::default_config();
        let def = std::sync::Arc::new(cfg.definition.compile().unwrap());
        let output = dir.path().join("out.ndjson");
        let opts = crate::replay::ReplayOptions {
            input: input.clone(),
            output: output.clone(),
            dead_letter: None,
            state_dir: None,
            batch_lines: 10_000,
            progress: false,
            stop: None,
        };
        crate::replay::replay(&cfg, def.clone(), &opts, crate::telemetry::Metrics::new()).unwrap();
        let (reader, _, _) = log::open(&input).unwrap();
        let h = log::read_history(reader, &def, cfg.input.clone(), i64::MAX / 2, &mut |_| {}).unwrap();
        let index = h.account_index();
        let traits = crate::detect::traits_to_cel("{}");
        let names: Vec<&str> =
            def.metrics.iter().map(|m| m.name.as_str()).chain(def.derived.iter().map(|d| d.0.as_str())).collect();
        let mut compared = 0;
        for line in std::fs::read_to_string(&output).unwrap().lines() {
            let ev: serde_json::Value = serde_json::from_str(line).unwrap();
            // The sweep disqualifies at a moment with no event of the
            // account (a bucket boundary): nothing triggered it.
            if ev["type"] == "pqa.account.disqualified" {
                continue;
            }
            let data = &ev["data"];
            let acct = index[data["account_id"].as_str().unwrap()];
            let t_ms = chrono::DateTime::parse_from_rfc3339(ev["time"].as_str().unwrap()).unwrap().timestamp_millis();
            let t = log::secs(t_ms);
            let log = &h.accounts[acct];
            // Another event of the account in the same second may come after
            // the trigger in the file: the engine had not seen it yet.
            if log.between(t, t + 1).len() > 1 || data["metrics"].as_object().unwrap().is_empty() {
                continue;
            }
            let got = metrics_at(&def, &h, log, t + 1, &traits);
            for (name, v) in names.iter().zip(&got) {
                let want = data["metrics"][*name].as_f64().unwrap();
                assert!(
                    (want - (v * 100.0).round() / 100.0).abs() < 1e-9,
                    "{}: {name} is {v}, the engine said {want}",
                    ev
                );
            }
            compared += 1;
        }
        assert!(compared > 50, "only {compared} announcements compared");
    }
}
