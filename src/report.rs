//! Backtest report: turns the announcements (CloudEvents) that several PQA definitions made over
//! one history into files a RevOps team can read:
//!
//! - `pqas.csv`: one row per announcement (RFC 4180, UTF-8 with BOM, CRLF), for a spreadsheet;
//! - `summary.md`: per definition and rule counts, rates per week, peak week, overlap with the
//!   baseline (the first definition) and accounts whose first announcement moved;
//! - `announcements_per_week.png`, `score_distribution.png`: two 1000x600 plots.
//!
//! Self-contained: only external crates (`serde_json`, `chrono`, `csv`, `plotters`, `png`).
//! Plots render text with an embedded font (DejaVu Sans, see `assets/fonts/`), so no system
//! font is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc, Weekday};
use serde_json::Value;

/// One definition taking part in the backtest, in the order given on the command line (the first
/// is the baseline).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefinitionInfo {
    /// `definition_version`.
    pub version: String,
    /// The file it came from, e.g. "a.toml".
    pub label: String,
    /// Its rule names in definition order.
    pub rules: Vec<String>,
    /// Per rule, the metrics and derived numbers its condition reads (for
    /// `why`); may be empty.
    pub rule_inputs: Vec<(String, Vec<String>)>,
}

/// What the pass over the history saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryInfo {
    pub events: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub input: String,
}

/// One announcement row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// Index into the `defs` given to [`write_report`].
    pub definition: usize,
    pub version: String,
    pub account: String,
    pub time_ms: i64,
    /// The CloudEvent type, e.g. `pqa.account.qualified`.
    pub event_type: String,
    pub rules: Vec<String>,
    pub score: u32,
    pub tier: String,
    /// Email of the first lead when known, else its user id, else "".
    pub top_lead: String,
    /// A short human sentence (at most [`WHY_MAX_CHARS`] characters).
    pub why: String,
    pub event_id: String,
    pub warming_up: Vec<String>,
}

/// The files [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    pub csv: PathBuf,
    pub summary: PathBuf,
    /// `announcements_per_week.png`, then `score_distribution.png`.
    pub plots: Vec<PathBuf>,
}

pub const TYPE_QUALIFIED: &str = "pqa.account.qualified";
pub const TYPE_TIER_CHANGED: &str = "pqa.account.tier_changed";
pub const TYPE_DISQUALIFIED: &str = "pqa.account.disqualified";
/// Longest `why`, in characters.
pub const WHY_MAX_CHARS: usize = 200;

const MS_PER_DAY: i64 = 86_400_000;
const MS_PER_WEEK: i64 = 7 * MS_PER_DAY;
/// Example accounts listed per group in the summary.
const EXAMPLES: usize = 5;

impl Row {
    /// Builds a row from one announcement, a CloudEvent in structured JSON mode.
    pub fn from_cloudevent(definition: usize, payload: &[u8]) -> Result<Row, String> {
        Row::from_cloudevent_explained(definition, payload, &[])
    }

    /// [`Row::from_cloudevent`], with the names each rule reads (`rule ->
    /// metric names`), so that `why` shows each rule with the numbers that
    /// fired it rather than every metric.
    pub fn from_cloudevent_explained(
        definition: usize,
        payload: &[u8],
        rule_inputs: &[(String, Vec<String>)],
    ) -> Result<Row, String> {
        let ev: Value = serde_json::from_slice(payload).map_err(|e| format!("announcement is not JSON: {e}"))?;
        let ev = ev.as_object().ok_or("announcement is not a JSON object")?;
        let event_type = str_of(ev.get("type")).ok_or("announcement has no \"type\"")?;
        if ![TYPE_QUALIFIED, TYPE_TIER_CHANGED, TYPE_DISQUALIFIED].contains(&event_type) {
            return Err(format!("unexpected announcement type {event_type:?}"));
        }
        let time = str_of(ev.get("time")).ok_or("announcement has no \"time\"")?;
        let time_ms = DateTime::parse_from_rfc3339(time)
            .map_err(|e| format!("announcement time {time:?} is not RFC 3339: {e}"))?
            .timestamp_millis();
        let data = ev.get("data").and_then(Value::as_object).ok_or("announcement has no \"data\" object")?;
        let account = str_of(data.get("account_id"))
            .or_else(|| str_of(ev.get("subject")))
            .ok_or("announcement has no account_id")?
            .to_string();
        let rules = str_list(data.get("rules"));
        let score = match data.get("score") {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(u) => u.min(u32::MAX as u64) as u32,
                None => n.as_f64().map_or(0, |f| f.round().clamp(0.0, u32::MAX as f64) as u32),
            },
            _ => 0,
        };
        let tier = str_of(data.get("tier")).unwrap_or("none").to_string();
        let warming_up = str_list(data.get("warming_up"));
        let top_lead = data
            .get("leads")
            .and_then(Value::as_array)
            .and_then(|leads| leads.first())
            .map(|lead| {
                let email = lead.get("traits").and_then(|t| str_of(t.get("email"))).filter(|e| !e.trim().is_empty());
                let user = str_of(lead.get("user_id")).filter(|u| !u.is_empty());
                email.or(user).unwrap_or("").to_string()
            })
            .unwrap_or_default();
        let why = build_why(event_type, &rules, data, &warming_up, rule_inputs);
        Ok(Row {
            definition,
            version: str_of(data.get("definition_version")).unwrap_or("").to_string(),
            account,
            time_ms,
            event_type: event_type.to_string(),
            rules,
            score,
            tier,
            top_lead,
            why,
            event_id: str_of(ev.get("id")).unwrap_or("").to_string(),
            warming_up,
        })
    }

    /// Whether this is an announcement (`pqa.account.qualified`).
    pub fn is_qualified(&self) -> bool {
        self.event_type == TYPE_QUALIFIED
    }
}

fn str_of(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn fmt_metric(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(if let Some(i) = n.as_i64() {
            i.to_string()
        } else if let Some(u) = n.as_u64() {
            u.to_string()
        } else {
            let f = n.as_f64().unwrap_or(0.0);
            let s = format!("{f:.2}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }),
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `team_adoption, enterprise_evaluation: active_users_28d=9, events_7d=1234; signals:
/// legal_page_visit by u7`, prefixed by the tier move on tier changes and disqualifications.
fn build_why(
    event_type: &str,
    rules: &[String],
    data: &serde_json::Map<String, Value>,
    warming_up: &[String],
    rule_inputs: &[(String, Vec<String>)],
) -> String {
    let mut parts: Vec<String> = Vec::new();
    let tier = str_of(data.get("tier")).unwrap_or("none");
    let previous = str_of(data.get("previous_tier"));
    match event_type {
        TYPE_DISQUALIFIED => parts.push(match previous {
            Some(p) => format!("no rule matches any more (was {p})"),
            None => "no rule matches any more".to_string(),
        }),
        TYPE_TIER_CHANGED => parts.push(format!("tier {} -> {tier}", previous.unwrap_or("?"))),
        _ => {}
    }
    let metric = |k: &str| -> Option<String> {
        let v = data.get("metrics").and_then(Value::as_object)?.get(k)?;
        let warm = if warming_up.iter().any(|w| w == k) { " (warming up)" } else { "" };
        Some(format!("{k}={}{warm}", fmt_metric(v)?))
    };
    let explained = !rule_inputs.is_empty() && rules.iter().all(|r| rule_inputs.iter().any(|x| &x.0 == r));
    let mut head = if explained {
        rules
            .iter()
            .map(|r| {
                let inputs = &rule_inputs.iter().find(|x| &x.0 == r).expect("checked").1;
                let shown: Vec<String> = inputs.iter().filter_map(|k| metric(k)).collect();
                if shown.is_empty() {
                    r.clone()
                } else {
                    format!("{r} ({})", shown.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        rules.join(", ")
    };
    if explained {
        // Each rule said what it read.
    } else if let Some(metrics) = data.get("metrics").and_then(Value::as_object) {
        // Sorted by name, whatever order the JSON map keeps.
        let mut metrics: Vec<(&String, &Value)> = metrics.iter().collect();
        metrics.sort_by(|a, b| a.0.cmp(b.0));
        let shown: Vec<String> = metrics
            .into_iter()
            .filter_map(|(k, v)| {
                let val = fmt_metric(v)?;
                let warm = if warming_up.iter().any(|w| w == k) { " (warming up)" } else { "" };
                Some(format!("{k}={val}{warm}"))
            })
            .collect();
        if !shown.is_empty() {
            if !head.is_empty() {
                head.push_str(": ");
            }
            head.push_str(&shown.join(", "));
        }
    }
    if !head.is_empty() {
        parts.push(head);
    }
    if let Some(signals) = data.get("signals").and_then(Value::as_array) {
        let named: Vec<String> = signals
            .iter()
            .filter_map(|s| {
                let name = str_of(s.get("name"))?;
                Some(match str_of(s.get("user_id")) {
                    Some(u) if !u.is_empty() => format!("{name} by {u}"),
                    _ => name.to_string(),
                })
            })
            .collect();
        if !named.is_empty() {
            let mut s = format!("signals: {}", named.iter().take(3).cloned().collect::<Vec<_>>().join(", "));
            if named.len() > 3 {
                let _ = write!(s, " +{} more", named.len() - 3);
            }
            parts.push(s);
        }
    }
    truncate_chars(&parts.join("; "), WHY_MAX_CHARS)
}

fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

// ---------------------------------------------------------------------------------------------
// Report

/// Writes DIR/pqas.csv, DIR/summary.md, DIR/announcements_per_week.png,
/// DIR/score_distribution.png. Creates DIR.
pub fn write_report(
    dir: &Path,
    defs: &[DefinitionInfo],
    history: &HistoryInfo,
    rows: &[Row],
) -> io::Result<ReportFiles> {
    std::fs::create_dir_all(dir)?;
    // Rows may name a definition the caller did not describe: report it rather than panic.
    let ndefs = rows.iter().map(|r| r.definition + 1).max().unwrap_or(0).max(defs.len());
    let defs: Vec<DefinitionInfo> = (0..ndefs)
        .map(|i| {
            defs.get(i).cloned().unwrap_or_else(|| DefinitionInfo {
                version: rows.iter().find(|r| r.definition == i).map(|r| r.version.clone()).unwrap_or_default(),
                label: format!("definition #{}", i + 1),
                ..Default::default()
            })
        })
        .collect();
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        (a.time_ms, a.definition, &a.account, type_rank(&a.event_type), &a.event_id).cmp(&(
            b.time_ms,
            b.definition,
            &b.account,
            type_rank(&b.event_type),
            &b.event_id,
        ))
    });

    let files = ReportFiles {
        csv: dir.join("pqas.csv"),
        summary: dir.join("summary.md"),
        plots: vec![dir.join("announcements_per_week.png"), dir.join("score_distribution.png")],
    };
    write_csv(&files.csv, &defs, &sorted)?;
    let stats = Stats::new(&defs, history, &sorted);
    std::fs::write(&files.summary, summary_markdown(&defs, history, &stats))?;
    plot::announcements_per_week(&files.plots[0], &defs, &stats)?;
    plot::score_distribution(&files.plots[1], &defs, &stats)?;
    Ok(files)
}

fn type_rank(t: &str) -> u8 {
    match t {
        TYPE_QUALIFIED => 0,
        TYPE_TIER_CHANGED => 1,
        TYPE_DISQUALIFIED => 2,
        _ => 3,
    }
}

fn short_type(t: &str) -> &str {
    t.strip_prefix("pqa.account.").unwrap_or(t)
}

fn rfc3339(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => ms.to_string(),
    }
}

fn date_of(ms: i64) -> Option<NaiveDate> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.date_naive())
}

/// Monday of the ISO week holding `ms`.
fn week_of(ms: i64) -> Option<NaiveDate> {
    let d = date_of(ms)?;
    let w = d.iso_week();
    NaiveDate::from_isoywd_opt(w.year(), w.week(), Weekday::Mon)
}

fn iso_week_label(monday: NaiveDate) -> String {
    let w = monday.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

/// Neutralises cells a spreadsheet would run as a formula (CSV injection): a leading `=`, `+`,
/// `-`, `@`, tab or carriage return gets a `'` in front.
pub fn spreadsheet_safe(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

/// The columns of `pqas.csv`. `type` is the CloudEvent type without `pqa.account.`.
pub const CSV_HEADER: [&str; 12] = [
    "event_time",
    "definition",
    "definition_version",
    "account",
    "type",
    "tier",
    "score",
    "rules",
    "top_lead",
    "why",
    "warming_up",
    "event_id",
];

fn write_csv(path: &Path, defs: &[DefinitionInfo], rows: &[&Row]) -> io::Result<()> {
    let mut file = io::BufWriter::new(std::fs::File::create(path)?);
    // A BOM so that Excel opens the file as UTF-8; csv readers (and LibreOffice, Sheets) skip it.
    file.write_all("\u{feff}".as_bytes())?;
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(file);
    w.write_record(CSV_HEADER).map_err(io::Error::other)?;
    for r in rows {
        let label = defs.get(r.definition).map(|d| d.label.as_str()).unwrap_or("");
        let cells = [
            rfc3339(r.time_ms),
            spreadsheet_safe(label),
            spreadsheet_safe(&r.version),
            spreadsheet_safe(&r.account),
            short_type(&r.event_type).to_string(),
            spreadsheet_safe(&r.tier),
            r.score.to_string(),
            spreadsheet_safe(&r.rules.join(", ")),
            spreadsheet_safe(&r.top_lead),
            spreadsheet_safe(&r.why),
            spreadsheet_safe(&r.warming_up.join(", ")),
            spreadsheet_safe(&r.event_id),
        ];
        w.write_record(&cells).map_err(io::Error::other)?;
    }
    w.into_inner().map_err(|e| io::Error::other(e.to_string()))?.flush()
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[derive(Default)]
struct RuleStats<'a> {
    announcements: u64,
    accounts: BTreeSet<&'a str>,
}

#[derive(Default)]
struct DefStats<'a> {
    qualified: u64,
    tier_changes: u64,
    disqualified: u64,
    while_warming_up: u64,
    /// First `qualified` time per account.
    first: BTreeMap<&'a str, i64>,
    /// Qualified announcements per ISO week (keyed by its Monday).
    weeks: BTreeMap<NaiveDate, u64>,
    rules: BTreeMap<&'a str, RuleStats<'a>>,
    scores: Vec<u32>,
}

impl DefStats<'_> {
    fn peak_week(&self) -> Option<(NaiveDate, u64)> {
        // Earliest week among the busiest.
        self.weeks.iter().fold(None, |best, (&w, &n)| match best {
            Some((_, m)) if m >= n => best,
            _ => Some((w, n)),
        })
    }
}

struct Stats<'a> {
    per_def: Vec<DefStats<'a>>,
    /// History span used for rates, in weeks (at least 1).
    weeks: f64,
    /// All ISO weeks of the history (Mondays), first to last.
    week_axis: Vec<NaiveDate>,
    /// For each of `week_axis`: whether the history covers only part of it.
    partial: Vec<bool>,
    any_qualified: bool,
}

impl<'a> Stats<'a> {
    fn new(defs: &[DefinitionInfo], history: &HistoryInfo, rows: &[&'a Row]) -> Stats<'a> {
        let mut per_def: Vec<DefStats<'a>> = (0..defs.len()).map(|_| DefStats::default()).collect();
        for r in rows {
            let Some(d) = per_def.get_mut(r.definition) else { continue };
            match r.event_type.as_str() {
                TYPE_QUALIFIED => {}
                TYPE_TIER_CHANGED => {
                    d.tier_changes += 1;
                    continue;
                }
                TYPE_DISQUALIFIED => {
                    d.disqualified += 1;
                    continue;
                }
                _ => continue,
            }
            d.qualified += 1;
            if !r.warming_up.is_empty() {
                d.while_warming_up += 1;
            }
            d.first.entry(r.account.as_str()).or_insert(r.time_ms); // rows are in time order
            if let Some(w) = week_of(r.time_ms) {
                *d.weeks.entry(w).or_default() += 1;
            }
            let mut seen = BTreeSet::new();
            for rule in &r.rules {
                if seen.insert(rule.as_str()) {
                    let rs = d.rules.entry(rule.as_str()).or_default();
                    rs.announcements += 1;
                    rs.accounts.insert(r.account.as_str());
                }
            }
            d.scores.push(r.score);
        }
        // The span: the history's, else the announcements'.
        let row_first = rows.first().map(|r| r.time_ms);
        let row_last = rows.last().map(|r| r.time_ms);
        let first = history.first_ms.or(row_first);
        let last = history.last_ms.or(row_last);
        let span_ms = match (first, last) {
            (Some(f), Some(l)) if l > f => l - f,
            _ => 0,
        };
        let weeks = (span_ms as f64 / MS_PER_WEEK as f64).max(1.0);
        let lo = [first, row_first].into_iter().flatten().min();
        let hi = [last, row_last].into_iter().flatten().max();
        let mut week_axis = Vec::new();
        if let (Some(a), Some(b)) = (lo.and_then(week_of), hi.and_then(week_of)) {
            let mut w = a;
            // Bounded, whatever the timestamps say.
            while w <= b && week_axis.len() < 10_000 {
                week_axis.push(w);
                w += chrono::Duration::days(7);
            }
        }
        let partial = week_axis
            .iter()
            .map(|w| {
                let start = w.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp_millis());
                let (f, l) = (lo.unwrap_or(start), hi.unwrap_or(start));
                let covered = l.min(start + MS_PER_WEEK) - f.max(start);
                covered < MS_PER_WEEK - MS_PER_DAY / 2
            })
            .collect();
        let any_qualified = per_def.iter().any(|d| d.qualified > 0);
        Stats { per_def, weeks, week_axis, partial, any_qualified }
    }
}

// ---------------------------------------------------------------------------------------------
// summary.md

/// Renders an identifier as a Markdown code span that is safe inside a GitHub table cell.
fn code(s: &str) -> String {
    let s = s.replace(['\r', '\n'], " ");
    if s.is_empty() {
        return "(empty)".to_string();
    }
    if s.contains('`') {
        // No code span: escape every ASCII punctuation character instead.
        let mut out = String::new();
        for c in s.chars() {
            if c.is_ascii_punctuation() {
                out.push('\\');
            }
            out.push(c);
        }
        return out;
    }
    let s = s.replace('|', "\\|");
    let pad = if s.starts_with(' ') || s.ends_with(' ') { " " } else { "" };
    format!("`{pad}{s}{pad}`")
}

fn rate(n: u64, weeks: f64) -> String {
    format!("{:.1}", n as f64 / weeks)
}

fn fmt_day(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => ms.to_string(),
    }
}

fn fmt_shift(ms: f64) -> String {
    let days = ms.abs() / MS_PER_DAY as f64;
    if days >= 1.0 {
        format!("{days:.1} days")
    } else {
        format!("{:.1} hours", days * 24.0)
    }
}

fn median(sorted: &[i64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2] as f64,
        n => (sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0,
    }
}

fn examples<'a>(accounts: impl IntoIterator<Item = &'a str>) -> String {
    let all: Vec<&str> = accounts.into_iter().collect();
    if all.is_empty() {
        return "-".to_string();
    }
    let mut s = all.iter().take(EXAMPLES).map(|a| code(a)).collect::<Vec<_>>().join(", ");
    if all.len() > EXAMPLES {
        let _ = write!(s, " (+{} more)", all.len() - EXAMPLES);
    }
    s
}

fn summary_markdown(defs: &[DefinitionInfo], history: &HistoryInfo, stats: &Stats) -> String {
    let mut md = String::new();
    let out = &mut md;
    let _ = writeln!(out, "# PQA backtest report\n");
    let input = if history.input.is_empty() { "(unnamed)" } else { &history.input };
    let _ = writeln!(out, "- **History:** {} ({} events)", code(input), history.events);
    match (history.first_ms, history.last_ms) {
        (Some(f), Some(l)) => {
            let _ = writeln!(
                out,
                "- **Span:** {} to {} ({:.1} days; rates below are per week over {:.1} weeks)",
                fmt_day(f),
                fmt_day(l),
                (l - f) as f64 / MS_PER_DAY as f64,
                stats.weeks
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "- **Span:** unknown, the history gave no event times (rates below are per week over {:.1} weeks)",
                stats.weeks
            );
        }
    }
    let _ = writeln!(
        out,
        "- **Announcements** are `pqa.account.qualified` events; tier changes and disqualifications are counted apart. Weeks are ISO weeks (Monday to Sunday, UTC)."
    );
    let _ = writeln!(
        out,
        "- **Files:** `pqas.csv` (one row per announcement), `announcements_per_week.png`, `score_distribution.png`\n"
    );

    let _ = writeln!(out, "## Definitions\n");
    let _ = writeln!(out, "| # | Definition | Version | Rules |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for (i, d) in defs.iter().enumerate() {
        let role = if i == 0 { format!("{} (baseline)", i + 1) } else { (i + 1).to_string() };
        let rules = d.rules.iter().map(|r| code(r)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "| {role} | {} | {} | {rules} |", code(&d.label), code(&d.version));
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "## Announcements per definition\n");
    if !stats.any_qualified {
        let _ = writeln!(out, "**No announcements:** no definition qualified any account in this history.\n");
    }
    let _ = writeln!(
        out,
        "| Definition | Announcements | Accounts | Per week | Peak week | Tier changes | Disqualifications | While warming up | Median score |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |");
    for (d, s) in defs.iter().zip(&stats.per_def) {
        let peak = match s.peak_week() {
            Some((w, n)) => format!("{n} in {} (week of {})", iso_week_label(w), w.format("%Y-%m-%d")),
            None => "-".to_string(),
        };
        let mut scores: Vec<i64> = s.scores.iter().map(|&x| x as i64).collect();
        scores.sort_unstable();
        let med = if scores.is_empty() { "-".to_string() } else { format!("{:.0}", median(&scores)) };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {peak} | {} | {} | {} | {med} |",
            code(&d.label),
            s.qualified,
            s.first.len(),
            rate(s.qualified, stats.weeks),
            s.tier_changes,
            s.disqualified,
            s.while_warming_up,
        );
    }
    let _ = writeln!(
        out,
        "\n*Per week* = announcements / weeks of history; *peak week* = most announcements in one ISO week; *while warming up* = announcements made while at least one metric was still warming up (early in the history, treat with care).\n"
    );

    let _ = writeln!(out, "## Announcements per rule\n");
    let _ = writeln!(
        out,
        "An announcement that lists several rules counts for each of them, so the shares can add up to more than 100%.\n"
    );
    let _ = writeln!(out, "| Definition | Rule | Announcements | Share | Accounts | Per week |");
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: |");
    let empty = RuleStats::default();
    for (d, s) in defs.iter().zip(&stats.per_def) {
        // The definition's rules in its order, then any other rule its announcements named.
        let mut names: Vec<&str> = d.rules.iter().map(String::as_str).collect();
        for r in s.rules.keys() {
            if !names.contains(r) {
                names.push(r);
            }
        }
        if names.is_empty() {
            let _ = writeln!(out, "| {} | (no rules) | 0 | - | 0 | 0.0 |", code(&d.label));
        }
        let mut seen = BTreeSet::new();
        for name in names {
            if !seen.insert(name) {
                continue;
            }
            let rs = s.rules.get(name).unwrap_or(&empty);
            let share = if s.qualified == 0 {
                "-".to_string()
            } else {
                format!("{:.0}%", 100.0 * rs.announcements as f64 / s.qualified as f64)
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {share} | {} | {} |",
                code(&d.label),
                code(name),
                rs.announcements,
                rs.accounts.len(),
                rate(rs.announcements, stats.weeks)
            );
        }
    }
    let _ = writeln!(out);

    let base = &defs.first().map(|d| d.label.clone()).unwrap_or_default();
    let _ = writeln!(out, "## Overlap with the baseline\n");
    if defs.len() < 2 {
        let _ = writeln!(out, "Only one definition was given: nothing to compare.\n");
    } else {
        let _ = writeln!(
            out,
            "Accounts with at least one announcement, each definition against the baseline {}.\n",
            code(base)
        );
        let a = &stats.per_def[0];
        for (d, b) in defs.iter().zip(&stats.per_def).skip(1) {
            let both: Vec<&str> = a.first.keys().filter(|k| b.first.contains_key(*k)).copied().collect();
            let only_a: Vec<&str> = a.first.keys().filter(|k| !b.first.contains_key(*k)).copied().collect();
            let only_b: Vec<&str> = b.first.keys().filter(|k| !a.first.contains_key(*k)).copied().collect();
            let _ = writeln!(out, "### {} vs {}\n", code(&d.label), code(base));
            let _ = writeln!(out, "| Accounts | Count | Examples |");
            let _ = writeln!(out, "| --- | ---: | --- |");
            let _ = writeln!(out, "| In both | {} | {} |", both.len(), examples(both.iter().copied()));
            let _ = writeln!(out, "| Only in {} | {} | {} |", code(base), only_a.len(), examples(only_a));
            let _ = writeln!(out, "| Only in {} | {} | {} |", code(&d.label), only_b.len(), examples(only_b));
            let _ = writeln!(out);

            // Shift of the first announcement, for accounts in both.
            let mut earlier: Vec<(&str, i64)> = Vec::new();
            let mut later: Vec<(&str, i64)> = Vec::new();
            let mut same = 0usize;
            for acct in &both {
                let shift = b.first[acct] - a.first[acct];
                match shift {
                    s if s < 0 => earlier.push((acct, -s)),
                    s if s > 0 => later.push((acct, s)),
                    _ => same += 1,
                }
            }
            if both.is_empty() {
                let _ = writeln!(out, "No account was announced by both, so no first announcement moved.\n");
                continue;
            }
            let _ = writeln!(
                out,
                "When {} first announced the {} accounts that both announce, compared with {}:\n",
                code(&d.label),
                both.len(),
                code(base)
            );
            let _ = writeln!(out, "| First announcement | Accounts | Median shift | Largest shifts |");
            let _ = writeln!(out, "| --- | ---: | ---: | --- |");
            for (name, group) in [("Earlier", &mut earlier), ("Later", &mut later)] {
                let mut shifts: Vec<i64> = group.iter().map(|&(_, s)| s).collect();
                shifts.sort_unstable();
                // Largest shift first; ties by account id.
                group.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(y.0)));
                let med = if shifts.is_empty() { "-".to_string() } else { fmt_shift(median(&shifts)) };
                let ex = group
                    .iter()
                    .take(EXAMPLES)
                    .map(|&(acct, s)| format!("{} ({})", code(acct), fmt_shift(s as f64)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let ex = match group.len() {
                    0 => "-".to_string(),
                    n if n > EXAMPLES => format!("{ex} (+{} more)", n - EXAMPLES),
                    _ => ex,
                };
                let _ = writeln!(out, "| {name} | {} | {med} | {ex} |", group.len());
            }
            let _ = writeln!(out, "| Same time | {same} | - | - |");
            let _ = writeln!(out);
        }
    }
    md
}

// ---------------------------------------------------------------------------------------------
// Plots

pub(crate) mod plot {
    //! Plotters draws the shapes; text is laid out and rasterised here with `ab_glyph` from an
    //! embedded font (plotters' own `ab_glyph` text path ignores glyph side bearings and
    //! misplaces the baseline, which made labels uneven), so no system font is ever needed.

    use super::{iso_week_label, truncate_chars, DefinitionInfo, Stats};
    use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};
    use plotters::prelude::*;
    use std::io;
    use std::path::Path;

    pub const WIDTH: u32 = 1000;
    pub const HEIGHT: u32 = 600;

    /// DejaVu Sans (Bitstream Vera license + public domain, see
    /// `assets/fonts/DejaVuSans-LICENSE.txt`).
    static FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

    /// Okabe-Ito colours (distinguishable with colour blindness), black, then three more; beyond
    /// ten definitions colours repeat.
    const PALETTE: [RGBColor; 10] = [
        RGBColor(0, 114, 178),
        RGBColor(230, 159, 0),
        RGBColor(0, 158, 115),
        RGBColor(213, 94, 0),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
        RGBColor(0, 0, 0),
        RGBColor(117, 112, 179),
        RGBColor(102, 166, 30),
        RGBColor(166, 118, 29),
    ];
    pub(crate) const INK: [u8; 3] = [20, 20, 20];
    pub(crate) const MUTED: [u8; 3] = [95, 95, 95];
    pub(crate) const GRID: RGBColor = RGBColor(228, 228, 228);

    // Layout (pixels).
    pub(crate) const PLOT_LEFT: i32 = 86;
    pub(crate) const PLOT_RIGHT: i32 = WIDTH as i32 - 28;
    pub(crate) const PLOT_BOTTOM: i32 = HEIGHT as i32 - 78;

    pub(crate) fn color(i: usize) -> RGBColor {
        PALETTE[i % PALETTE.len()]
    }

    pub(crate) fn err<E: std::fmt::Display>(e: E) -> io::Error {
        io::Error::other(format!("plot: {e}"))
    }

    fn font() -> io::Result<&'static FontRef<'static>> {
        static FONT: std::sync::OnceLock<Option<FontRef<'static>>> = std::sync::OnceLock::new();
        FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
            .as_ref()
            .ok_or_else(|| io::Error::other("plot: the embedded font could not be loaded"))
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum Align {
        Start,
        Center,
        End,
    }

    /// A text to draw once the shapes are done. `size` is the line height in pixels.
    pub(crate) struct Label {
        text: String,
        x: i32,
        y: i32,
        size: f32,
        rgb: [u8; 3],
        h: Align,
        v: Align,
        /// Rotated a quarter turn, reading bottom to top (for the y axis title).
        vertical: bool,
    }

    impl Label {
        pub(crate) fn new(text: impl Into<String>, (x, y): (i32, i32), size: f32) -> Label {
            Label { text: text.into(), x, y, size, rgb: INK, h: Align::Start, v: Align::Start, vertical: false }
        }
        pub(crate) fn align(mut self, h: Align, v: Align) -> Label {
            self.h = h;
            self.v = v;
            self
        }
        pub(crate) fn rgb(mut self, rgb: [u8; 3]) -> Label {
            self.rgb = rgb;
            self
        }
        pub(crate) fn vertical(mut self) -> Label {
            self.vertical = true;
            self
        }
    }

    /// Width of `text` in pixels at line height `size`.
    pub(crate) fn text_width(text: &str, size: f32) -> f32 {
        let Ok(font) = font() else { return 0.0 };
        let sf = font.as_scaled(PxScale::from(size));
        let mut w = 0.0;
        let mut prev: Option<GlyphId> = None;
        for c in text.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                w += sf.kern(p, id);
            }
            w += sf.h_advance(id);
            prev = Some(id);
        }
        w
    }

    /// Rasterises `text` into a coverage mask (width, height, values 0..=1).
    fn mask(text: &str, size: f32) -> (usize, usize, Vec<f32>) {
        let Ok(font) = font() else { return (0, 0, Vec::new()) };
        let scale = PxScale::from(size);
        let sf = font.as_scaled(scale);
        let w = text_width(text, size).ceil() as usize + 2;
        let h = (sf.ascent() - sf.descent()).ceil() as usize + 1;
        let mut m = vec![0f32; w * h];
        let mut caret = 0.0f32;
        let mut prev: Option<GlyphId> = None;
        for c in text.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                caret += sf.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, point(caret, sf.ascent()));
            caret += sf.h_advance(id);
            prev = Some(id);
            if let Some(og) = font.outline_glyph(glyph) {
                let b = og.px_bounds();
                og.draw(|gx, gy, cov| {
                    let x = b.min.x as i32 + gx as i32;
                    let y = b.min.y as i32 + gy as i32;
                    if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
                        let cell = &mut m[y as usize * w + x as usize];
                        *cell = (*cell + cov).min(1.0);
                    }
                });
            }
        }
        (w, h, m)
    }

    fn draw_label(buf: &mut [u8], l: &Label) {
        let (mw, mh, m) = mask(&l.text, l.size);
        if mw == 0 {
            return;
        }
        // Size on screen.
        let (sw, sh) = if l.vertical { (mh, mw) } else { (mw, mh) };
        let off = |a: Align, n: usize| match a {
            Align::Start => 0,
            Align::Center => n as i32 / 2,
            Align::End => n as i32,
        };
        let x0 = l.x - off(l.h, sw);
        let y0 = l.y - off(l.v, sh);
        for my in 0..mh {
            for mx in 0..mw {
                let cov = m[my * mw + mx];
                if cov <= 0.0 {
                    continue;
                }
                let (sx, sy) = if l.vertical { (my, mw - 1 - mx) } else { (mx, my) };
                let (x, y) = (x0 + sx as i32, y0 + sy as i32);
                if x < 0 || y < 0 || x >= WIDTH as i32 || y >= HEIGHT as i32 {
                    continue;
                }
                let i = (y as usize * WIDTH as usize + x as usize) * 3;
                for k in 0..3 {
                    let bg = buf[i + k] as f32;
                    buf[i + k] = (bg + (l.rgb[k] as f32 - bg) * cov).round() as u8;
                }
            }
        }
    }

    pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

    /// Renders shapes with plotters, then the labels, and writes a PNG.
    pub(crate) fn render(
        path: &Path,
        draw: impl FnOnce(&Area<'_>, &mut Vec<Label>) -> io::Result<()>,
    ) -> io::Result<()> {
        font()?;
        let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
        let mut labels = Vec::new();
        {
            let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            draw(&root, &mut labels)?;
            root.present().map_err(err)?;
        }
        for l in &labels {
            draw_label(&mut buf, l);
        }
        let file = io::BufWriter::new(std::fs::File::create(path)?);
        let mut enc = png::Encoder::new(file, WIDTH, HEIGHT);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(&buf).map_err(err)?;
        w.finish().map_err(err)
    }

    /// Title and legend (wrapped over as many rows as needed); returns the y where the plot may
    /// start.
    pub(crate) fn header(
        root: &Area<'_>,
        labels: &mut Vec<Label>,
        title: &str,
        entries: &[(String, RGBColor)],
    ) -> io::Result<i32> {
        labels.push(Label::new(title, (WIDTH as i32 / 2, 14), 26.0).align(Align::Center, Align::Start));
        let (size, row_h, swatch, gap) = (17.0f32, 24i32, 16i32, 30i32);
        let (left, right) = (PLOT_LEFT, PLOT_RIGHT);
        let mut rows: Vec<Vec<(String, RGBColor, i32)>> = vec![Vec::new()];
        let mut x = left;
        for (text, c) in entries {
            let text = truncate_chars(text, 90);
            let w = text_width(&text, size).ceil() as i32 + swatch + 7;
            if x + w > right && !rows.last().is_some_and(Vec::is_empty) {
                rows.push(Vec::new());
                x = left;
            }
            if let Some(r) = rows.last_mut() {
                r.push((text, *c, w));
            }
            x += w + gap;
        }
        let top = 54;
        for (ri, row) in rows.iter().enumerate() {
            let cy = top + ri as i32 * row_h + row_h / 2;
            let mut x = left;
            for (text, c, w) in row {
                root.draw(&Rectangle::new([(x, cy - swatch / 2), (x + swatch, cy + swatch / 2)], c.filled()))
                    .map_err(err)?;
                labels.push(Label::new(text.clone(), (x + swatch + 7, cy), size).align(Align::Start, Align::Center));
                x += w + gap;
            }
        }
        let used = if entries.is_empty() { 0 } else { rows.len() as i32 };
        Ok(top + used * row_h + 16)
    }

    fn no_announcements(root: &Area<'_>, labels: &mut Vec<Label>, title: &str) -> io::Result<()> {
        let top = header(root, labels, title, &[])?;
        root.draw(&Rectangle::new(
            [(PLOT_LEFT, top), (PLOT_RIGHT, PLOT_BOTTOM)],
            ShapeStyle::from(&RGBColor(200, 200, 200)).stroke_width(2),
        ))
        .map_err(err)?;
        labels.push(
            Label::new(
                "No announcements in this history",
                ((PLOT_LEFT + PLOT_RIGHT) / 2, (top + PLOT_BOTTOM) / 2),
                30.0,
            )
            .align(Align::Center, Align::Center)
            .rgb(MUTED),
        );
        Ok(())
    }

    fn legend_label(d: &DefinitionInfo, n: u64, baseline: bool) -> String {
        let s = if n == 1 { "" } else { "s" };
        let b = if baseline { ", baseline" } else { "" };
        if d.version.is_empty() {
            format!("{}{b}: {n} announcement{s}", d.label)
        } else {
            format!("{} ({}{b}): {n} announcement{s}", d.label, d.version)
        }
    }

    /// A plot over `n` categories with integer counts up to `max` on the y axis.
    pub(crate) struct Frame {
        pub(crate) top: i32,
        n: usize,
        ymax: u64,
    }

    impl Frame {
        pub(crate) fn x(&self, v: f64) -> i32 {
            PLOT_LEFT + ((PLOT_RIGHT - PLOT_LEFT) as f64 * v / self.n.max(1) as f64).round() as i32
        }
        pub(crate) fn y(&self, v: f64) -> i32 {
            PLOT_BOTTOM - ((PLOT_BOTTOM - self.top) as f64 * v / self.ymax.max(1) as f64).round() as i32
        }

        /// Draws grid, axes, tick labels and axis titles. `label(i)` gives the lines under
        /// category i; only every k-th category is labelled when they would not fit.
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn draw(
            root: &Area<'_>,
            labels: &mut Vec<Label>,
            top: i32,
            n: usize,
            max: u64,
            x_title: &str,
            y_title: &str,
            label: &dyn Fn(usize) -> Vec<String>,
        ) -> io::Result<Frame> {
            // A "nice" step giving at most 6 intervals, and room above the highest value.
            let mut step = 1u64;
            'find: for mag in [1u64, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000] {
                for m in [1u64, 2, 5] {
                    step = m * mag;
                    if max / step < 6 {
                        break 'find;
                    }
                }
            }
            let ymax = (max / step + 1) * step;
            let f = Frame { top, n, ymax };
            let mut v = 0;
            while v <= ymax {
                let y = f.y(v as f64);
                if v > 0 {
                    root.draw(&PathElement::new(vec![(PLOT_LEFT, y), (PLOT_RIGHT, y)], GRID)).map_err(err)?;
                }
                root.draw(&PathElement::new(vec![(PLOT_LEFT - 5, y), (PLOT_LEFT, y)], BLACK)).map_err(err)?;
                labels.push(Label::new(v.to_string(), (PLOT_LEFT - 9, y), 15.0).align(Align::End, Align::Center));
                v += step;
            }
            root.draw(&PathElement::new(
                vec![(PLOT_LEFT, top), (PLOT_LEFT, PLOT_BOTTOM), (PLOT_RIGHT, PLOT_BOTTOM)],
                BLACK,
            ))
            .map_err(err)?;
            labels.push(
                Label::new(y_title, (24, (top + PLOT_BOTTOM) / 2), 17.0).align(Align::Center, Align::Center).vertical(),
            );
            // Category labels, centred; skip some when too dense.
            let size = 14.0;
            let widest =
                (0..n).flat_map(|i| label(i).into_iter().map(|l| text_width(&l, size) as i32)).max().unwrap_or(0);
            let per = (PLOT_RIGHT - PLOT_LEFT) as f64 / n.max(1) as f64;
            let every = ((widest + 14) as f64 / per).ceil().max(1.0) as usize;
            for i in (0..n).step_by(every) {
                let cx = f.x(i as f64 + 0.5);
                root.draw(&PathElement::new(vec![(cx, PLOT_BOTTOM), (cx, PLOT_BOTTOM + 5)], BLACK)).map_err(err)?;
                for (li, line) in label(i).into_iter().enumerate() {
                    let rgb = if li == 0 { INK } else { MUTED };
                    // Kept inside the image at both ends.
                    let half = text_width(&line, size) as i32 / 2 + 3;
                    let x = cx.clamp(half, WIDTH as i32 - half);
                    labels.push(
                        Label::new(line, (x, PLOT_BOTTOM + 8 + li as i32 * 18), size)
                            .align(Align::Center, Align::Start)
                            .rgb(rgb),
                    );
                }
            }
            labels.push(
                Label::new(x_title, ((PLOT_LEFT + PLOT_RIGHT) / 2, HEIGHT as i32 - 8), 17.0)
                    .align(Align::Center, Align::End),
            );
            Ok(f)
        }
    }

    fn entries(defs: &[DefinitionInfo], stats: &Stats) -> Vec<(String, RGBColor)> {
        defs.iter()
            .zip(&stats.per_def)
            .enumerate()
            .map(|(i, (d, s))| (legend_label(d, s.qualified, i == 0 && defs.len() > 1), color(i)))
            .collect()
    }

    pub(super) fn announcements_per_week(path: &Path, defs: &[DefinitionInfo], stats: &Stats) -> io::Result<()> {
        let title = "Qualified announcements per week";
        render(path, |root, labels| {
            if !stats.any_qualified || stats.week_axis.is_empty() {
                return no_announcements(root, labels, title);
            }
            let weeks = &stats.week_axis;
            let series: Vec<Vec<u64>> = stats
                .per_def
                .iter()
                .map(|d| weeks.iter().map(|w| d.weeks.get(w).copied().unwrap_or(0)).collect())
                .collect();
            let max = series.iter().flatten().copied().max().unwrap_or(0);
            let top = header(root, labels, title, &entries(defs, stats))?;
            let label = |i: usize| {
                let w = weeks[i];
                let star = if stats.partial[i] { "*" } else { "" };
                vec![iso_week_label(w), format!("{}{star}", w.format("%b %-d"))]
            };
            let x_title = if stats.partial.iter().any(|&p| p) {
                "ISO week and its Monday (* = week only partly in the history)"
            } else {
                "ISO week and its Monday"
            };
            let f = Frame::draw(root, labels, top, weeks.len(), max, x_title, "Qualified announcements", &label)?;
            // Earlier series are drawn wider, so that where lines coincide the ones below still
            // show as an outline.
            let few = series.len() <= 4;
            for (i, s) in series.iter().enumerate() {
                let c = color(i);
                let pts: Vec<(i32, i32)> =
                    s.iter().enumerate().map(|(k, &v)| (f.x(k as f64 + 0.5), f.y(v as f64))).collect();
                let wider = if few { 2 * (series.len() - 1 - i) as u32 } else { 0 };
                let width = if few { 3 } else { 2 } + wider;
                let radius = if weeks.len() > 40 { 3 } else { 4 } + wider;
                root.draw(&PathElement::new(pts.clone(), c.stroke_width(width))).map_err(err)?;
                for p in pts {
                    root.draw(&Circle::new(p, radius, c.filled())).map_err(err)?;
                }
            }
            Ok(())
        })
    }

    pub(super) fn score_distribution(path: &Path, defs: &[DefinitionInfo], stats: &Stats) -> io::Result<()> {
        let title = "Score distribution of qualified announcements";
        render(path, |root, labels| {
            if !stats.any_qualified {
                return no_announcements(root, labels, title);
            }
            let bins: Vec<[u64; 10]> = stats
                .per_def
                .iter()
                .map(|d| {
                    let mut b = [0u64; 10];
                    for &s in &d.scores {
                        b[((s / 10) as usize).min(9)] += 1;
                    }
                    b
                })
                .collect();
            let max = bins.iter().flatten().copied().max().unwrap_or(0);
            let top = header(root, labels, title, &entries(defs, stats))?;
            let label =
                |i: usize| vec![if i == 9 { "90-100".to_string() } else { format!("{}-{}", i * 10, i * 10 + 9) }];
            let f =
                Frame::draw(root, labels, top, 10, max, "Score (10-point bins)", "Qualified announcements", &label)?;
            let m = bins.len().max(1);
            let slot = 0.84 / m as f64;
            let bar_px = f.x(slot) - f.x(0.0);
            for (j, b) in bins.iter().enumerate() {
                let c = color(j);
                for (i, &v) in b.iter().enumerate() {
                    if v == 0 {
                        continue;
                    }
                    let x0 = f.x(i as f64 + 0.08 + j as f64 * slot);
                    let x1 = f.x(i as f64 + 0.08 + (j + 1) as f64 * slot) - if bar_px > 6 { 2 } else { 0 };
                    let y = f.y(v as f64);
                    root.draw(&Rectangle::new([(x0, y), (x1.max(x0 + 1), PLOT_BOTTOM)], c.filled())).map_err(err)?;
                    let count = v.to_string();
                    if text_width(&count, 13.0) as i32 <= bar_px + 4 {
                        labels.push(
                            Label::new(count, ((x0 + x1) / 2, y - 3), 13.0).align(Align::Center, Align::End).rgb(MUTED),
                        );
                    }
                }
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-03-02T00:00:00Z"; // a Monday

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn day(d: f64) -> i64 {
        ms(T0) + (d * MS_PER_DAY as f64) as i64
    }

    fn event(kind: &str, version: &str, account: &str, time: &str, rules: &[&str], score: u32, tier: &str) -> Vec<u8> {
        let leads = if kind == "disqualified" {
            serde_json::json!([])
        } else {
            serde_json::json!([{"user_id":"u7","why":["admin","legal_page_visit"],"events_28d":310,
                "traits":{"email":"jürgen@acme.example","seniority":"director"}}])
        };
        serde_json::to_vec(&serde_json::json!({
            "specversion":"1.0","id":format!("{:032x}", ms(time) as u128 ^ account.len() as u128),
            "type":format!("pqa.account.{kind}"),"source":"pqa-engine","subject":account,
            "time":time,"datacontenttype":"application/json",
            "data":{
                "account_id":account,"definition_version":version,
                "rules":rules,"score":score,"tier":tier,"previous_tier":"warm",
                "metrics":{"active_users_28d":9,"events_7d":1234,"events_velocity_7d":2.7,"account_age_days":40.5},
                "warming_up":["uploads_7d"],
                "signals":[{"name":"legal_page_visit","user_id":"u7","at":"2026-03-03T09:00:00Z"}],
                "leads":leads,
                "account":{"name":"Acme","employees":1200,"first_seen":"2026-01-02T08:00:00Z"}
            }
        }))
        .unwrap()
    }

    fn q(def: usize, account: &str, at: i64, rules: &[&str], score: u32) -> Row {
        Row {
            definition: def,
            version: format!("v{def}"),
            account: account.to_string(),
            time_ms: at,
            event_type: TYPE_QUALIFIED.to_string(),
            rules: rules.iter().map(|s| s.to_string()).collect(),
            score,
            tier: "hot".to_string(),
            top_lead: format!("lead@{account}.example"),
            why: "test".to_string(),
            event_id: format!("{def}-{account}-{at}"),
            warming_up: Vec::new(),
        }
    }

    fn defs2() -> Vec<DefinitionInfo> {
        vec![
            DefinitionInfo {
                version: "v0".into(),
                label: "a.toml".into(),
                rules: vec!["team_adoption".into(), "enterprise_evaluation".into()],
                ..Default::default()
            },
            DefinitionInfo {
                version: "v1".into(),
                label: "b.toml".into(),
                rules: vec!["team_adoption".into(), "usage_spike".into()],
                ..Default::default()
            },
        ]
    }

    fn history(weeks: f64) -> HistoryInfo {
        HistoryInfo {
            events: 5000,
            first_ms: Some(day(0.0)),
            last_ms: Some(day(7.0 * weeks)),
            input: "history.jsonl.gz".into(),
        }
    }

    /// a: acct-1 (day 3), acct-2 (day 1), acct-3 (day 8); b: acct-1 (day 1, 2 days earlier),
    /// acct-2 (day 2.5, 1.5 days later), acct-4 (day 10).
    fn hand_made() -> Vec<Row> {
        let mut rows = vec![
            q(0, "acct-1", day(3.0), &["team_adoption"], 55),
            q(0, "acct-2", day(1.0), &["team_adoption", "enterprise_evaluation"], 87),
            q(0, "acct-3", day(8.0), &["enterprise_evaluation"], 91),
            q(0, "acct-1", day(9.0), &["team_adoption"], 60), // re-announced
            q(1, "acct-1", day(1.0), &["usage_spike"], 45),
            q(1, "acct-2", day(2.5), &["team_adoption", "usage_spike"], 72),
            q(1, "acct-4", day(10.0), &["team_adoption"], 100),
        ];
        let mut tc = q(0, "acct-2", day(4.0), &["team_adoption"], 95);
        tc.event_type = TYPE_TIER_CHANGED.into();
        let mut dq = q(1, "acct-4", day(12.0), &[], 10);
        dq.event_type = TYPE_DISQUALIFIED.into();
        dq.tier = "none".into();
        rows.push(tc);
        rows.push(dq);
        rows
    }

    #[test]
    fn row_from_cloudevent() {
        let p = event(
            "qualified",
            "default-2026.11.1",
            "acct-42",
            "2026-03-04T10:00:00.250Z",
            &["team_adoption", "enterprise_evaluation"],
            87,
            "hot",
        );
        let r = Row::from_cloudevent(1, &p).unwrap();
        assert_eq!(r.definition, 1);
        assert_eq!(r.version, "default-2026.11.1");
        assert_eq!(r.account, "acct-42");
        assert_eq!(r.time_ms, ms("2026-03-04T10:00:00.250Z"));
        assert_eq!(r.event_type, TYPE_QUALIFIED);
        assert_eq!(r.rules, vec!["team_adoption", "enterprise_evaluation"]);
        assert_eq!((r.score, r.tier.as_str()), (87, "hot"));
        assert_eq!(r.top_lead, "jürgen@acme.example");
        assert_eq!(r.warming_up, vec!["uploads_7d"]);
        assert_eq!(r.event_id.len(), 32);
        assert_eq!(
            r.why,
            "team_adoption, enterprise_evaluation: account_age_days=40.5, active_users_28d=9, \
             events_7d=1234, events_velocity_7d=2.7; signals: legal_page_visit by u7"
        );

        let d = Row::from_cloudevent(0, &event("disqualified", "v", "a", T0, &[], 0, "none")).unwrap();
        assert_eq!((d.tier.as_str(), d.top_lead.as_str(), d.rules.len()), ("none", "", 0));
        assert!(d.why.starts_with("no rule matches any more (was warm); "), "{}", d.why);
        let t = Row::from_cloudevent(0, &event("tier_changed", "v", "a", T0, &["r"], 70, "hot")).unwrap();
        assert!(t.why.starts_with("tier warm -> hot; r: "), "{}", t.why);

        // No email: the user id; no lead at all: "". Minimal payloads parse.
        let min = br#"{"specversion":"1.0","id":"x","type":"pqa.account.qualified","source":"s",
            "subject":"acct-9","time":"2026-03-04T10:00:00+01:00",
            "data":{"rules":["r1"],"score":12.6,"tier":"warm","leads":[{"user_id":"u1","traits":{}}]}}"#;
        let m = Row::from_cloudevent(0, min).unwrap();
        assert_eq!((m.account.as_str(), m.score, m.top_lead.as_str()), ("acct-9", 13, "u1"));
        assert_eq!(m.time_ms, ms("2026-03-04T09:00:00Z"));
        assert_eq!(m.why, "r1");
        assert!(m.warming_up.is_empty());

        assert!(Row::from_cloudevent(0, b"not json").is_err());
        assert!(Row::from_cloudevent(0, br#"{"type":"other","time":"2026-03-04T10:00:00Z","data":{}}"#).is_err());
        assert!(Row::from_cloudevent(0, br#"{"type":"pqa.account.qualified","time":"yesterday","data":{}}"#).is_err());
    }

    #[test]
    fn why_is_bounded() {
        let signals: Vec<Value> = (0..50)
            .map(|i| serde_json::json!({"name": format!("signal_number_{i}"), "user_id": format!("ü{i}")}))
            .collect();
        let mut metrics =
            serde_json::json!({"m_with_a_rather_long_name_1":1.23456,"m_with_a_rather_long_name_2":-3,"m3":"x"});
        for i in 0..10 {
            metrics[format!("z_filler_metric_{i}")] = serde_json::json!(i);
        }
        let p = serde_json::to_vec(&serde_json::json!({"type":TYPE_QUALIFIED,"time":T0,"id":"i",
            "data":{"account_id":"a","rules":["r"],"signals":signals,"metrics":metrics}}))
        .unwrap();
        let r = Row::from_cloudevent(0, &p).unwrap();
        assert_eq!(r.why.chars().count(), WHY_MAX_CHARS);
        assert!(r.why.ends_with('…'));
        assert!(r.why.starts_with(
            "r: m3=x, m_with_a_rather_long_name_1=1.23, m_with_a_rather_long_name_2=-3, z_filler_metric_0=0, "
        ));
        assert_eq!(Row::from_cloudevent(0, &p).unwrap().why, r.why);
    }

    #[test]
    fn csv_round_trips() {
        let tricky = "=acct,\"Müller\" 株式会社";
        let defs = defs2();
        let rows = vec![
            Row::from_cloudevent(
                1,
                &event("qualified", "v1", tricky, "2026-03-04T10:00:00Z", &["team_adoption"], 70, "warm"),
            )
            .unwrap(),
            Row::from_cloudevent(
                0,
                &event(
                    "qualified",
                    "v0",
                    "acct-1",
                    "2026-03-04T10:00:00.5Z",
                    &["team_adoption", "enterprise_evaluation"],
                    87,
                    "hot",
                ),
            )
            .unwrap(),
            Row::from_cloudevent(
                0,
                &event("qualified", "v0", tricky, "2026-03-04T10:00:00Z", &["team_adoption"], 65, "warm"),
            )
            .unwrap(),
            Row::from_cloudevent(0, &event("disqualified", "v0", "@acct-2", "2026-03-01T08:00:00Z", &[], 0, "none"))
                .unwrap(),
        ];
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/report");
        let files = write_report(&out, &defs, &history(2.0), &rows).unwrap();
        let bytes = std::fs::read(&files.csv).unwrap();
        assert!(bytes.starts_with("\u{feff}event_time,definition,".as_bytes()));
        assert!(std::str::from_utf8(&bytes).is_ok());
        assert!(bytes.windows(2).filter(|w| w == b"\r\n").count() == 5);

        let mut rd = csv::Reader::from_reader(&bytes[..]);
        assert_eq!(rd.headers().unwrap().iter().collect::<Vec<_>>(), CSV_HEADER.to_vec());
        let recs: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
        assert_eq!(recs.len(), 4);
        // Time order, then definition index, then account.
        let keys: Vec<(&str, &str, &str)> = recs.iter().map(|r| (&r[0], &r[1], &r[3])).collect();
        let safe = format!("'{tricky}");
        assert_eq!(
            keys,
            vec![
                ("2026-03-01T08:00:00Z", "a.toml", "'@acct-2"),
                ("2026-03-04T10:00:00Z", "a.toml", safe.as_str()),
                ("2026-03-04T10:00:00Z", "b.toml", safe.as_str()),
                ("2026-03-04T10:00:00.500Z", "a.toml", "acct-1"),
            ]
        );
        let r = &recs[2];
        assert_eq!(r[3].strip_prefix('\'').unwrap(), tricky);
        assert_eq!(&r[2], "v1");
        assert_eq!(&r[4], "qualified");
        assert_eq!(&r[5], "warm");
        assert_eq!(&r[6], "70");
        assert_eq!(&r[7], "team_adoption");
        assert_eq!(&r[8], "jürgen@acme.example");
        assert_eq!(&r[9], rows[0].why);
        assert_eq!(&r[10], "uploads_7d");
        assert_eq!(&r[11], rows[0].event_id);
        assert_eq!(&recs[3][7], "team_adoption, enterprise_evaluation");
        assert_eq!(&recs[0][4], "disqualified");
        assert_eq!(&recs[0][8], "");
    }

    #[test]
    fn markdown_cells_are_escaped() {
        assert_eq!(code("acct-1"), "`acct-1`");
        assert_eq!(code("a|b"), "`a\\|b`");
        assert_eq!(code("a`b*c"), "a\\`b\\*c");
        assert_eq!(code("x\ny"), "`x y`");
        assert_eq!(code(""), "(empty)");
    }

    #[test]
    fn formula_cells_are_neutralised() {
        for bad in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(spreadsheet_safe(bad), format!("'{bad}"));
        }
        assert_eq!(spreadsheet_safe("acct-1"), "acct-1");
        assert_eq!(spreadsheet_safe(""), "");
    }

    fn summary_for(defs: &[DefinitionInfo], h: &HistoryInfo, rows: &[Row]) -> (tempfile::TempDir, ReportFiles, String) {
        let dir = tempfile::tempdir().unwrap();
        let files = write_report(dir.path(), defs, h, rows).unwrap();
        let md = std::fs::read_to_string(&files.summary).unwrap();
        (dir, files, md)
    }

    fn has_line(md: &str, line: &str) {
        assert!(md.lines().any(|l| l == line), "missing line\n{line}\nin\n{md}");
    }

    #[test]
    fn summary_numbers() {
        let (_dir, _files, md) = summary_for(&defs2(), &history(2.0), &hand_made());
        for line in [
            "- **History:** `history.jsonl.gz` (5000 events)",
            "- **Span:** 2026-03-02 00:00 UTC to 2026-03-16 00:00 UTC (14.0 days; rates below are per week over 2.0 weeks)",
            "| 1 (baseline) | `a.toml` | `v0` | `team_adoption`, `enterprise_evaluation` |",
            "| 2 | `b.toml` | `v1` | `team_adoption`, `usage_spike` |",
            "| `a.toml` | 4 | 3 | 2.0 | 2 in 2026-W10 (week of 2026-03-02) | 1 | 0 | 0 | 74 |",
            "| `b.toml` | 3 | 3 | 1.5 | 2 in 2026-W10 (week of 2026-03-02) | 0 | 1 | 0 | 72 |",
            "| `a.toml` | `team_adoption` | 3 | 75% | 2 | 1.5 |",
            "| `a.toml` | `enterprise_evaluation` | 2 | 50% | 2 | 1.0 |",
            "| `b.toml` | `team_adoption` | 2 | 67% | 2 | 1.0 |",
            "| `b.toml` | `usage_spike` | 2 | 67% | 2 | 1.0 |",
            "### `b.toml` vs `a.toml`",
            "| In both | 2 | `acct-1`, `acct-2` |",
            "| Only in `a.toml` | 1 | `acct-3` |",
            "| Only in `b.toml` | 1 | `acct-4` |",
            "| Earlier | 1 | 2.0 days | `acct-1` (2.0 days) |",
            "| Later | 1 | 1.5 days | `acct-2` (1.5 days) |",
            "| Same time | 0 | - | - |",
        ] {
            has_line(&md, line);
        }
        assert!(!md.contains("No announcements"));
    }

    #[test]
    fn summary_examples_and_medians() {
        // 7 accounts only in b, 3 earlier by 1, 2, 10 days (median 2 days) and 2 later by 6 h, 18 h.
        let mut rows = Vec::new();
        for i in 0..7 {
            rows.push(q(1, &format!("b-{i}"), day(1.0), &["team_adoption"], 50));
        }
        for (i, shift) in [1.0, 2.0, 10.0].iter().enumerate() {
            rows.push(q(0, &format!("e-{i}"), day(12.0), &["team_adoption"], 50));
            rows.push(q(1, &format!("e-{i}"), day(12.0 - shift), &["team_adoption"], 50));
        }
        for (i, shift) in [0.25, 0.75].iter().enumerate() {
            rows.push(q(0, &format!("l-{i}"), day(1.0), &["team_adoption"], 50));
            rows.push(q(1, &format!("l-{i}"), day(1.0 + shift), &["team_adoption"], 50));
        }
        let (_d, _f, md) = summary_for(&defs2(), &history(0.5), &rows);
        has_line(&md, "| Only in `b.toml` | 7 | `b-0`, `b-1`, `b-2`, `b-3`, `b-4` (+2 more) |");
        has_line(&md, "| Earlier | 3 | 2.0 days | `e-2` (10.0 days), `e-1` (2.0 days), `e-0` (1.0 days) |");
        has_line(&md, "| Later | 2 | 12.0 hours | `l-1` (18.0 hours), `l-0` (6.0 hours) |");
        // Half a week of history counts as one week.
        has_line(&md, "| `b.toml` | 12 | 12 | 12.0 | 10 in 2026-W10 (week of 2026-03-02) | 0 | 0 | 0 | 50 |");
    }

    fn png_pixels(path: &Path) -> (u32, u32, Vec<u8>) {
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", path.display());
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut rd = dec.read_info().unwrap();
        let mut buf = vec![0; rd.output_buffer_size().unwrap()];
        let info = rd.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn assert_not_blank(path: &Path, min_colors: usize) {
        let (w, h, px) = png_pixels(path);
        assert_eq!((w, h), (1000, 600));
        let non_white = px.chunks(3).filter(|p| p != &[255, 255, 255]).count();
        assert!(non_white > 2000, "{} looks blank ({non_white} pixels drawn)", path.display());
        let colors: BTreeSet<&[u8]> = px.chunks(3).collect();
        assert!(colors.len() >= min_colors, "{}: {} colours", path.display(), colors.len());
        // Text is drawn (anti-aliased greys exist) in the title band.
        let title_band = &px[(15 * w as usize * 3)..(35 * w as usize * 3)];
        assert!(title_band.chunks(3).any(|p| p[0] < 100 && p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn plots_are_pngs_and_not_blank() {
        let (_dir, files, _md) = summary_for(&defs2(), &history(2.0), &hand_made());
        assert_eq!(files.plots.len(), 2);
        assert!(files.plots[0].ends_with("announcements_per_week.png"));
        assert!(files.plots[1].ends_with("score_distribution.png"));
        for p in &files.plots {
            assert_not_blank(p, 10);
        }
        // The two definition colours are on both plots.
        for p in &files.plots {
            let (_, _, px) = png_pixels(p);
            for c in [[0u8, 114, 178], [230, 159, 0]] {
                assert!(px.chunks(3).any(|p| p == c), "{}: colour {c:?} missing", p.display());
            }
        }
    }

    #[test]
    fn empty_inputs_give_valid_files() {
        let one = vec![defs2().remove(0)];
        let h = HistoryInfo { events: 0, first_ms: None, last_ms: None, input: String::new() };
        let (_dir, files, md) = summary_for(&one, &h, &[]);
        has_line(&md, "**No announcements:** no definition qualified any account in this history.");
        has_line(&md, "Only one definition was given: nothing to compare.");
        has_line(&md, "| `a.toml` | 0 | 0 | 0.0 | - | 0 | 0 | 0 | - |");
        has_line(&md, "- **Span:** unknown, the history gave no event times (rates below are per week over 1.0 weeks)");
        for p in &files.plots {
            assert_not_blank(p, 3);
        }
        let mut rd = csv::Reader::from_path(&files.csv).unwrap();
        assert_eq!(rd.headers().unwrap().len(), CSV_HEADER.len());
        assert_eq!(rd.records().count(), 0);

        // No definitions at all, and rows naming an undescribed definition: no panic.
        summary_for(&[], &h, &[]);
        let (_d, _f, md) = summary_for(&one, &history(1.0), &[q(3, "x", day(1.0), &["r"], 50)]);
        assert!(md.contains("`definition #4`"));
        // Only tier changes: still "no announcements".
        let mut tc = q(0, "x", day(1.0), &["r"], 50);
        tc.event_type = TYPE_TIER_CHANGED.into();
        let (_d, files, md) = summary_for(&defs2(), &history(1.0), &[tc]);
        assert!(md.contains("**No announcements:**"));
        assert_not_blank(&files.plots[0], 3);
    }

    /// 9 definitions (long labels) over 60 weeks.
    fn many() -> (Vec<DefinitionInfo>, Vec<Row>) {
        let mut defs = defs2();
        for i in 2..9 {
            defs.push(DefinitionInfo {
                version: format!("experiment-2026.11.{i}-with-a-long-suffix"),
                label: format!("experiments/candidate-{i}.toml"),
                rules: vec!["team_adoption".into()],
                ..Default::default()
            });
        }
        let mut rows = Vec::new();
        for w in 0..60 {
            for d in 0..defs.len() {
                for k in 0..((w * (d + 1)) % 7) {
                    let score = ((w * 13 + k * 7 + d * 3) % 101) as u32;
                    rows.push(q(d, &format!("acct-{w}-{k}"), day(w as f64 * 7.0 + 1.0), &["team_adoption"], score));
                }
            }
        }
        (defs, rows)
    }

    #[test]
    fn many_weeks_and_definitions_render() {
        let (defs, rows) = many();
        let (_dir, files, _md) = summary_for(&defs, &history(60.0), &rows);
        for p in &files.plots {
            assert_not_blank(p, 10);
        }
    }

    /// Writes a sample report to $REPORT_SAMPLE_DIR for a look (no-op otherwise).
    #[test]
    fn sample_report() {
        let Ok(dir) = std::env::var("REPORT_SAMPLE_DIR") else { return };
        let dir = Path::new(&dir);
        write_report(&dir.join("hand_made"), &defs2(), &history(2.0), &hand_made()).unwrap();
        let h = HistoryInfo { events: 0, first_ms: None, last_ms: None, input: "empty.jsonl".into() };
        write_report(&dir.join("empty"), &defs2()[..1], &h, &[]).unwrap();
        let (defs, rows) = many();
        write_report(&dir.join("many"), &defs, &history(60.0), &rows).unwrap();
        let tricky = "=acct,\"Müller\" | 株式会社";
        let rows: Vec<Row> = [
            (
                0,
                "qualified",
                "acct-42",
                "2026-03-04T10:00:00Z",
                vec!["team_adoption", "enterprise_evaluation"],
                87,
                "hot",
            ),
            (1, "qualified", "acct-42", "2026-03-03T09:30:00.120Z", vec!["team_adoption"], 64, "warm"),
            (1, "tier_changed", "acct-42", "2026-03-06T10:00:00Z", vec!["team_adoption", "usage_spike"], 88, "hot"),
            (0, "qualified", tricky, "2026-03-05T10:00:00Z", vec!["enterprise_evaluation"], 71, "warm"),
            (1, "qualified", tricky, "2026-03-09T11:00:00Z", vec!["usage_spike"], 55, "warm"),
            (0, "disqualified", "acct-42", "2026-03-12T10:00:00Z", vec![], 20, "none"),
        ]
        .into_iter()
        .map(|(d, k, a, t, r, sc, tier)| {
            Row::from_cloudevent(d, &event(k, &format!("v{d}"), a, t, &r, sc, tier)).unwrap()
        })
        .collect();
        write_report(&dir.join("tricky"), &defs2(), &history(2.0), &rows).unwrap();
    }
}
