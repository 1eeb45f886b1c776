//! What `analyze` writes: `signals.csv` (one row per candidate, best
//! first), `report.md` (the top candidates in words, the method, the
//! histograms), `suggested.toml` (the definition with the top candidates as
//! a signal and a rule) and the PNG plots.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::{fmt_num, paths, Analysis, AnalyzeOptions, Ranked, RankedKind};
use crate::config::definition::{MetricConfig, MetricKind, RuleConfig, SignalConfig, TraitChangeConfig};
use crate::config::{CompiledDefinition, Config};
use crate::report::spreadsheet_safe;

/// Candidates described in `report.md`.
const TOP_IN_REPORT: usize = 10;
/// Numbers that get a histogram.
const HISTOGRAMS: usize = 4;
/// Points of the suggested rule.
const SUGGESTED_POINTS: u32 = 30;

/// The files written.
#[derive(Debug, Clone)]
pub struct Files {
    pub signals_csv: PathBuf,
    pub report: PathBuf,
    pub suggested: PathBuf,
    pub plots: Vec<PathBuf>,
    /// The signal, metric and rule the suggestion adds, if it adds one.
    pub suggestion: Option<Suggestion>,
}

/// What `suggested.toml` adds to the definition.
#[derive(Debug, Clone)]
pub struct Suggestion {
    pub version: String,
    pub signal: String,
    pub metric: String,
    pub rule: String,
    /// The candidates it takes (their `signal` text).
    pub picked: Vec<String>,
}

/// The columns of `signals.csv`.
pub const CSV_HEADER: [&str; 20] = [
    "rank",
    "signal",
    "kind",
    "pattern",
    "in_definition",
    "positives",
    "negatives",
    "recall",
    "negative_share",
    "precision",
    "precision_low_95",
    "lift",
    "lift_low_95",
    "phi",
    "point_biserial",
    "threshold",
    "youden_j",
    "positives_after",
    "ranked",
    "examples",
];

fn f4(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn pct(x: f64) -> String {
    let p = 100.0 * x;
    if p > 0.0 && p < 1.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// Writes everything into `dir` (created).
pub fn write(
    dir: &Path,
    a: &Analysis,
    cfg: &Config,
    def: &CompiledDefinition,
    opts: &AnalyzeOptions,
) -> io::Result<Files> {
    std::fs::create_dir_all(dir)?;
    let signals_csv = dir.join("signals.csv");
    write_csv(&signals_csv, a)?;
    let mut plots = vec![dir.join("top_candidates.png")];
    plot::top_candidates(&plots[0], a)?;
    let mut histos = Vec::new();
    for r in numbers_to_plot(a) {
        let k = r.number.expect("a number");
        let p = dir.join(format!("hist_{}.png", a.numbers[k].name));
        plot::histogram(&p, a, r)?;
        histos.push((r.signal.clone(), p.clone()));
        plots.push(p);
    }
    let suggested = dir.join("suggested.toml");
    let (toml_text, suggestion) = suggested_toml(a, cfg, def);
    std::fs::write(&suggested, toml_text)?;
    let report = dir.join("report.md");
    std::fs::write(&report, markdown(a, opts, suggestion.as_ref(), &histos))?;
    Ok(Files { signals_csv, report, suggested, plots, suggestion })
}

/// The numbers that get a histogram: the best ranked, then the most
/// correlated.
fn numbers_to_plot(a: &Analysis) -> Vec<&Ranked> {
    let mut v: Vec<&Ranked> = a.ranked.iter().filter(|r| r.kind == RankedKind::Number && r.eligible).collect();
    let mut rest: Vec<&Ranked> = a.ranked.iter().filter(|r| r.kind == RankedKind::Number && !r.eligible).collect();
    rest.sort_by(|x, y| y.point_biserial.unwrap_or(0.0).abs().total_cmp(&x.point_biserial.unwrap_or(0.0).abs()));
    v.extend(rest);
    v.truncate(HISTOGRAMS);
    v
}

fn write_csv(path: &Path, a: &Analysis) -> io::Result<()> {
    let mut file = io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all("\u{feff}".as_bytes())?;
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(file);
    w.write_record(CSV_HEADER).map_err(io::Error::other)?;
    for (i, r) in a.ranked.iter().enumerate() {
        let s = &r.split;
        let cells = [
            (i + 1).to_string(),
            spreadsheet_safe(&r.signal),
            r.kind.as_str().to_string(),
            spreadsheet_safe(&r.pattern()),
            spreadsheet_safe(r.in_definition.as_deref().unwrap_or("")),
            s.a.to_string(),
            s.b.to_string(),
            f4(s.recall()),
            f4(s.negative_share()),
            f4(s.precision()),
            f4(s.precision_low()),
            f4(s.lift()),
            f4(s.lift_low()),
            f4(s.phi()),
            r.point_biserial.map(f4).unwrap_or_default(),
            r.threshold.map(|t| format!("{} {}", t.direction.symbol(), fmt_num(t.value))).unwrap_or_default(),
            r.threshold.map(|t| f4(t.j)).unwrap_or_default(),
            if r.kind == RankedKind::Number { String::new() } else { r.positives_after.to_string() },
            if r.eligible { "yes" } else { "no" }.to_string(),
            spreadsheet_safe(&r.examples.join(" ")),
        ];
        w.write_record(&cells).map_err(io::Error::other)?;
    }
    w.into_inner().map_err(|e| io::Error::other(e.to_string()))?.flush()
}

fn code(s: &str) -> String {
    let s = s.replace(['\r', '\n'], " ").replace('|', "\\|");
    if s.contains('`') {
        format!("``{s}``")
    } else {
        format!("`{s}`")
    }
}

fn days(seconds: i64) -> String {
    let d = seconds as f64 / 86_400.0;
    if d.fract() == 0.0 {
        format!("{d:.0} days")
    } else {
        format!("{d:.1} days")
    }
}

/// A window as a definition writes it (`14d`, `36h`, `90s`).
pub fn window_text(seconds: i64) -> String {
    if seconds % 86_400 == 0 {
        format!("{}d", seconds / 86_400)
    } else if seconds % 3600 == 0 {
        format!("{}h", seconds / 3600)
    } else {
        format!("{seconds}s")
    }
}

/// What a candidate is, in words.
fn what(r: &Ranked) -> String {
    match r.kind {
        RankedKind::Track => format!("tracked {}", code(&r.signal)),
        RankedKind::Page => {
            if r.signal.contains(paths::ID) && !r.examples.is_empty() {
                format!(
                    "viewed a page {} (e.g. {})",
                    code(&r.signal),
                    r.examples.iter().map(|e| code(e)).collect::<Vec<_>>().join(", ")
                )
            } else {
                format!("viewed the page {}", code(&r.signal))
            }
        }
        RankedKind::Trait => format!("a user's {} became {}", code(&r.trait_name), code(&r.trait_value)),
        RankedKind::Number => format!("had {} at its moment", code(&r.pattern())),
    }
}

fn markdown(a: &Analysis, opts: &AnalyzeOptions, s: Option<&Suggestion>, histos: &[(String, PathBuf)]) -> String {
    let mut md = String::new();
    let out = &mut md;
    let look = days(a.lookback_seconds);
    let _ = writeln!(out, "# What the `{}` accounts did before\n", a.label_short);
    let span = match (a.first_ms, a.last_ms) {
        (Some(f), Some(l)) => format!(", {} to {}", crate::emit::format_time_ms(f), crate::emit::format_time_ms(l)),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "- **History:** {} ({} lines, {} events kept{}; {} lines refused by the decoder, {} events without an account)",
        code(&a.input),
        a.lines,
        a.events,
        span,
        a.rejected,
        a.without_account
    );
    let _ = writeln!(out, "- **Definition:** {}", code(&a.version));
    let mut pos = format!(
        "- **Positives:** {} accounts with {}, each at its first one (its *moment*); median age then {:.1} days",
        a.positives, a.label, a.median_age_days.0
    );
    if a.positives_without_history > 0 {
        let _ = write!(pos, "; {} of them did nothing in the {look} before", a.positives_without_history);
    }
    if a.positives_not_in_history > 0 {
        let _ =
            write!(pos, "; {} more accounts with such an outcome are not in the history", a.positives_not_in_history);
    }
    let _ = writeln!(out, "{pos}");
    let _ = writeln!(
        out,
        "- **Negatives:** the other {} accounts, each at a comparable moment: matched on account age (median {:.1} days), at one of their own events (see [Method](#method))",
        a.negatives, a.median_age_days.1
    );
    let base = a.positives as f64 / (a.positives + a.negatives).max(1) as f64;
    let _ = writeln!(out, "- **Base rate:** {} of the accounts are positive", pct(base));
    let _ = writeln!(out, "- **Lookback:** what happened in the {look} strictly before each moment");
    let _ = writeln!(
        out,
        "- **Ranking:** by the precision an account showing the behaviour has *at least* (the lower bound of its 95% Wilson interval), among behaviours shown by {} accounts or more",
        a.min_support
    );
    let _ = writeln!(
        out,
        "- **Files:** `signals.csv` (every candidate, best first), `suggested.toml`, `top_candidates.png`{}\n",
        histos
            .iter()
            .map(|(_, p)| format!(", `{}`", p.file_name().unwrap_or_default().to_string_lossy()))
            .collect::<String>()
    );

    let _ = writeln!(out, "## Top candidates\n");
    let top: Vec<&Ranked> = a.ranked.iter().filter(|r| r.eligible).take(TOP_IN_REPORT).collect();
    if top.is_empty() {
        let _ = writeln!(out, "No behaviour was shown by {} accounts or more before the moments.\n", a.min_support);
    } else {
        let _ = writeln!(
            out,
            "![The top candidates: share of positives and of negatives that showed each](top_candidates.png)\n"
        );
    }
    for (i, r) in top.iter().enumerate() {
        let sp = &r.split;
        let mut line = format!(
            "{}. **{}** ({}). {} of the {} positives ({}) {}, against {} of the {} negatives ({}). ",
            i + 1,
            if r.kind == RankedKind::Number { r.pattern() } else { r.signal.clone() }.replace('|', "\\|"),
            r.kind.as_str(),
            sp.a,
            sp.pos,
            pct(sp.recall()),
            if r.kind == RankedKind::Number {
                "had it at their moment".to_string()
            } else {
                format!("did in the {look} before their moment")
            },
            sp.b,
            sp.neg,
            pct(sp.negative_share())
        );
        let _ = write!(
            line,
            "An account that {} was a positive {} of the time (at least {} with 95% confidence): {:.1}x the base rate (at least {:.1}x); phi {:.2}.",
            what(r),
            pct(sp.precision()),
            pct(sp.precision_low()),
            sp.lift(),
            sp.lift_low(),
            sp.phi()
        );
        if let Some(rpb) = r.point_biserial {
            let _ = write!(line, " Point-biserial correlation {rpb:.2}.");
        }
        if let Some(sig) = &r.in_definition {
            let _ = write!(line, " Already matched by the definition's signal {}.", code(sig));
        }
        if let Some((_, p)) = histos.iter().find(|(n, _)| *n == r.signal) {
            let f = p.file_name().unwrap_or_default().to_string_lossy();
            let _ = write!(line, " See `{f}`.");
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out);

    // What followed the label.
    let mut after: Vec<&Ranked> = a
        .ranked
        .iter()
        .filter(|r| {
            r.kind != RankedKind::Number
                && r.positives_after >= 3
                && r.positives_after as f64 >= 0.2 * a.positives as f64
                && r.positives_after >= 3 * r.split.a.max(1)
                && r.positives_after as f64 / a.positives.max(1) as f64 >= 3.0 * r.split.negative_share()
        })
        .collect();
    after.sort_by(|x, y| y.positives_after.cmp(&x.positives_after).then(x.signal.cmp(&y.signal)));
    if !after.is_empty() {
        let _ = writeln!(out, "## What followed the label (not counted)\n");
        let _ = writeln!(
            out,
            "Positives did these often in the {look} *after* their moment, rarely or never before. Only what happened before a moment counts, so they do not rank: they are what the label led to, not what led to it.\n"
        );
        for r in after.iter().take(5) {
            let _ = writeln!(
                out,
                "- {} ({}): {} of {} positives after, {} before",
                code(&r.signal),
                r.kind.as_str(),
                r.positives_after,
                a.positives,
                r.split.a
            );
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Suggested definition\n");
    match s {
        Some(s) => {
            if let Some(x) = &a.suggested {
                let sp = &x.split;
                let _ = writeln!(
                    out,
                    "The signal takes the best candidate that is not a number, not a signal of the definition already, and better than the base rate even at the low end of its interval; then each next one, in rank order, that raises the signal's F1 score (the harmonic mean of its recall and of its precision at the low end of its interval), so that reaching a few more positives never floods sales with negatives. As a whole, {} of the {} positives ({}) showed it before their moment, and {} of the {} negatives ({}): precision {} (at least {}).\n",
                    sp.a,
                    sp.pos,
                    pct(sp.recall()),
                    sp.b,
                    sp.neg,
                    pct(sp.negative_share()),
                    pct(sp.precision()),
                    pct(sp.precision_low())
                );
            }
            let _ = writeln!(
                out,
                "`suggested.toml` is the definition with version {} and, added, the signal {} ({}), the metric {} (its occurrences in the last {look}) and the rule {} (`{} >= 1`, {} points).\n",
                code(&s.version),
                code(&s.signal),
                s.picked.iter().map(|p| code(p)).collect::<Vec<_>>().join(", "),
                code(&s.metric),
                code(&s.rule),
                s.metric,
                SUGGESTED_POINTS
            );
        }
        None => {
            let _ = writeln!(
                out,
                "No behaviour that the definition does not already have beat the base rate at the low end of its interval, so `suggested.toml` is the definition unchanged but for its version.\n"
            );
        }
    }
    let dir = opts.out.display();
    let _ = writeln!(out, "```sh");
    let _ = writeln!(out, "pqa-engine validate --config {dir}/suggested.toml");
    let _ = writeln!(out, "pqa-engine backtest -i {} -d live.toml -d {dir}/suggested.toml --out /tmp/bt", a.input);
    let _ = writeln!(out, "```\n");
    let _ = writeln!(
        out,
        "Then run it as a shadow (`[[shadow]] file = \"suggested.toml\"` in the config, or `run --shadow`), and promote it with a reload when sales agree.\n"
    );
    if !a.free_text_traits.is_empty() {
        let _ = writeln!(
            out,
            "Traits left out as free text (more than {} values): {}.\n",
            super::MAX_TRAIT_VALUES,
            a.free_text_traits.iter().map(|(n, k)| format!("{} ({k})", code(n))).collect::<Vec<_>>().join(", ")
        );
    }

    let _ = writeln!(out, "## Method\n");
    let _ = writeln!(
        out,
        "- **Moments.** A positive's moment is its first label. A negative's moment is matched on account age: an age is drawn from the positives' ages at their moments (at random, seeded by the account id and seed {}, so the same history gives the same draw), and the moment is the negative's first usage event at or after that age, or its last event if it went quiet before. Positives are active at their label; so is each negative at its moment, and at the same point of its life. Neither being active nor being new then sets the groups apart.",
        a.seed
    );
    let _ = writeln!(
        out,
        "- **Strictly before.** Only events in the {look} before each moment count, never the moment itself or after: behaviour that follows the label cannot rank."
    );
    let _ = writeln!(
        out,
        "- **Candidates.** Every `track` event name; every page path, with ids and numbers collapsed (`/boards/b-12` is `/boards/:id`); every value an `identify` changed a user trait to; and the definition's metrics and derived numbers at the moment, computed by the engine's own code over the account's state rebuilt from the history as of its last event before the moment."
    );
    let _ = writeln!(
        out,
        "- **Measures.** Of a yes/no candidate: positives and negatives that showed it, *recall* (share of positives), *precision* (share of those who showed it that are positive), *lift* (precision over the base rate) and *phi* (its correlation with being positive). A number is split at the threshold that best separates the groups (Youden's J: share of positives past it minus share of negatives), which makes it a yes/no candidate too; it also gets its point-biserial correlation."
    );
    let _ = writeln!(
        out,
        "- **Ranking.** By the lower bound of the 95% Wilson score interval of the precision: the precision an account showing the behaviour has at least, given how few accounts may show it. Three accounts out of three prove less than 40 out of 50, and rank so. Candidates shown by fewer than {} accounts are listed last in `signals.csv` (`ranked` = `no`).",
        a.min_support
    );
    let _ = writeln!(
        out,
        "- **One window per account.** Each negative is looked at in one window of its life; a rule watches every day of it. A behaviour some negatives show once in a while fires a rule on more of them than the precision here suggests: the backtest says how many."
    );
    let _ = writeln!(
        out,
        "- **Correlation, not cause.** A behaviour that precedes the label may share a cause with it. Backtest the suggestion and run it as a shadow before sales hears of it."
    );
    md
}

/// `suggested.toml`: the definition, a new version, and the top
/// candidates as one signal (any of them), a metric counting it over the
/// lookback, and a rule on that metric.
fn suggested_toml(a: &Analysis, cfg: &Config, def: &CompiledDefinition) -> (String, Option<Suggestion>) {
    let mut d = cfg.definition.clone();
    let stem: String = a
        .label_short
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect::<String>()
        .split('_')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    // Named after what it learnt from, so that the suggestions of two
    // analyses can be backtested side by side.
    let version = format!("{}-{stem}", d.version);
    d.version = version.clone();
    let picked: Vec<&Ranked> =
        a.suggested.as_ref().map(|x| x.picked.iter().map(|&i| &a.ranked[i]).collect()).unwrap_or_default();
    let look = window_text(a.lookback_seconds);
    let mut header = format!(
        "# Suggested by `pqa-engine analyze` from {} ({} positives: accounts with {};\n# {} negatives matched on account age; lookback {look}).\n",
        a.input, a.positives, a.label.replace('\n', " "), a.negatives
    );
    let input_changed =
        serde_json::to_value(&cfg.input).ok() != serde_json::to_value(&Config::default_config().input).ok();
    let suggestion = if picked.is_empty() {
        header.push_str("# No candidate beat the base rate at the low end of its interval: the definition is unchanged\n# but for its version.\n");
        None
    } else {
        let taken = |n: &str| {
            def.signals.iter().any(|s| s.name == n)
                || def.metrics.iter().any(|m| m.name == n)
                || def.derived.iter().any(|x| x.0 == n)
                || def.rules.iter().any(|r| r.name == n)
        };
        let unique = |base: String| {
            let mut n = base.clone();
            let mut k = 2;
            while taken(&n) {
                n = format!("{base}_{k}");
                k += 1;
            }
            n
        };
        let signal = unique(format!("precedes_{stem}"));
        let metric = unique(format!("{signal}_{look}"));
        let rule = unique(format!("like_{stem}"));
        let tracks: Vec<String> =
            picked.iter().filter(|r| r.kind == RankedKind::Track).map(|r| r.signal.clone()).collect();
        let pages: Vec<&str> =
            picked.iter().filter(|r| r.kind == RankedKind::Page).map(|r| r.signal.as_str()).collect();
        let trait_change = picked
            .iter()
            .find(|r| r.kind == RankedKind::Trait)
            .map(|r| TraitChangeConfig { name: r.trait_name.clone(), becomes: vec![r.trait_value.clone()] });
        let names: Vec<String> = picked.iter().map(|r| r.signal.clone()).collect();
        d.signals.push(SignalConfig {
            name: signal.clone(),
            description: format!("did what {} accounts did before: {}", a.label_short, names.join(", ")),
            track_events: tracks,
            page_path: (!pages.is_empty()).then(|| paths::patterns_regex(&pages)),
            trait_change,
        });
        d.metrics.push(MetricConfig {
            name: metric.clone(),
            kind: MetricKind::Signal,
            window: look.clone(),
            offset: None,
            events: Vec::new(),
            signal: Some(signal.clone()),
        });
        d.rules.push(RuleConfig {
            name: rule.clone(),
            description: format!(
                "in the last {look}, did what {} accounts did before (found by pqa-engine analyze)",
                a.label_short
            ),
            when: format!("{metric} >= 1"),
            points: SUGGESTED_POINTS,
            bypass_budget: false,
        });
        let _ =
            writeln!(header, "# Added: signal `{signal}` ({}), metric `{metric}`, rule `{rule}`.", names.join(", "));
        if let Some(x) = &a.suggested {
            let sp = &x.split;
            let _ = writeln!(
                header,
                "# The signal as a whole: {} of {} positives, {} of {} negatives; precision {} (at least {}).",
                sp.a,
                sp.pos,
                sp.b,
                sp.neg,
                pct(sp.precision()),
                pct(sp.precision_low())
            );
        }
        for r in &picked {
            let sp = &r.split;
            let _ = writeln!(
                header,
                "#   {}: {} of {} positives, {} of {} negatives; precision {} (at least {}), {:.1}x the base rate",
                r.signal,
                sp.a,
                sp.pos,
                sp.b,
                sp.neg,
                pct(sp.precision()),
                pct(sp.precision_low()),
                sp.lift()
            );
        }
        Some(Suggestion { version: version.clone(), signal, metric, rule, picked: names })
    };
    header.push_str(
        "# A whole [definition] (lists are replaced, not merged, when layered over the shipped one):\n\
         #   pqa-engine validate --config suggested.toml\n\
         #   pqa-engine backtest -i HISTORY -d live.toml -d suggested.toml --out DIR\n\
         # and as a shadow: [[shadow]] file = \"suggested.toml\", or run --shadow suggested.toml.\n\n",
    );
    #[derive(serde::Serialize)]
    struct File<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        input: Option<&'a crate::config::InputConfig>,
        definition: &'a crate::config::DefinitionConfig,
    }
    let body = toml::to_string(&File { input: input_changed.then_some(&cfg.input), definition: &d })
        .map(|t| {
            // `events = []` and `track_events = []` say nothing (an empty
            // list is their default): left out, the file reads like one
            // written by hand.
            t.lines()
                .filter(|l| *l != "events = []" && *l != "track_events = []")
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        })
        .unwrap_or_else(|e| format!("# the definition could not be written as TOML: {e}\n"));
    (header + &body, suggestion)
}

mod plot {
    //! The plots of the report, drawn with the backtest report's helpers.

    use std::io;
    use std::path::Path;

    use plotters::prelude::*;

    use super::super::{fmt_num, Analysis, Ranked};
    use crate::report::plot::{self as p, Align, Frame, Label, INK, MUTED, PLOT_BOTTOM, PLOT_LEFT, PLOT_RIGHT};

    fn shorten(s: &str, px: f32, size: f32) -> String {
        if p::text_width(s, size) <= px {
            return s.to_string();
        }
        let mut t: String = s.to_string();
        while !t.is_empty() && p::text_width(&format!("{t}…"), size) > px {
            t.pop();
        }
        format!("{t}…")
    }

    /// Horizontal bars: per top candidate, the share of positives and of
    /// negatives that showed it.
    pub fn top_candidates(path: &Path, a: &Analysis) -> io::Result<()> {
        let top: Vec<&Ranked> = a.ranked.iter().filter(|r| r.eligible).take(10).collect();
        let title = format!("Before the moment: top candidates for {}", a.label_short);
        p::render(path, |root, labels| {
            let entries = vec![
                (format!("positives ({})", a.positives), p::color(0)),
                (format!("negatives ({})", a.negatives), p::color(1)),
            ];
            let top_y = p::header(root, labels, &title, &entries)?;
            let label_w = 300;
            let x0 = PLOT_LEFT - 60 + label_w;
            let x1 = PLOT_RIGHT - 40;
            let bottom = PLOT_BOTTOM;
            let xs = |share: f64| x0 + ((x1 - x0) as f64 * share).round() as i32;
            for k in 0..=5 {
                let x = xs(k as f64 / 5.0);
                root.draw(&PathElement::new(vec![(x, top_y), (x, bottom)], p::GRID)).map_err(p::err)?;
                labels
                    .push(Label::new(format!("{}%", k * 20), (x, bottom + 6), 14.0).align(Align::Center, Align::Start));
            }
            labels.push(
                Label::new(
                    "Share of the group that showed it before its moment (numbers: had it at the moment)",
                    ((x0 + x1) / 2, bottom + 48),
                    17.0,
                )
                .align(Align::Center, Align::End),
            );
            if top.is_empty() {
                labels.push(
                    Label::new("No candidate reached the minimum support", ((x0 + x1) / 2, (top_y + bottom) / 2), 24.0)
                        .align(Align::Center, Align::Center)
                        .rgb(MUTED),
                );
                return Ok(());
            }
            let row = ((bottom - top_y) as f64 / top.len() as f64).min(60.0);
            for (i, r) in top.iter().enumerate() {
                let y = top_y + (row * i as f64) as i32;
                let bar = ((row - 10.0) / 2.0).clamp(4.0, 18.0) as i32;
                let text = match &r.threshold {
                    Some(t) => format!("{} {} {}", r.signal, t.direction.symbol(), fmt_num(t.value)),
                    None => r.signal.clone(),
                };
                let text = format!("{}. {}", i + 1, shorten(&text, (label_w - 30) as f32, 14.0));
                labels.push(Label::new(text, (x0 - 8, y + bar + 3), 14.0).align(Align::End, Align::Center).rgb(INK));
                for (k, share) in [r.split.recall(), r.split.negative_share()].into_iter().enumerate() {
                    let yy = y + 3 + k as i32 * (bar + 1);
                    let w = xs(share).max(x0 + 1);
                    root.draw(&Rectangle::new([(x0, yy), (w, yy + bar)], p::color(k).filled())).map_err(p::err)?;
                    labels.push(
                        Label::new(super::pct(share), (w + 4, yy + bar / 2), 12.0)
                            .align(Align::Start, Align::Center)
                            .rgb(MUTED),
                    );
                }
            }
            root.draw(&PathElement::new(vec![(x0, top_y), (x0, bottom)], BLACK)).map_err(p::err)?;
            Ok(())
        })
    }

    /// A number's values at the moments: share of positives and of
    /// negatives per bin, the threshold marked.
    pub fn histogram(path: &Path, a: &Analysis, r: &Ranked) -> io::Result<()> {
        let nv = &a.numbers[r.number.expect("a number")];
        let all: Vec<f64> = nv.positives.iter().chain(&nv.negatives).copied().filter(|v| v.is_finite()).collect();
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
        let mut sorted = all.clone();
        sorted.sort_by(f64::total_cmp);
        // Up to the 99th percentile: a few huge values would squash the rest.
        let hi = sorted
            .get(((sorted.len() as f64 * 0.99) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0);
        let hi = hi.max(r.threshold.map_or(lo, |t| t.value));
        let integer = all.iter().all(|v| v.fract() == 0.0);
        let (edges, names): (Vec<f64>, Vec<String>) = if !lo.is_finite() {
            (vec![0.0, 1.0], vec!["0".into()])
        } else if integer && hi - lo <= 24.0 {
            let n = (hi - lo) as usize + 1;
            ((0..=n).map(|i| lo + i as f64).collect(), (0..n).map(|i| fmt_num(lo + i as f64)).collect())
        } else {
            // About 20 bins of a round width (1, 2, 2.5 or 5 times a power
            // of ten), each named by its range.
            let raw = ((hi - lo) / 20.0).max(if integer { 1.0 } else { 1e-9 });
            let mag = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|&w| w >= raw).unwrap_or(10.0 * mag);
            let start = (lo / step).floor() * step;
            let n = (((hi - start) / step).floor() as usize + 1).clamp(1, 40);
            let e: Vec<f64> = (0..=n).map(|i| start + i as f64 * step).collect();
            let names = (0..n).map(|i| format!("{}-{}", fmt_num(e[i]), fmt_num(e[i + 1]))).collect();
            (e, names)
        };
        let bins = names.len();
        let bin_of = |v: f64| -> usize {
            let i = edges.partition_point(|&e| e <= v);
            i.saturating_sub(1).min(bins - 1)
        };
        let mut counts = [vec![0u64; bins], vec![0u64; bins]];
        for (g, vals) in [&nv.positives, &nv.negatives].into_iter().enumerate() {
            for &v in vals.iter().filter(|v| v.is_finite()) {
                counts[g][bin_of(v)] += 1;
            }
        }
        let totals = [nv.positives.len().max(1) as f64, nv.negatives.len().max(1) as f64];
        let shares: Vec<Vec<f64>> =
            (0..2).map(|g| counts[g].iter().map(|&c| 100.0 * c as f64 / totals[g]).collect()).collect();
        let max = shares.iter().flatten().copied().fold(0.0, f64::max).ceil() as u64;
        let title = format!("{} at the moment", nv.name);
        p::render(path, |root, labels| {
            let mut entries = vec![
                (format!("positives ({})", nv.positives.len()), p::color(0)),
                (format!("negatives ({})", nv.negatives.len()), p::color(1)),
            ];
            if let Some(t) = &r.threshold {
                entries.push((
                    format!("best threshold: {} {}", t.direction.symbol(), fmt_num(t.value)),
                    RGBColor(0, 0, 0),
                ));
            }
            let top = p::header(root, labels, &title, &entries)?;
            let label = |i: usize| vec![names[i].clone()];
            let x_title = if integer && edges.len() > 1 && edges[1] - edges[0] == 1.0 {
                format!("{} (one bar per value; the last bar holds everything above)", nv.name)
            } else {
                format!("{} (the last bin holds everything above)", nv.name)
            };
            let f = Frame::draw(root, labels, top, bins, max.max(1), &x_title, "Share of the group (%)", &label)?;
            let slot = 0.84 / 2.0;
            for (g, s) in shares.iter().enumerate() {
                for (i, &v) in s.iter().enumerate() {
                    if v <= 0.0 {
                        continue;
                    }
                    let xa = f.x(i as f64 + 0.08 + g as f64 * slot);
                    let xb = f.x(i as f64 + 0.08 + (g + 1) as f64 * slot) - 1;
                    let y = f.y(v);
                    root.draw(&Rectangle::new(
                        [(xa, y.min(PLOT_BOTTOM - 1)), (xb.max(xa + 1), PLOT_BOTTOM)],
                        p::color(g).filled(),
                    ))
                    .map_err(p::err)?;
                }
            }
            if let Some(t) = &r.threshold {
                // At the left edge of the threshold's bin for >=, the right
                // edge for <=.
                let b = bin_of(t.value);
                let per_value = integer && edges.len() > 1 && edges[1] - edges[0] == 1.0;
                let x = if per_value {
                    // Between the bars of the values on either side.
                    match t.direction {
                        super::super::stats::Direction::AtLeast => f.x(b as f64),
                        super::super::stats::Direction::AtMost => f.x(b as f64 + 1.0),
                    }
                } else {
                    let (lo, hi) = (edges[b], edges[b + 1]);
                    f.x(b as f64 + ((t.value - lo) / (hi - lo).max(1e-12)).clamp(0.0, 1.0))
                };
                let mut y = top;
                while y < PLOT_BOTTOM {
                    root.draw(&PathElement::new(vec![(x, y), (x, (y + 8).min(PLOT_BOTTOM))], BLACK.stroke_width(2)))
                        .map_err(p::err)?;
                    y += 14;
                }
            }
            Ok(())
        })
    }
}
