//! An announcement read back from the PQA topic, and the words sales reads
//! about it: the rules in words with the numbers that fired them, the leads
//! with their reasons. Slack messages and CRM tasks are both made from
//! these.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::config::CompiledDefinition;
use crate::emit::{TYPE_DISQUALIFIED, TYPE_QUALIFIED, TYPE_TIER_CHANGED};

/// The three announcement types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Qualified,
    TierChanged,
    Disqualified,
}

impl Kind {
    /// `qualified`, `tier_changed`, `disqualified`: the names of
    /// `deliver.destinations[].events`.
    pub fn short_name(self) -> &'static str {
        match self {
            Kind::Qualified => "qualified",
            Kind::TierChanged => "tier_changed",
            Kind::Disqualified => "disqualified",
        }
    }
}

/// A lead as sales sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadView {
    pub user_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub title: Option<String>,
    pub why: Vec<String>,
}

/// A PQA CloudEvent, parsed (see `schemas/pqa-event.schema.json`).
#[derive(Debug, Clone)]
pub struct Announcement {
    pub id: String,
    pub kind: Kind,
    pub event_type: String,
    pub source: String,
    pub time: String,
    /// When the account qualified (`data.qualified_at`; the event `time`
    /// when absent): differs from `time` when the announcement waited for
    /// budget.
    pub qualified_at: String,
    pub account_id: String,
    pub account_name: Option<String>,
    pub domain: Option<String>,
    pub definition_version: String,
    pub rules: Vec<String>,
    pub score: u64,
    pub tier: String,
    pub previous_tier: Option<String>,
    pub metrics: Map<String, Value>,
    pub leads: Vec<LeadView>,
    /// The whole CloudEvent.
    pub envelope: Value,
}

impl Announcement {
    /// Parses a record value of the PQA topic; `Err` says why it is not a
    /// PQA announcement.
    pub fn parse(bytes: &[u8]) -> Result<Announcement, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
        let need = |p: &str| s(p).filter(|x| !x.is_empty()).ok_or_else(|| format!("missing {}", &p[1..]));
        let event_type = need("/type")?;
        let kind = match event_type.as_str() {
            TYPE_QUALIFIED => Kind::Qualified,
            TYPE_TIER_CHANGED => Kind::TierChanged,
            TYPE_DISQUALIFIED => Kind::Disqualified,
            other => return Err(format!("type `{other}` is not a PQA announcement")),
        };
        let id = need("/id")?;
        let account_id = need("/data/account_id")?;
        let d = &v["data"];
        let strings = |x: &Value| -> Vec<String> {
            x.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
        };
        let leads = d["leads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| {
                let t = &l["traits"];
                let ts = |k: &str| t[k].as_str().filter(|x| !x.is_empty()).map(str::to_string);
                Some(LeadView {
                    user_id: l["user_id"].as_str()?.to_string(),
                    email: ts("email"),
                    name: ts("name"),
                    title: ts("title"),
                    why: strings(&l["why"]),
                })
            })
            .collect();
        Ok(Announcement {
            id,
            kind,
            event_type,
            source: s("/source").unwrap_or_default(),
            time: s("/time").unwrap_or_default(),
            qualified_at: d["qualified_at"].as_str().map(str::to_string).or_else(|| s("/time")).unwrap_or_default(),
            account_name: d["account"]["name"].as_str().filter(|x| !x.is_empty()).map(str::to_string),
            domain: d["account"]["domain"].as_str().filter(|x| !x.is_empty()).map(str::to_string),
            account_id,
            definition_version: d["definition_version"].as_str().unwrap_or_default().to_string(),
            rules: strings(&d["rules"]),
            score: d["score"].as_u64().unwrap_or(0),
            tier: d["tier"].as_str().unwrap_or_default().to_string(),
            previous_tier: d["previous_tier"].as_str().map(str::to_string),
            metrics: d["metrics"].as_object().cloned().unwrap_or_default(),
            leads,
            envelope: v,
        })
    }

    /// The account's name, else its id.
    pub fn display_name(&self) -> &str {
        self.account_name.as_deref().unwrap_or(&self.account_id)
    }

    /// `<base>/accounts/<id>`, when a public base URL is configured.
    pub fn link(&self, public_base_url: &str) -> Option<String> {
        if public_base_url.is_empty() {
            return None;
        }
        let mut u = reqwest::Url::parse(public_base_url).ok()?;
        u.path_segments_mut().ok()?.pop_if_empty().extend(["accounts", &self.account_id]);
        Some(u.to_string())
    }

    /// One line: what happened to which account.
    pub fn headline(&self) -> String {
        let who = match &self.account_name {
            Some(n) => format!("{n} ({})", self.account_id),
            None => self.account_id.clone(),
        };
        match self.kind {
            Kind::Qualified => format!("{who} is a PQA: {} tier, score {}", self.tier, self.score),
            Kind::TierChanged => format!(
                "{who} moved up to {} (was {}), score {}",
                self.tier,
                self.previous_tier.as_deref().unwrap_or("?"),
                self.score
            ),
            Kind::Disqualified => match &self.previous_tier {
                Some(t) => format!("{who} no longer qualifies (was {t})"),
                None => format!("{who} no longer qualifies"),
            },
        }
    }
}

/// What each rule means, from the definition in the configuration: its
/// description and the numbers its condition reads.
#[derive(Debug, Clone, Default)]
pub struct Glossary {
    rules: HashMap<String, (String, Vec<String>)>,
    /// The highest tier (`hot` in the shipped definition).
    pub top_tier: String,
}

impl Glossary {
    pub fn new(def: &CompiledDefinition) -> Glossary {
        let rules = def
            .rules
            .iter()
            .map(|r| {
                let refs = r.references.iter().filter(|n| n.as_str() != "account").cloned().collect();
                (r.name.clone(), (r.description.clone(), refs))
            })
            .collect();
        Glossary { rules, top_tier: def.tiers.first().map(|t| t.0.clone()).unwrap_or_default() }
    }

    /// Each rule of the announcement: (name, description in words, the
    /// numbers it read as `name value`). A rule the configured definition
    /// does not know (another version) has no description and shows no
    /// numbers.
    pub fn explain(&self, a: &Announcement) -> Vec<(String, String, Vec<String>)> {
        a.rules
            .iter()
            .map(|r| match self.rules.get(r) {
                Some((desc, refs)) => {
                    let nums =
                        refs.iter().filter_map(|n| a.metrics.get(n).map(|v| format!("{n} {}", number(v)))).collect();
                    (r.clone(), desc.clone(), nums)
                }
                None => (r.clone(), String::new(), Vec::new()),
            })
            .collect()
    }
}

fn number(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// `team_adoption` -> `Team adoption`.
pub fn humanize(rule: &str) -> String {
    let s = rule.replace('_', " ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

/// A lead in one line: who (email, name, title) and why.
pub fn lead_line(l: &LeadView) -> (String, String) {
    let mut who = l.email.clone().unwrap_or_else(|| l.user_id.clone());
    let extra: Vec<&str> = [l.name.as_deref(), l.title.as_deref()].into_iter().flatten().collect();
    if !extra.is_empty() {
        who.push_str(&format!(" ({})", extra.join(", ")));
    }
    (who, l.why.join("; "))
}

/// The task text for a CRM (plain text): the headline, the rules with
/// their numbers, the leads with their reasons, the link.
pub fn task_body(a: &Announcement, glossary: &Glossary, max_leads: usize, link: Option<&str>) -> String {
    let mut out = format!("{}\n", a.headline());
    if !a.rules.is_empty() {
        out.push_str("\nWhy:\n");
        for (name, desc, nums) in glossary.explain(a) {
            out.push_str(&format!("- {}", humanize(&name)));
            if !desc.is_empty() {
                out.push_str(&format!(": {desc}"));
            }
            if !nums.is_empty() {
                out.push_str(&format!(" ({})", nums.join(", ")));
            }
            out.push('\n');
        }
    }
    if !a.leads.is_empty() && max_leads > 0 {
        out.push_str("\nWho to talk to:\n");
        for l in a.leads.iter().take(max_leads) {
            let (who, why) = lead_line(l);
            out.push_str(&format!("- {who}: {why}\n"));
        }
    }
    if let Some(l) = link {
        out.push_str(&format!("\nDetails: {l}\n"));
    }
    out.push_str(&format!("\nDefinition {}, event {}", a.definition_version, a.id));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A qualified announcement as the engine writes it.
    pub(crate) const SAMPLE: &str = r#"{"specversion":"1.0","id":"43d35f6cf5cf1dbf4dc31f5f8f96de01","type":"pqa.account.qualified","source":"pqa-engine","subject":"acct-00163","time":"2026-02-08T11:57:03Z","datacontenttype":"application/json","data":{"account_id":"acct-00163","definition_version":"default-2026.11.1","rules":["team_adoption","usage_spike"],"score":80,"tier":"hot","metrics":{"account_age_days":35.8,"active_users_28d":10,"events_7d":205,"events_prev_28d":359,"events_velocity_7d":2.28},"warming_up":[],"signals":[],"leads":[{"user_id":"acct-00163-u7","why":["vp (seniority)","25 events in the last 28 days"],"events_28d":25,"traits":{"email":"u7@aperture163.example","seniority":"vp","name":"Ada <Lovelace> & co"}},{"user_id":"acct-00163-u9","why":["no email known"],"events_28d":1,"traits":{}}],"account":{"domain":"aperture163.example","employees":4853,"first_seen":"2026-01-03T15:11:33Z","name":"Aperture 163","personal_account":false}}}"#;

    pub(crate) fn glossary() -> Glossary {
        Glossary::new(&crate::config::Config::default_config().validate().unwrap())
    }

    #[test]
    fn parses_an_announcement_and_explains_its_rules_with_their_numbers() {
        let a = Announcement::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(a.kind, Kind::Qualified);
        assert_eq!(a.display_name(), "Aperture 163");
        assert_eq!(a.domain.as_deref(), Some("aperture163.example"));
        assert_eq!(a.headline(), "Aperture 163 (acct-00163) is a PQA: hot tier, score 80");
        let ex = glossary().explain(&a);
        assert_eq!(ex[0].0, "team_adoption");
        assert_eq!(ex[0].1, "7 or more distinct users active in the trailing 28 days");
        assert_eq!(ex[0].2, ["active_users_28d 10"]);
        assert_eq!(ex[1].2, ["active_users_28d 10", "events_7d 205", "events_prev_28d 359", "account_age_days 35.8"]);
        assert_eq!(a.link("https://pqa.example.com/").as_deref(), Some("https://pqa.example.com/accounts/acct-00163"));
        assert_eq!(
            a.link("https://x.example.com/pqa").as_deref(),
            Some("https://x.example.com/pqa/accounts/acct-00163")
        );
        assert_eq!(a.link(""), None);
    }

    #[test]
    fn refuses_what_is_not_an_announcement() {
        assert!(Announcement::parse(b"nope").unwrap_err().starts_with("not JSON"));
        assert_eq!(
            Announcement::parse(br#"{"type":"x.y","id":"1"}"#).unwrap_err(),
            "type `x.y` is not a PQA announcement"
        );
        assert_eq!(
            Announcement::parse(br#"{"type":"pqa.account.qualified","id":"1","data":{}}"#).unwrap_err(),
            "missing data/account_id"
        );
    }

    #[test]
    fn task_body_reads_as_a_note_to_sales() {
        let a = Announcement::parse(SAMPLE.as_bytes()).unwrap();
        let body = task_body(&a, &glossary(), 3, Some("https://pqa.example.com/accounts/acct-00163"));
        assert!(
            body.starts_with(
                "Aperture 163 (acct-00163) is a PQA: hot tier, score 80\n\nWhy:\n- Team adoption: 7 or more"
            ),
            "{body}"
        );
        assert!(
            body.contains(
                "- u7@aperture163.example (Ada <Lovelace> & co): vp (seniority); 25 events in the last 28 days\n"
            ),
            "{body}"
        );
        assert!(body.contains("- acct-00163-u9: no email known\n"), "{body}");
        assert!(body.ends_with("Definition default-2026.11.1, event 43d35f6cf5cf1dbf4dc31f5f8f96de01"), "{body}");
    }
}
