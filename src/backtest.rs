//! Backtest: several definitions side by side over one history, one decode,
//! one pass, with the same engine code as `run` and `replay`: the first
//! definition runs as the live one, the others as its shadows (each with its
//! own cooldown bookkeeping), so each one's announcements are what `replay`
//! of it alone gives. The report ([`crate::report`]) compares them.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors};
use crate::definitions::{load_definition_file, Definitions};
use crate::outcome::read_outcomes;
use crate::outcome_report::{self, OutcomeStats};
use crate::replay::{replay_definitions, ReplayError, ReplayOptions};
use crate::report::{self, DefinitionInfo, HistoryInfo, ReportFiles, Row};
use crate::telemetry::Metrics;

/// What to backtest.
#[derive(Debug, Clone)]
pub struct BacktestOptions {
    /// Segment-Spec NDJSON (plain or gzip); `-` is standard input.
    pub input: PathBuf,
    /// Definition files, read like `--config`; the first is the baseline.
    pub definitions: Vec<PathBuf>,
    /// Where the report goes (created).
    pub out: PathBuf,
    pub batch_lines: usize,
    pub progress: bool,
    /// Outcomes (NDJSON, see [`crate::outcome`]) to judge each definition
    /// by: precision, recall and lead time per rule.
    pub outcomes: Option<PathBuf>,
    /// How long after an announcement an outcome without an event id is
    /// taken as its answer.
    pub attribution_window_ms: i64,
    /// Stops the backtest early, with no report (see
    /// [`ReplayOptions::stop`]).
    pub stop: Option<crate::shutdown::Shutdown>,
}

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("cannot write the report to {path}: {source}")]
    Report { path: String, source: std::io::Error },
    #[error("announcement of {version} could not be read back: {detail}")]
    Row { version: String, detail: String },
    #[error("cannot read the outcomes {path}: {source}")]
    Outcomes { path: String, source: std::io::Error },
    #[error("interrupted after {lines} lines of the history: no report written")]
    Interrupted { lines: u64 },
}

/// What a backtest did.
#[derive(Debug)]
pub struct BacktestReport {
    pub files: ReportFiles,
    pub lines: u64,
    pub dead_letters: u64,
    pub seconds: f64,
    /// Per definition: version, announcements (all types), events only it
    /// would have dead-lettered as too late when run alone.
    pub definitions: Vec<(String, u64, u64)>,
    /// With `--outcomes`: what they said, and the lines that were not
    /// outcomes (for the terminal).
    pub outcomes: Option<(OutcomeStats, String)>,
}

impl BacktestReport {
    /// A few lines for the terminal.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "backtested {} lines in {:.2} s ({:.0} lines/s), {} dead letters\n",
            self.lines,
            self.seconds,
            self.lines as f64 / self.seconds.max(1e-9),
            self.dead_letters
        );
        for (v, n, late) in &self.definitions {
            s.push_str(&format!("  {v}: {n} announcements"));
            if *late > 0 {
                s.push_str(&format!(
                    " ({late} events were inside another definition's longer windows but too late for this one's: \
                     replayed alone it would have dead-lettered them, and may announce differently)"
                ));
            }
            s.push('\n');
        }
        if let Some((o, bad)) = &self.outcomes {
            for (d, (v, _, _)) in self.definitions.iter().enumerate() {
                if let Some(any) = o.per_def.get(d).and_then(|x| x.rules.first()) {
                    let f = |x: Option<f64>| x.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * p));
                    s.push_str(&format!(
                        "  {v}: precision {} of {} answered announcements, recall {} of {} accounts with an opportunity or a win\n",
                        f(any.tally.precision()),
                        any.tally.answered,
                        f(any.recall()),
                        any.positive_accounts
                    ));
                }
            }
            s.push_str(&format!("  outcomes no definition saw coming: {}\n", o.missed.len()));
            if !bad.is_empty() {
                s.push_str(bad);
                s.push('\n');
            }
        }
        s.push_str(&format!("  report: {}\n  rows:   {}", self.files.summary.display(), self.files.csv.display()));
        for p in &self.files.plots {
            s.push_str(&format!("\n  plot:   {}", p.display()));
        }
        s
    }
}

/// Runs the backtest and writes the report.
pub fn backtest(opts: &BacktestOptions) -> Result<BacktestReport, BacktestError> {
    let first = opts.definitions.first().ok_or_else(|| {
        ConfigErrors(vec![crate::config::ConfigError::new("--definition", "at least one definition file is needed")])
    })?;
    // The first file's full configuration says how to read the input.
    let cfg = Config::load_file_only(first)?;
    let mut compiled = Vec::new();
    let mut errs = Vec::new();
    for f in &opts.definitions {
        match load_definition_file(f) {
            Ok(d) => compiled.push(d),
            Err(mut e) => errs.append(&mut e.0),
        }
    }
    if !errs.is_empty() {
        return Err(ConfigErrors(errs).into());
    }
    let labels: Vec<String> = opts.definitions.iter().map(|p| p.display().to_string()).collect();
    let infos: Vec<DefinitionInfo> = compiled
        .iter()
        .zip(&labels)
        .map(|(d, l)| DefinitionInfo {
            version: d.version.clone(),
            label: l.clone(),
            rules: d.rules.iter().map(|r| r.name.clone()).collect(),
            rule_inputs: d.rules.iter().map(|r| (r.name.clone(), r.references.clone())).collect(),
        })
        .collect();
    // Outcomes are read first: a missing file should not wait for the pass.
    let outcomes = match &opts.outcomes {
        Some(p) => {
            Some(read_outcomes(p).map_err(|e| BacktestError::Outcomes { path: p.display().to_string(), source: e })?)
        }
        None => None,
    };
    let mut iter = compiled.into_iter();
    let live = iter.next().expect("one definition at least");
    let defs = Definitions::new(live, iter.collect(), labels.clone()).map_err(|mut errs| {
        for e in &mut errs {
            e.message.push_str(" (backtest: give each --definition its own version)");
        }
        ConfigErrors(errs)
    })?;
    let replay_opts = ReplayOptions {
        input: opts.input.clone(),
        output: PathBuf::new(),
        dead_letter: None,
        state_dir: None,
        batch_lines: opts.batch_lines,
        progress: opts.progress,
        stop: opts.stop.clone(),
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut bad: Option<BacktestError> = None;
    let (stats, summary) = replay_definitions(&cfg, Arc::new(defs), &replay_opts, Metrics::new(), &mut |e| {
        match Row::from_cloudevent_explained(e.definition, &e.payload, &infos[e.definition].rule_inputs) {
            Ok(r) => rows.push(r),
            Err(detail) => {
                bad.get_or_insert(BacktestError::Row { version: infos[e.definition].version.clone(), detail });
            }
        }
    })?;
    if let Some(e) = bad {
        return Err(e);
    }
    if stats.interrupted {
        return Err(BacktestError::Interrupted { lines: stats.lines });
    }
    let history = HistoryInfo {
        events: stats.events,
        first_ms: summary.first_ms,
        last_ms: summary.last_ms,
        input: opts.input.display().to_string(),
    };
    let report_err = |e| BacktestError::Report { path: opts.out.display().to_string(), source: e };
    let mut files = report::write_report(&opts.out, &infos, &history, &rows).map_err(report_err)?;
    let outcomes = match (&outcomes, &opts.outcomes) {
        (Some(file), Some(path)) => {
            let name = path.display().to_string();
            let stats = outcome_report::compute(&infos, &rows, file, &history, opts.attribution_window_ms);
            let (md, written) = outcome_report::write(&opts.out, &infos, &stats, file, &name).map_err(report_err)?;
            // The outcomes section goes after the comparison of definitions.
            let mut summary = std::fs::read_to_string(&files.summary).map_err(report_err)?;
            summary = summary.replacen(
                "- **Files:** `pqas.csv` (one row per announcement)",
                "- **Files:** `pqas.csv` (one row per announcement), `rules.csv` and `missed.csv` (outcomes), `outcomes_by_rule.png`",
                1,
            );
            summary.push('\n');
            summary.push_str(&md);
            std::fs::write(&files.summary, summary).map_err(report_err)?;
            files.plots.extend(written.into_iter().filter(|p| p.extension().is_some_and(|e| e == "png")));
            Some((stats, file.describe_bad(&name, 10)))
        }
        _ => None,
    };
    let definitions = infos
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (d.version.clone(), rows.iter().filter(|r| r.definition == i).count() as u64, summary.late_for[i])
        })
        .collect();
    Ok(BacktestReport {
        files,
        lines: stats.lines,
        dead_letters: stats.dead_letters,
        seconds: stats.elapsed.as_secs_f64(),
        definitions,
        outcomes,
    })
}
