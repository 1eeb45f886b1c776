//! `backtest --outcomes`: what sales made of each definition's
//! announcements. The outcomes (an NDJSON file, see [`crate::outcome`]) are
//! joined to the announcements of every definition of the backtest, each on
//! its own, and the report gets, per definition and rule:
//!
//! - the counts and precision of [`crate::outcome::RuleTally`];
//! - **recall**: of the accounts with an opportunity or a win, the share
//!   the definition (the rule) announced at most one attribution window
//!   before the first of those outcomes;
//! - median and p90 **lead time**, days from the first announcement to the
//!   opportunity or win;
//!
//! and the outcomes no definition saw coming. Files: `rules.csv`,
//! `missed.csv`, `outcomes_by_rule.png`, and a section appended to
//! `summary.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::outcome::{tally_account, Announcement, OutcomeFile, OutcomeKind, RuleTally};
use crate::report::{spreadsheet_safe, DefinitionInfo, HistoryInfo, Row, TYPE_QUALIFIED, TYPE_TIER_CHANGED};

const MS_PER_DAY: f64 = 86_400_000.0;
/// The name of the row that counts every announcement, whatever its rules.
pub const ANY_RULE: &str = "(any rule)";
/// Missed outcomes listed in the summary (all of them are in `missed.csv`).
const MISSED_IN_SUMMARY: usize = 15;

/// One rule (or [`ANY_RULE`]) of one definition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleOutcomes {
    pub rule: String,
    pub tally: RuleTally,
    /// Accounts with an opportunity or a win that count for recall.
    pub positive_accounts: u64,
    /// Of those, the ones this rule announced in time.
    pub recalled_accounts: u64,
}

impl RuleOutcomes {
    pub fn recall(&self) -> Option<f64> {
        (self.positive_accounts > 0).then(|| self.recalled_accounts as f64 / self.positive_accounts as f64)
    }
}

/// One definition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DefinitionOutcomes {
    /// [`ANY_RULE`] first, then its rules in definition order, then any
    /// other rule its announcements named.
    pub rules: Vec<RuleOutcomes>,
    /// Outcomes attributed to one of its announcements (by id, by time).
    pub by_id: u64,
    pub by_time: u64,
}

/// A positive outcome (opportunity or win) no definition announced in time.
#[derive(Debug, Clone, PartialEq)]
pub struct Missed {
    pub account: String,
    /// The first opportunity or win of the account.
    pub outcome: OutcomeKind,
    pub at_ms: i64,
    pub amount: Option<f64>,
    pub rule: Option<String>,
    pub pqa_event_id: Option<String>,
    /// Announcements that came, but too late or too early: (definition
    /// index, time).
    pub other_announcements: Vec<(usize, i64)>,
}

/// Everything the outcomes part of the report says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutcomeStats {
    pub per_def: Vec<DefinitionOutcomes>,
    pub missed: Vec<Missed>,
    /// Outcome records read, by kind.
    pub by_kind: BTreeMap<OutcomeKind, u64>,
    /// Accounts with an opportunity or a win, counted for recall.
    pub positive_accounts: u64,
    /// Accounts whose first opportunity or win came before the history
    /// began: no definition could have announced them, so they are left out
    /// of recall.
    pub before_history: u64,
    pub window_ms: i64,
}

/// Per definition, its announcements by account: `qualified` events, and
/// the id of each `tier_changed` event mapped to the announcement it
/// follows (an outcome naming a tier change answers that announcement).
fn announcements_by_account(rows: &[Row], def: usize) -> (BTreeMap<&str, Vec<Announcement>>, BTreeMap<&str, String>) {
    let mut mine: Vec<&Row> = rows.iter().filter(|r| r.definition == def).collect();
    mine.sort_by(|a, b| (a.time_ms, &a.account).cmp(&(b.time_ms, &b.account)));
    let mut by_account: BTreeMap<&str, Vec<Announcement>> = BTreeMap::new();
    let mut aliases: BTreeMap<&str, String> = BTreeMap::new();
    for r in mine {
        match r.event_type.as_str() {
            TYPE_QUALIFIED => by_account.entry(r.account.as_str()).or_default().push(Announcement {
                event_id: r.event_id.clone(),
                rules: r.rules.clone(),
                at_ms: r.time_ms,
            }),
            TYPE_TIER_CHANGED => {
                if let Some(parent) = by_account.get(r.account.as_str()).and_then(|v| v.last()) {
                    aliases.insert(r.event_id.as_str(), parent.event_id.clone());
                }
            }
            _ => {}
        }
    }
    (by_account, aliases)
}

/// Joins `outcomes` to the announcements of every definition in `rows`.
pub fn compute(
    defs: &[DefinitionInfo],
    rows: &[Row],
    outcomes: &OutcomeFile,
    history: &HistoryInfo,
    window_ms: i64,
) -> OutcomeStats {
    let mut stats = OutcomeStats { window_ms, ..Default::default() };
    let mut by_account: BTreeMap<&str, Vec<crate::outcome::Outcome>> = BTreeMap::new();
    for o in &outcomes.outcomes {
        *stats.by_kind.entry(o.outcome).or_default() += 1;
        by_account.entry(o.account_id.as_str()).or_default().push(o.clone());
    }
    // Each account's first opportunity or win: what recall is about.
    let mut first_positive: BTreeMap<&str, &crate::outcome::Outcome> = BTreeMap::new();
    for o in outcomes.outcomes.iter().filter(|o| o.outcome.is_positive()) {
        let e = first_positive.entry(o.account_id.as_str()).or_insert(o);
        if o.at_ms < e.at_ms {
            *e = o;
        }
    }
    if let Some(first) = history.first_ms {
        let before = first_positive.values().filter(|o| o.at_ms < first).count();
        stats.before_history = before as u64;
        first_positive.retain(|_, o| o.at_ms >= first);
    }
    stats.positive_accounts = first_positive.len() as u64;
    let in_time = |a: &Announcement, at: i64| a.at_ms <= at && a.at_ms >= at.saturating_sub(window_ms);
    let mut recalled_by_any: BTreeSet<&str> = BTreeSet::new();
    let ndefs = defs.len().max(rows.iter().map(|r| r.definition + 1).max().unwrap_or(0));
    let mut all_anns: Vec<BTreeMap<&str, Vec<Announcement>>> = Vec::new();
    for d in 0..ndefs {
        let (anns, aliases) = announcements_by_account(rows, d);
        let mut sum = crate::outcome::AccountTally::default();
        let mut out = DefinitionOutcomes::default();
        let accounts: BTreeSet<&str> = anns.keys().chain(by_account.keys()).copied().collect();
        for acct in accounts {
            let a = anns.get(acct).map(Vec::as_slice).unwrap_or(&[]);
            let mut os: Vec<crate::outcome::Outcome> = by_account.get(acct).cloned().unwrap_or_default();
            for o in &mut os {
                if let Some(parent) = o.pqa_event_id.as_deref().and_then(|id| aliases.get(id)) {
                    o.pqa_event_id = Some(parent.clone());
                }
            }
            let t = tally_account(a, &os, window_ms);
            for at in t.attributed.iter().flatten() {
                match at.1 {
                    crate::outcome::AttributedBy::EventId => out.by_id += 1,
                    crate::outcome::AttributedBy::Time => out.by_time += 1,
                }
            }
            sum.add(&t);
        }
        // Rules: the definition's, then any other its announcements named.
        let mut names: Vec<String> = defs.get(d).map(|x| x.rules.clone()).unwrap_or_default();
        for r in sum.by_rule.keys() {
            if !names.contains(r) {
                names.push(r.clone());
            }
        }
        let recall_for = |rule: Option<&str>| -> u64 {
            first_positive
                .iter()
                .filter(|(acct, o)| {
                    anns.get(*acct).is_some_and(|v| {
                        v.iter().any(|a| in_time(a, o.at_ms) && rule.is_none_or(|r| a.rules.iter().any(|x| x == r)))
                    })
                })
                .count() as u64
        };
        out.rules.push(RuleOutcomes {
            rule: ANY_RULE.to_string(),
            tally: sum.all.clone(),
            positive_accounts: stats.positive_accounts,
            recalled_accounts: recall_for(None),
        });
        for name in names {
            out.rules.push(RuleOutcomes {
                tally: sum.by_rule.get(&name).cloned().unwrap_or_default(),
                positive_accounts: stats.positive_accounts,
                recalled_accounts: recall_for(Some(&name)),
                rule: name,
            });
        }
        for (acct, o) in &first_positive {
            if anns.get(acct).is_some_and(|v| v.iter().any(|a| in_time(a, o.at_ms))) {
                recalled_by_any.insert(acct);
            }
        }
        stats.per_def.push(out);
        all_anns.push(anns);
    }
    for (acct, o) in &first_positive {
        if recalled_by_any.contains(acct) {
            continue;
        }
        let mut other = Vec::new();
        for (d, anns) in all_anns.iter().enumerate() {
            for a in anns.get(acct).map(Vec::as_slice).unwrap_or(&[]) {
                other.push((d, a.at_ms));
            }
        }
        other.sort_unstable();
        stats.missed.push(Missed {
            account: acct.to_string(),
            outcome: o.outcome,
            at_ms: o.at_ms,
            amount: o.amount,
            rule: o.rule.clone(),
            pqa_event_id: o.pqa_event_id.clone(),
            other_announcements: other,
        });
    }
    stats.missed.sort_by(|a, b| (a.at_ms, &a.account).cmp(&(b.at_ms, &b.account)));
    stats
}

fn lead(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |v| format!("{v:.1} days"))
}

fn num(x: Option<f64>) -> String {
    x.map_or(String::new(), |v| format!("{v:.4}").trim_end_matches('0').trim_end_matches('.').to_string())
}

fn time(ms: i64) -> String {
    crate::emit::format_time_ms(ms)
}

/// `rules.csv`: one row per definition and rule (the [`ANY_RULE`] row
/// first), RFC 4180 with a BOM like `pqas.csv`.
pub const RULES_CSV_HEADER: [&str; 17] = [
    "definition",
    "definition_version",
    "rule",
    "announced",
    "with_outcome",
    "accepted",
    "rejected",
    "opportunity",
    "won",
    "lost",
    "precision",
    "positive_accounts",
    "recalled_accounts",
    "recall",
    "median_lead_days",
    "p90_lead_days",
    "lead_times",
];

/// `missed.csv`: the outcomes no definition saw coming.
pub const MISSED_CSV_HEADER: [&str; 7] =
    ["account", "outcome", "at", "amount", "rule", "pqa_event_id", "announced_outside_the_window"];

fn csv_writer(path: &Path) -> io::Result<csv::Writer<io::BufWriter<std::fs::File>>> {
    let mut file = io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all("\u{feff}".as_bytes())?;
    Ok(csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(file))
}

fn finish(w: csv::Writer<io::BufWriter<std::fs::File>>) -> io::Result<()> {
    w.into_inner().map_err(|e| io::Error::other(e.to_string()))?.flush()
}

fn label_of(defs: &[DefinitionInfo], d: usize) -> String {
    defs.get(d).map_or_else(|| format!("definition #{}", d + 1), |x| x.label.clone())
}

/// Writes `rules.csv`, `missed.csv` and `outcomes_by_rule.png` into `dir`,
/// and returns the Markdown section for `summary.md` with the files.
pub fn write(
    dir: &Path,
    defs: &[DefinitionInfo],
    stats: &OutcomeStats,
    outcomes: &OutcomeFile,
    outcomes_name: &str,
) -> io::Result<(String, Vec<PathBuf>)> {
    let files = vec![dir.join("rules.csv"), dir.join("missed.csv"), dir.join("outcomes_by_rule.png")];
    let mut w = csv_writer(&files[0])?;
    w.write_record(RULES_CSV_HEADER).map_err(io::Error::other)?;
    for (d, def) in stats.per_def.iter().enumerate() {
        let version = defs.get(d).map(|x| x.version.as_str()).unwrap_or("");
        for r in &def.rules {
            let t = &r.tally;
            let mut leads = t.lead_times_days.clone();
            leads.sort_by(f64::total_cmp);
            let cells = [
                spreadsheet_safe(&label_of(defs, d)),
                spreadsheet_safe(version),
                spreadsheet_safe(&r.rule),
                t.announced.to_string(),
                t.answered.to_string(),
                t.accepted.to_string(),
                t.rejected.to_string(),
                t.opportunity.to_string(),
                t.won.to_string(),
                t.lost.to_string(),
                num(t.precision()),
                r.positive_accounts.to_string(),
                r.recalled_accounts.to_string(),
                num(r.recall()),
                num(t.median_lead_days()),
                num(t.p90_lead_days()),
                leads.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" "),
            ];
            w.write_record(&cells).map_err(io::Error::other)?;
        }
    }
    finish(w)?;

    let mut w = csv_writer(&files[1])?;
    w.write_record(MISSED_CSV_HEADER).map_err(io::Error::other)?;
    for m in &stats.missed {
        let cells = [
            spreadsheet_safe(&m.account),
            m.outcome.as_str().to_string(),
            time(m.at_ms),
            m.amount.map(|a| num(Some(a))).unwrap_or_default(),
            spreadsheet_safe(m.rule.as_deref().unwrap_or("")),
            spreadsheet_safe(m.pqa_event_id.as_deref().unwrap_or("")),
            spreadsheet_safe(&describe_other(defs, m, stats.window_ms)),
        ];
        w.write_record(&cells).map_err(io::Error::other)?;
    }
    finish(w)?;

    plot_by_rule(&files[2], defs, stats)?;
    Ok((markdown(defs, stats, outcomes, outcomes_name), files))
}

/// "a.toml 12.0 days after; b.toml 130.2 days before" (the nearest of
/// each definition).
fn describe_other(defs: &[DefinitionInfo], m: &Missed, window_ms: i64) -> String {
    let mut parts = Vec::new();
    // The nearest announcement of each definition.
    let mut nearest: BTreeMap<usize, i64> = BTreeMap::new();
    for &(d, at) in &m.other_announcements {
        let e = nearest.entry(d).or_insert(at);
        if (at - m.at_ms).abs() < (*e - m.at_ms).abs() {
            *e = at;
        }
    }
    for (d, at) in nearest {
        let delta = (at - m.at_ms) as f64 / MS_PER_DAY;
        let when = if delta > 0.0 {
            format!("{delta:.1} days after")
        } else {
            format!("{:.1} days before (window {:.0} days)", -delta, window_ms as f64 / MS_PER_DAY)
        };
        parts.push(format!("{} {when}", label_of(defs, d)));
    }
    parts.join("; ")
}

fn code(s: &str) -> String {
    let s = s.replace(['\r', '\n'], " ").replace('|', "\\|").replace('`', "'");
    if s.is_empty() {
        "(empty)".into()
    } else {
        format!("`{s}`")
    }
}

fn markdown(defs: &[DefinitionInfo], stats: &OutcomeStats, outcomes: &OutcomeFile, name: &str) -> String {
    let mut md = String::new();
    let out = &mut md;
    let window_days = stats.window_ms as f64 / MS_PER_DAY;
    let _ = writeln!(out, "## Outcomes: what sales made of the announcements\n");
    let kinds: Vec<String> = OutcomeKind::ALL
        .iter()
        .map(|k| format!("{} {}", stats.by_kind.get(k).copied().unwrap_or(0), k.as_str()))
        .collect();
    let _ = writeln!(out, "- **Outcomes:** {} ({} records: {})", code(name), outcomes.outcomes.len(), kinds.join(", "));
    if !outcomes.bad.is_empty() {
        let lines: Vec<String> = outcomes.bad.iter().take(5).map(|b| format!("{} ({})", b.line, b.reason)).collect();
        let more = if outcomes.bad.len() > 5 { format!(" and {} more", outcomes.bad.len() - 5) } else { String::new() };
        let what = if outcomes.bad.len() == 1 { "line that is not an outcome" } else { "lines that are not outcomes" };
        let _ = writeln!(out, "- **Left out:** {} {what}: line {}{more}", outcomes.bad.len(), lines.join(", "));
    }
    let _ = writeln!(
        out,
        "- **Accounts with an opportunity or a win:** {}{}",
        stats.positive_accounts,
        if stats.before_history > 0 {
            format!(
                " (and {} more whose first opportunity or win came before the history began: left out of recall)",
                stats.before_history
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "- **Attribution:** an outcome answers the announcement whose id it names (`pqa_event_id`), else the latest \
         announcement of its account at or before it, at most {window_days:.0} days before (preferring one that lists \
         the outcome's `rule`). Ids name one definition's announcements, so the other definitions are matched by time."
    );
    let _ = writeln!(
        out,
        "- **Precision** = announcements with an opportunity or a win / announcements with any outcome. **Recall** = \
         accounts with an opportunity or a win that the definition (rule) announced at most {window_days:.0} days before \
         the first of them / all such accounts. **Lead time** = days from the account's first announcement (of the \
         rule) to its first opportunity or win."
    );
    let _ = writeln!(out, "- **Files:** `rules.csv`, `missed.csv`, `outcomes_by_rule.png`\n");
    let _ = writeln!(
        out,
        "| Definition | Rule | Announced | With outcome | Accepted | Rejected | Opportunity | Won | Lost | Precision | Recall | Median lead | p90 lead |"
    );
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (d, def) in stats.per_def.iter().enumerate() {
        for r in &def.rules {
            let t = &r.tally;
            let rule = if r.rule == ANY_RULE { "*any rule*".to_string() } else { code(&r.rule) };
            let prec = match t.precision() {
                Some(p) => format!("{:.0}% ({}/{})", 100.0 * p, t.positive, t.answered),
                None => "-".into(),
            };
            let recall = match r.recall() {
                Some(p) => format!("{:.0}% ({}/{})", 100.0 * p, r.recalled_accounts, r.positive_accounts),
                None => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {rule} | {} | {} | {} | {} | {} | {} | {} | {prec} | {recall} | {} | {} |",
                code(&label_of(defs, d)),
                t.announced,
                t.answered,
                t.accepted,
                t.rejected,
                t.opportunity,
                t.won,
                t.lost,
                lead(t.median_lead_days()),
                lead(t.p90_lead_days()),
            );
        }
    }
    let _ = writeln!(out);
    for (d, def) in stats.per_def.iter().enumerate() {
        if def.by_id + def.by_time > 0 {
            let _ = writeln!(
                out,
                "{}: {} outcomes answered one of its announcements ({} by `pqa_event_id`, {} by time).",
                code(&label_of(defs, d)),
                def.by_id + def.by_time,
                def.by_id,
                def.by_time
            );
        }
    }
    let _ = writeln!(out, "\n### Outcomes no definition saw coming\n");
    if stats.missed.is_empty() {
        let _ = writeln!(
            out,
            "None: every account with an opportunity or a win was announced by at least one definition at most \
             {window_days:.0} days before.\n"
        );
        return md;
    }
    let _ = writeln!(
        out,
        "{} of {} accounts with an opportunity or a win were announced by no definition in the {window_days:.0} days \
         before their first one (all of them in `missed.csv`). What they did before is what `pqa-engine analyze \
         --outcomes` looks into.\n",
        stats.missed.len(),
        stats.positive_accounts
    );
    let _ =
        writeln!(out, "| Account | Outcome | At | Amount | Rule (from the CRM) | Announcements outside the window |");
    let _ = writeln!(out, "| --- | --- | --- | ---: | --- | --- |");
    for m in stats.missed.iter().take(MISSED_IN_SUMMARY) {
        let other = describe_other(defs, m, stats.window_ms);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            code(&m.account),
            m.outcome.as_str(),
            time(m.at_ms),
            m.amount.map(|a| num(Some(a))).unwrap_or_else(|| "-".into()),
            m.rule.as_deref().map(code).unwrap_or_else(|| "-".into()),
            if other.is_empty() { "none".to_string() } else { other.replace('|', "\\|") }
        );
    }
    if stats.missed.len() > MISSED_IN_SUMMARY {
        let _ = writeln!(out, "\n(+{} more in `missed.csv`)", stats.missed.len() - MISSED_IN_SUMMARY);
    }
    let _ = writeln!(out);
    md
}

/// Precision (solid) and recall (light) per rule, a bar per definition.
fn plot_by_rule(path: &Path, defs: &[DefinitionInfo], stats: &OutcomeStats) -> io::Result<()> {
    use crate::report::plot::{self, Align, Frame, Label, MUTED, PLOT_BOTTOM, PLOT_LEFT, PLOT_RIGHT};
    use plotters::prelude::*;
    let title = "Precision (solid) and recall (light) per rule";
    // Categories: "any rule", then each rule in the order first met.
    let mut cats: Vec<String> = vec![ANY_RULE.to_string()];
    for d in &stats.per_def {
        for r in &d.rules {
            if !cats.contains(&r.rule) {
                cats.push(r.rule.clone());
            }
        }
    }
    plot::render(path, |root, labels| {
        let mut entries: Vec<(String, RGBColor)> = stats
            .per_def
            .iter()
            .enumerate()
            .map(|(d, _)| {
                let v = defs.get(d).map(|x| x.version.as_str()).unwrap_or("");
                (format!("{} ({v})", label_of(defs, d)), plot::color(d))
            })
            .collect();
        entries.push(("precision: solid, recall: light".to_string(), RGBColor(150, 150, 150)));
        let top = plot::header(root, labels, title, &entries)?;
        // Every rule named under its bars: a name too long for its place is
        // shortened (the plot's frame would otherwise skip every other).
        let room = ((PLOT_RIGHT - PLOT_LEFT) as f32 / cats.len().max(1) as f32 - 16.0).max(20.0);
        let fit = |s: &str| {
            if plot::text_width(s, 14.0) <= room {
                return s.to_string();
            }
            let mut t: String = s.to_string();
            while !t.is_empty() && plot::text_width(&format!("{t}…"), 14.0) > room {
                t.pop();
            }
            format!("{t}…")
        };
        let names: Vec<String> = cats.iter().map(|c| fit(c)).collect();
        let label = |i: usize| vec![names[i].clone()];
        let f = Frame::draw(root, labels, top, cats.len(), 99, "Rule", "Percent", &label)?;
        let m = stats.per_def.len().max(1) * 2;
        let slot = 0.84 / m as f64;
        let bar_px = f.x(slot) - f.x(0.0);
        for (d, def) in stats.per_def.iter().enumerate() {
            let c = plot::color(d);
            let light = RGBColor(
                (c.0 as u16 + (255 - c.0 as u16) * 55 / 100) as u8,
                (c.1 as u16 + (255 - c.1 as u16) * 55 / 100) as u8,
                (c.2 as u16 + (255 - c.2 as u16) * 55 / 100) as u8,
            );
            for (i, cat) in cats.iter().enumerate() {
                let Some(r) = def.rules.iter().find(|r| &r.rule == cat) else { continue };
                for (k, (v, col)) in [(r.tally.precision(), c), (r.recall(), light)].into_iter().enumerate() {
                    let Some(v) = v else { continue };
                    let j = d * 2 + k;
                    let x0 = f.x(i as f64 + 0.08 + j as f64 * slot);
                    let x1 = f.x(i as f64 + 0.08 + (j + 1) as f64 * slot) - if bar_px > 6 { 2 } else { 0 };
                    let y = f.y(100.0 * v);
                    root.draw(&Rectangle::new(
                        [(x0, y.min(PLOT_BOTTOM - 1)), (x1.max(x0 + 1), PLOT_BOTTOM)],
                        col.filled(),
                    ))
                    .map_err(plot::err)?;
                    let text = format!("{:.0}", 100.0 * v);
                    if plot::text_width(&text, 13.0) as i32 <= bar_px + 4 {
                        labels.push(
                            Label::new(text, ((x0 + x1) / 2, y - 3), 13.0).align(Align::Center, Align::End).rgb(MUTED),
                        );
                    }
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;

    const DAY: i64 = 86_400_000;
    const T0: i64 = 1_790_000_000_000;

    fn row(def: usize, account: &str, kind: &str, at: i64, rules: &[&str], id: &str) -> Row {
        Row {
            definition: def,
            version: format!("v{def}"),
            account: account.into(),
            time_ms: at,
            event_type: format!("pqa.account.{kind}"),
            rules: rules.iter().map(|r| r.to_string()).collect(),
            event_id: id.into(),
            ..Default::default()
        }
    }

    fn o(acct: &str, kind: OutcomeKind, at: i64) -> Outcome {
        Outcome { account_id: acct.into(), outcome: kind, at_ms: at, pqa_event_id: None, rule: None, amount: None }
    }

    fn defs() -> Vec<DefinitionInfo> {
        vec![
            DefinitionInfo {
                version: "v0".into(),
                label: "a.toml".into(),
                rules: vec!["r1".into(), "r2".into()],
                ..Default::default()
            },
            DefinitionInfo {
                version: "v1".into(),
                label: "b.toml".into(),
                rules: vec!["r1".into()],
                ..Default::default()
            },
        ]
    }

    #[test]
    fn by_hand() {
        let rows = vec![
            row(0, "x", "qualified", T0, &["r1"], "a-x"),
            row(0, "x", "tier_changed", T0 + DAY, &["r1", "r2"], "a-x-tc"),
            row(0, "y", "qualified", T0 + 2 * DAY, &["r2"], "a-y"),
            row(1, "y", "qualified", T0 + 5 * DAY, &["r1"], "b-y"),
            row(1, "z", "qualified", T0, &["r1"], "b-z"),
        ];
        let mut won_x = o("x", OutcomeKind::Won, T0 + 20 * DAY);
        won_x.pqa_event_id = Some("a-x-tc".into()); // names a tier change of a
        let outcomes = OutcomeFile {
            outcomes: vec![
                o("x", OutcomeKind::Accepted, T0 + DAY),
                won_x,
                o("y", OutcomeKind::Opportunity, T0 + 4 * DAY), // a: by time (2 days); b: before its announcement
                o("z", OutcomeKind::Rejected, T0 + DAY),
                o("w", OutcomeKind::Won, T0 + 3 * DAY),    // nobody announced w
                o("old", OutcomeKind::Won, T0 - 10 * DAY), // before the history
            ],
            ..Default::default()
        };
        let h = HistoryInfo { events: 1, first_ms: Some(T0 - DAY), last_ms: Some(T0 + 30 * DAY), input: "h".into() };
        let s = compute(&defs(), &rows, &outcomes, &h, 90 * DAY);
        assert_eq!((s.positive_accounts, s.before_history), (3, 1));
        let a = &s.per_def[0];
        assert_eq!(a.rules.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>(), [ANY_RULE, "r1", "r2"]);
        let any = &a.rules[0];
        assert_eq!((any.tally.announced, any.tally.answered, any.tally.positive), (2, 2, 2));
        assert_eq!((any.recalled_accounts, any.positive_accounts), (2, 3));
        assert_eq!(any.tally.lead_times_days, [20.0, 2.0]);
        let r1 = &a.rules[1];
        assert_eq!((r1.tally.announced, r1.tally.answered, r1.tally.accepted, r1.tally.won), (1, 1, 1, 1));
        assert_eq!((r1.recalled_accounts, r1.tally.lead_times_days.clone()), (1, vec![20.0]));
        let r2 = &a.rules[2];
        assert_eq!((r2.tally.announced, r2.tally.opportunity, r2.recalled_accounts), (1, 1, 1));
        assert_eq!((a.by_id, a.by_time), (1, 2));
        let b = &s.per_def[1];
        // b announced y after its opportunity, and z was rejected.
        assert_eq!((b.rules[0].tally.announced, b.rules[0].tally.answered, b.rules[0].tally.positive), (2, 1, 0));
        assert_eq!(b.rules[0].tally.precision(), Some(0.0));
        assert_eq!(b.rules[0].recalled_accounts, 0);
        assert_eq!(s.missed.len(), 1);
        assert_eq!((s.missed[0].account.as_str(), s.missed[0].outcome), ("w", OutcomeKind::Won));

        let dir = tempfile::tempdir().unwrap();
        // REPORT_SAMPLE_DIR=... keeps the files for a look.
        let out =
            std::env::var("REPORT_SAMPLE_DIR").map_or(dir.path().to_path_buf(), |d| Path::new(&d).join("outcomes"));
        std::fs::create_dir_all(&out).unwrap();
        let (md, files) = write(&out, &defs(), &s, &outcomes, "o.ndjson").unwrap();
        assert!(md.contains("| `a.toml` | *any rule* | 2 | 2 | 1 | 0 | 1 | 1 | 0 | 100% (2/2) | 67% (2/3) | 11.0 days | 18.2 days |"), "{md}");
        assert!(md.contains("| `b.toml` | `r1` | 2 | 1 | 0 | 1 | 0 | 0 | 0 | 0% (0/1) | 0% (0/3) | - | - |"), "{md}");
        assert!(md.contains("| `w` | won |"), "{md}");
        let mut rd = csv::Reader::from_path(&files[0]).unwrap();
        assert_eq!(rd.headers().unwrap().len(), RULES_CSV_HEADER.len());
        assert_eq!(rd.records().count(), 5);
        let png = std::fs::read(&files[2]).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000);
    }
}
