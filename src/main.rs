//! The `pqa-engine` command: parses the command line and wires the library
//! together. No logic lives here.

/// mimalloc: the engine allocates and frees many small buffers per event
/// (decoded fields, state records read from RocksDB on a cache miss), where
/// glibc's allocator spent 10-15% of the time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use pqa_engine::config::Config;
use pqa_engine::definitions::{self, Definitions, Published};
use pqa_engine::demo::{run_demo, DemoOptions};
use pqa_engine::http::{self, AppState, Health};
use pqa_engine::reload::Reloader;
use pqa_engine::replay::{replay_definitions, ReplayOptions};
use pqa_engine::shutdown::Shutdown;
use pqa_engine::sim::{produce_to_topic, write_ndjson, Progress, SimConfig, Simulator, TopicTarget};
use pqa_engine::source::RunHooks;
use pqa_engine::state::manifest::Manifest;
use pqa_engine::telemetry::Metrics;

/// Real-time Product Qualified Accounts: reads product-usage events
/// (Segment Spec JSON) from Kafka, keeps sliding-window counters per account
/// in RocksDB, and publishes a CloudEvent when an account shows it is ready
/// for a sales conversation.
#[derive(Parser)]
#[command(name = "pqa-engine", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine against Kafka until SIGTERM/SIGINT.
    ///
    /// Settings come from the shipped defaults, then --config FILE, then
    /// PQA_... environment variables (PQA_KAFKA__BOOTSTRAP_SERVERS=...),
    /// then these flags.
    Run(RunArgs),
    /// Run the same engine over a file of events, no Kafka: backtest a
    /// definition on history. Deterministic: same input and config, same
    /// output.
    Replay(ReplayArgs),
    /// Check a configuration file and list every problem with where it is.
    /// With --state-dir, also check it against a state directory: which
    /// metrics continue exactly, which are new or warming up and until when,
    /// and what the state cannot serve.
    Validate {
        /// Configuration file (TOML), layered over the shipped defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A state directory to check the definition against (read-only;
        /// the engine may be running on it).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// A shadow definition file to check as well (repeat for several).
        #[arg(long = "shadow")]
        shadows: Vec<PathBuf>,
    },
    /// Run several definitions side by side over a history file (one
    /// decode, one pass, deterministic) and compare them: DIR/pqas.csv (one
    /// row per announcement), DIR/summary.md (per definition and rule,
    /// overlap, earlier/later) and PNG plots.
    Backtest(BacktestArgs),
    /// Find new signals on history: what the accounts that raised a hand
    /// (--label SIGNAL) or that sales won (--outcomes FILE) did before,
    /// against comparable accounts that did not. Writes DIR/signals.csv
    /// (every candidate, best first), DIR/report.md with histograms, and
    /// DIR/suggested.toml (the definition with the top candidates as a
    /// signal and a rule, ready for validate and backtest).
    Analyze(AnalyzeArgs),
    /// One command, nothing to install: an embedded Kafka, a simulated
    /// product whose clock runs fast, the engine, and a live view of PQAs as
    /// they appear.
    Demo(DemoArgs),
    /// Write a simulated product-usage history (Segment Spec NDJSON) for
    /// replay, tests and benchmarks: to a file (`.gz` compressed) or straight
    /// into a Kafka topic.
    Simulate(SimulateArgs),
    /// Deliver the PQA topic's announcements where sales works: Slack, a
    /// signed webhook, HubSpot, Salesforce ([[deliver.destinations]]).
    ///
    /// A consumer of the PQA topic in its own group (deliver.group_id), so
    /// delivery never slows detection. Retries, rate limits and dead
    /// letters per destination; offsets are committed after delivery, and
    /// a redelivered announcement is not sent twice (by id).
    Deliver(DeliverArgs),
    /// Print accounts as a state directory holds them: one JSON line per
    /// account, the view of /accounts/{id} plus its members. For a state
    /// the engine is not running on (RocksDB allows one process at a time):
    /// compare runs, look into a backup.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct BacktestArgs {
    /// History: Segment-Spec NDJSON (plain or .gz); `-` reads standard input.
    #[arg(long, short)]
    input: PathBuf,
    /// A definition file, read like --config (layered over the shipped
    /// defaults; its [definition] counts). Repeat: the first is the
    /// baseline the others are compared with. Each needs its own version.
    #[arg(long = "definition", short = 'd', required = true)]
    definitions: Vec<PathBuf>,
    /// Directory for pqas.csv, summary.md and the plots (created).
    #[arg(long)]
    out: PathBuf,
    /// Lines per state commit.
    #[arg(long, default_value_t = 10_000)]
    batch_lines: usize,
    /// Outcomes from sales (NDJSON: account_id, outcome, at, and optionally
    /// pqa_event_id, rule, amount; plain or .gz): adds precision, recall and
    /// lead time per definition and rule, and the outcomes no definition saw
    /// coming (rules.csv, missed.csv, outcomes_by_rule.png, summary.md).
    #[arg(long)]
    outcomes: Option<PathBuf>,
    /// How long after an announcement an outcome that names no
    /// pqa_event_id is still taken as its answer (e.g. 90d).
    #[arg(long, default_value = "90d", requires = "outcomes")]
    attribution_window: String,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("positives").required(true).args(["label", "outcomes"])))]
struct AnalyzeArgs {
    /// Configuration file (TOML), layered over the shipped defaults: its
    /// definition's signals and metrics, its [input] field pointers.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// History: Segment-Spec NDJSON (plain or .gz); `-` reads standard input.
    #[arg(long, short)]
    input: PathBuf,
    /// Positives are the accounts where this signal of the definition
    /// happened (e.g. hand_raise), each at its first occurrence.
    #[arg(long)]
    label: Option<String>,
    /// Positives are the accounts with an outcome of --positive in this
    /// NDJSON file (account_id, outcome, at), each at the first.
    #[arg(long)]
    outcomes: Option<PathBuf>,
    /// Which outcomes make a positive (comma-separated).
    #[arg(long, default_value = "won,opportunity", requires = "outcomes")]
    positive: String,
    /// How far back before each account's moment behaviour counts.
    #[arg(long, default_value = "14d")]
    lookback: String,
    /// Directory for signals.csv, report.md, suggested.toml and the plots
    /// (created).
    #[arg(long)]
    out: PathBuf,
    /// Candidates shown by fewer accounts are listed but not ranked.
    #[arg(long, default_value_t = 5)]
    min_support: u64,
    /// How many of the top candidates the suggested signal takes at most.
    #[arg(long, default_value_t = 3)]
    suggest: usize,
    /// Seed of the negatives' moments (matched on account age).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args)]
struct InspectArgs {
    /// Configuration file (TOML) whose definition evaluates the accounts.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// RocksDB state directory.
    #[arg(long)]
    state_dir: PathBuf,
    /// Account ids.
    #[arg(required = true)]
    accounts: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Configuration file (TOML), layered over the shipped defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Consumer group id; instances with the same id share partitions.
    #[arg(long)]
    group_id: Option<String>,
    /// Input topic (repeat for several); replaces the configured list.
    #[arg(long = "input-topic")]
    input_topics: Vec<String>,
    /// Output topic for PQA CloudEvents.
    #[arg(long)]
    output_topic: Option<String>,
    /// Dead-letter topic for rejected input.
    #[arg(long)]
    dlq_topic: Option<String>,
    /// RocksDB state directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// HTTP listen address for /metrics, /healthz, /readyz, /accounts/{id}.
    #[arg(long)]
    http_addr: Option<String>,
    /// A shadow definition file (repeat for several): judged beside the
    /// live definition, announcing to the shadow topic only. Reloadable.
    #[arg(long = "shadow")]
    shadows: Vec<PathBuf>,
}

impl RunArgs {
    /// The flags as a change applied to every load of the configuration
    /// (at start and on each reload).
    fn overrides(&self) -> Box<dyn Fn(&mut Config) + Send + Sync> {
        let bootstrap = self.bootstrap_servers.clone();
        let group = self.group_id.clone();
        let inputs = self.input_topics.clone();
        let output = self.output_topic.clone();
        let dlq = self.dlq_topic.clone();
        let state = self.state_dir.clone();
        let http = self.http_addr.clone();
        Box::new(move |cfg: &mut Config| {
            if let Some(v) = &bootstrap {
                cfg.kafka.bootstrap_servers = v.clone();
            }
            if let Some(v) = &group {
                cfg.kafka.group_id = v.clone();
            }
            if !inputs.is_empty() {
                cfg.kafka.input_topics = inputs.clone();
            }
            if let Some(v) = &output {
                cfg.kafka.output_topic = v.clone();
            }
            if let Some(v) = &dlq {
                cfg.kafka.dlq_topic = v.clone();
            }
            if let Some(v) = &state {
                cfg.state.dir = v.clone();
            }
            if let Some(v) = &http {
                cfg.http.addr = v.clone();
            }
        })
    }
}

#[derive(Args)]
struct DeliverArgs {
    /// Configuration file (TOML), layered over the shipped defaults; its
    /// [deliver] section names the destinations.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// The PQA topic to read (the engine's output topic).
    #[arg(long)]
    output_topic: Option<String>,
    /// Consumer group of deliver (default pqa-deliver).
    #[arg(long)]
    group_id: Option<String>,
    /// HTTP listen address for /metrics, /healthz, /readyz.
    #[arg(long)]
    http_addr: Option<String>,
}

#[derive(Args)]
struct ReplayArgs {
    /// Configuration file (TOML), layered over the shipped defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Input NDJSON (plain or .gz); `-` reads standard input.
    #[arg(long, short)]
    input: PathBuf,
    /// Output: one CloudEvent JSON per line; `-` writes standard output.
    #[arg(long, short, default_value = "-")]
    output: PathBuf,
    /// Write rejected lines here (NDJSON with the line, reason and detail).
    #[arg(long)]
    dead_letter: Option<PathBuf>,
    /// Keep state here (resumable); by default a fresh temporary directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Lines per state commit.
    #[arg(long, default_value_t = 10_000)]
    batch_lines: usize,
    /// A shadow definition file, judged beside the live one on the same
    /// state (repeat for several); see --shadow-output.
    #[arg(long = "shadow")]
    shadows: Vec<PathBuf>,
    /// Write the shadows' announcements here (one CloudEvent per line).
    #[arg(long, requires = "shadows")]
    shadow_output: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Stop after this many seconds and exit 0 (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Number of simulated accounts.
    #[arg(long, default_value_t = 300)]
    accounts: usize,
    /// Simulated days of usage.
    #[arg(long, default_value_t = 90)]
    days: u32,
    /// Wall-clock milliseconds per simulated day.
    #[arg(long, default_value_t = 200)]
    day_ms: u64,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// HTTP address (a free port is used if it is busy).
    #[arg(long, default_value = "127.0.0.1:9464")]
    http_addr: String,
    /// `stdout`: print each announcement as the Slack message `deliver`
    /// would post (what sales would see), instead of one line.
    #[arg(long, value_name = "WHERE", value_parser = ["stdout"])]
    deliver: Option<String>,
}

#[derive(Args)]
struct SimulateArgs {
    /// Output file; `.gz` (e.g. `history.ndjson.gz`) is gzip-compressed; `-`
    /// writes standard output. Not used with --topic.
    #[arg(long, short, default_value = "-")]
    output: PathBuf,
    /// Write into this Kafka topic instead of a file (key = account id,
    /// idempotent producer). The topic must exist.
    #[arg(long, requires = "bootstrap_servers", conflicts_with = "output")]
    topic: Option<String>,
    /// Kafka bootstrap servers (host:port,...) for --topic.
    #[arg(long, requires = "topic")]
    bootstrap_servers: Option<String>,
    /// librdkafka producer property for --topic, `KEY=VALUE`; repeat for
    /// several (e.g. `-X compression.type=none`).
    #[arg(long = "producer-property", short = 'X', value_name = "KEY=VALUE", requires = "topic")]
    producer_properties: Vec<String>,
    /// Number of accounts.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Simulated days.
    #[arg(long, default_value_t = 90)]
    days: u32,
    /// Stop after this many events.
    #[arg(long)]
    max_events: Option<u64>,
    /// First simulated day (YYYY-MM-DD).
    #[arg(long, default_value = "2026-01-01")]
    start: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Report progress on stderr even when it is not a terminal (a line
    /// every 5 s); on a terminal a progress bar is always shown.
    #[arg(long)]
    progress: bool,
    /// Also write what sales made of the simulated accounts (accepted,
    /// rejected, opportunity, won, lost) as outcomes NDJSON to this file
    /// (`.gz` compressed), for `backtest --outcomes` and `analyze --outcomes`.
    #[arg(long)]
    outcomes: Option<PathBuf>,
}

/// How long mimalloc keeps memory freed before giving it back to the OS,
/// unless `MIMALLOC_PURGE_DELAY` says otherwise: 10 s rather than its 1 s.
/// With transparent huge pages (the default of most Linux distributions),
/// each page handed back and reused later is faulted in and zeroed again 2
/// MiB at a time, and the engine's batches (write batches, evicted records,
/// changelog records) free and reuse tens of MiB every second: `replay` of a
/// long tail of accounts spent 6.5 % of its engine thread zeroing pages.
/// With 10 s it ran 9 % faster on a quiet machine (a third faster with a
/// build running beside it), for about 10 MiB more at the peak. See
/// BENCHMARKS.md.
const MIMALLOC_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (the Rust
/// bindings name the options of mimalloc 2 only; checked by a test).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // SAFETY: sets a default in mimalloc's option table (a plain store; an
    // option the environment already set is kept).
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, MIMALLOC_PURGE_DELAY_MS) };
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) | Command::Deliver(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `validate --state-dir`: where each metric of each definition stands on
/// the state, or why the state cannot serve it.
fn validate_against_state(defs: &Definitions, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    if !dir.join("CURRENT").exists() {
        println!("state {}: empty; every metric counts from the first event", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let reader = pqa_engine::state::StateReader::open_read_only(dir)
        .with_context(|| format!("opening {} read-only", dir.display()))?;
    let watermark = reader.watermark_ms()?;
    let old = reader.manifest()?;
    println!(
        "state {}: schema {}, event time {}",
        dir.display(),
        reader.schema()?,
        if watermark > 0 { pqa_engine::emit::format_time_ms(watermark) } else { "none yet".into() }
    );
    if reader.needs_migration()? {
        println!(
            "  schema 1: the engine migrates it in place on start, reading its filtered counters by their position \
             in the live definition (as the documentation of schema 1 required)"
        );
    }
    if let Some(m) = &old {
        if m.bucket_seconds != defs.layout.bucket_seconds {
            eprintln!(
                "definition.bucket_seconds: is {} but the state was built with {}: windows cannot be re-cut. Keep \
                 bucket_seconds = {}, or rebuild the state under the new definition with `pqa-engine replay --config \
                 NEW.toml --input HISTORY --state-dir NEW_DIR` (or `run` with a new state.dir and kafka.group_id)",
                defs.layout.bucket_seconds, m.bucket_seconds, m.bucket_seconds
            );
            return Ok(ExitCode::from(2));
        }
    }
    let next = Manifest::next(old.as_ref(), &defs.layout, watermark);
    for (i, d) in defs.all().enumerate() {
        println!("  {} definition {}:", Definitions::role(i), d.version);
        let width = d.metrics.iter().map(|m| m.name.len()).max().unwrap_or(0);
        for st in next.status(d, old.as_ref()) {
            println!("    {:width$}  {}", st.name, st.describe());
        }
    }
    if let Some(m) = &old {
        let dropped: Vec<&str> = m
            .counters
            .iter()
            .chain(&m.signals)
            .filter(|h| !next.counters.iter().chain(&next.signals).any(|n| n.id == h.id))
            .map(|h| h.what.as_str())
            .collect();
        if !dropped.is_empty() {
            println!("  no longer used (dropped from each account on its next write): {}", dropped.join("; "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    Config::load(config.map(PathBuf::as_path)).map_err(|e| anyhow::anyhow!("{e}"))
}

fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Validate { config, state_dir, shadows } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let def = match cfg.validate() {
                Ok(def) => def,
                Err(e) => {
                    eprint!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            println!(
                "ok: definition {} with {} rules ({}), {} metrics, {} signals",
                def.version,
                def.rules.len(),
                def.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
                def.metrics.len(),
                def.signals.len()
            );
            let dir = config.as_deref().and_then(|p| p.parent());
            let defs = match definitions::load(&cfg, def, dir, &shadows) {
                Ok(d) => d,
                Err(e) => {
                    eprint!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            for s in &defs.shadows {
                println!("ok: shadow definition {} with {} rules", s.version, s.rules.len());
            }
            match state_dir {
                Some(dir) => validate_against_state(&defs, &dir),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Backtest(a) => {
            let window = pqa_engine::config::definition::parse_duration_seconds(&a.attribution_window)
                .map_err(|e| anyhow::anyhow!("--attribution-window: {e}"))?;
            if a.outcomes.as_deref() == Some(std::path::Path::new("-")) && a.input.as_os_str() == "-" {
                anyhow::bail!("--input and --outcomes cannot both read standard input");
            }
            let opts = pqa_engine::backtest::BacktestOptions {
                input: a.input,
                definitions: a.definitions,
                out: a.out,
                batch_lines: a.batch_lines.max(1),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                outcomes: a.outcomes,
                attribution_window_ms: window * 1000,
                stop: Some(Shutdown::on_signals().context("installing signal handlers")?),
            };
            let report = match pqa_engine::backtest::backtest(&opts) {
                Err(e @ pqa_engine::backtest::BacktestError::Interrupted { .. }) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(INTERRUPTED));
                }
                r => r?,
            };
            eprintln!("{}", report.describe());
            Ok(ExitCode::SUCCESS)
        }
        Command::Analyze(a) => {
            use pqa_engine::analyze::{analyze, AnalyzeOptions, Label};
            let lookback = pqa_engine::config::definition::parse_duration_seconds(&a.lookback)
                .map_err(|e| anyhow::anyhow!("--lookback: {e}"))?;
            if lookback <= 0 {
                anyhow::bail!("--lookback must be longer than 0");
            }
            let label = match (a.label, a.outcomes) {
                (Some(l), _) => Label::Signal(l),
                (None, Some(file)) => {
                    if file.as_os_str() == "-" && a.input.as_os_str() == "-" {
                        anyhow::bail!("--input and --outcomes cannot both read standard input");
                    }
                    let positive = pqa_engine::outcome::parse_kinds(&a.positive)
                        .map_err(|e| anyhow::anyhow!("--positive: {e}"))?;
                    Label::Outcomes { file, positive }
                }
                (None, None) => unreachable!("clap requires --label or --outcomes"),
            };
            let mut opts = AnalyzeOptions::new(a.input, label, a.out);
            opts.config = a.config;
            opts.lookback_seconds = lookback;
            opts.min_support = a.min_support.max(1);
            opts.suggest = a.suggest;
            opts.seed = a.seed;
            opts.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let (analysis, files) = analyze(&opts)?;
            if !analysis.outcome_problems.is_empty() {
                eprintln!("{}", analysis.outcome_problems);
            }
            eprintln!("{}", pqa_engine::analyze::describe(&analysis, &files));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(a) => {
            cap_c_allocator_arenas();
            let overrides = a.overrides();
            let mut cfg = load(a.config.as_ref())?;
            overrides(&mut cfg);
            let live = cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let config_dir = a.config.as_deref().and_then(|p| p.parent()).map(PathBuf::from);
            let defs = Arc::new(
                definitions::load(&cfg, live, config_dir.as_deref(), &a.shadows).map_err(|e| anyhow::anyhow!("{e}"))?,
            );
            let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
            let metrics = Metrics::new();
            let health = Health::new();
            let published = Published::new();
            let (reload_tx, reload_rx) = std::sync::mpsc::channel();
            let reloader = Arc::new(Reloader::new(
                a.config.clone(),
                overrides,
                a.shadows.clone(),
                cfg.clone(),
                reload_tx,
                metrics.clone(),
                published.clone(),
            ));
            let http_thread = if cfg.http.addr.is_empty() {
                None
            } else {
                let app = AppState {
                    published: published.clone(),
                    metrics: metrics.clone(),
                    health: health.clone(),
                    admin_token: (!cfg.http.admin_token.is_empty()).then(|| cfg.http.admin_token.clone()),
                    reloader: Some(reloader.clone()),
                };
                let (addr, t) = http::spawn(&cfg.http.addr, app, shutdown.clone())
                    .with_context(|| format!("binding HTTP to {}", cfg.http.addr))?;
                tracing::info!(%addr, admin = !cfg.http.admin_token.is_empty(), "http listening");
                Some(t)
            };
            reloader.clone().spawn_watcher(shutdown.clone(), Duration::from_secs(1)).context("watching for reloads")?;
            tracing::info!(
                version = %defs.live.version,
                shadows = defs.shadows.len(),
                state = %cfg.state.dir.display(),
                "pqa-engine starting (SIGHUP or a change of the config file reloads the definition)"
            );
            let hooks = RunHooks { tap: None, reloads: Some(reload_rx), published: Some(published), start_line: None };
            let result = pqa_engine::source::run_definitions(&cfg, defs, metrics, health, &shutdown, hooks);
            shutdown.trigger();
            if let Some(t) = http_thread {
                let _ = t.join();
            }
            result?;
            tracing::info!("stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliver(a) => {
            let mut cfg = load(a.config.as_ref())?;
            if let Some(v) = a.bootstrap_servers {
                cfg.kafka.bootstrap_servers = v;
            }
            if let Some(v) = a.output_topic {
                cfg.kafka.output_topic = v;
            }
            if let Some(v) = a.group_id {
                cfg.deliver.group_id = v;
            }
            if let Some(v) = a.http_addr {
                cfg.deliver.http_addr = v;
            }
            let def = cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
            pqa_engine::deliver::run(&cfg, &def, &shutdown)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect(a) => {
            let mut cfg = load(a.config.as_ref())?;
            let def = cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            if !a.state_dir.join("CURRENT").exists() {
                anyhow::bail!("no state at {}", a.state_dir.display());
            }
            // With `kafka.workers`, the other workers' states are under
            // `workers/`: an account is read from the one that holds it.
            let mut dirs = vec![a.state_dir.clone()];
            if let Ok(rd) = std::fs::read_dir(a.state_dir.join("workers")) {
                let mut more: Vec<PathBuf> =
                    rd.flatten().map(|e| e.path()).filter(|p| p.join("CURRENT").exists()).collect();
                more.sort();
                dirs.extend(more);
            }
            let mut stores = Vec::with_capacity(dirs.len());
            for dir in dirs {
                cfg.state.dir = dir;
                stores.push(
                    pqa_engine::state::Store::open(&cfg.state).with_context(|| {
                        format!("opening {} (is an engine running on it?)", cfg.state.dir.display())
                    })?,
                );
            }
            let readers: Vec<_> = stores.iter().map(|s| s.reader()).collect();
            let defs = Definitions::single(Arc::new(def));
            for id in &a.accounts {
                let reader = http::owner(&readers, id).map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
                let v = http::account_with_members(&defs, reader, id, cfg.outcomes.attribution_window_ms())
                    .map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
                println!("{}", serde_json::json!({ "account_id": id, "state": v }));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(a) => {
            let cfg = load(a.config.as_ref())?;
            let live = cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let config_dir = a.config.as_deref().and_then(|p| p.parent()).map(PathBuf::from);
            let defs =
                definitions::load(&cfg, live, config_dir.as_deref(), &a.shadows).map_err(|e| anyhow::anyhow!("{e}"))?;
            let opts = ReplayOptions {
                input: a.input,
                output: a.output,
                dead_letter: a.dead_letter,
                state_dir: a.state_dir,
                batch_lines: a.batch_lines.max(1),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                stop: Some(Shutdown::on_signals().context("installing signal handlers")?),
            };
            let mut shadow_out = match &a.shadow_output {
                Some(p) => Some(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
                )),
                None => None,
            };
            let mut write_err = None;
            let (stats, _) = replay_definitions(&cfg, Arc::new(defs), &opts, Metrics::new(), &mut |e| {
                if let (Some(w), 1..) = (shadow_out.as_mut(), e.definition) {
                    use std::io::Write;
                    if let Err(err) = w.write_all(&e.payload).and_then(|_| w.write_all(b"\n")) {
                        write_err.get_or_insert(err);
                    }
                }
            })?;
            if let Some(e) = write_err {
                return Err(anyhow::anyhow!("writing the shadow output: {e}"));
            }
            if let Some(mut w) = shadow_out {
                std::io::Write::flush(&mut w).context("writing the shadow output")?;
            }
            eprintln!(
                "{} {} lines in {:.2} s ({:.0} lines/s): {} events applied, {} dead letters, {} announcements{}",
                if stats.interrupted { "interrupted: replayed" } else { "replayed" },
                stats.lines,
                stats.elapsed.as_secs_f64(),
                stats.lines_per_second(),
                stats.events,
                stats.dead_letters,
                stats.announcements,
                match stats.skipped {
                    0 => String::new(),
                    n => format!("; {n} lines skipped, applied already in the state dir"),
                }
            );
            if stats.interrupted {
                eprintln!(
                    "the output holds what those lines announced; {}",
                    if opts.state_dir.is_some() {
                        "the state holds them: a replay with the same --state-dir resumes after them"
                    } else {
                        "the temporary state was removed"
                    }
                );
                return Ok(ExitCode::from(INTERRUPTED));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(a) => {
            let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
            let opts = DemoOptions {
                duration: a.duration.map(Duration::from_secs),
                accounts: a.accounts,
                days: a.days,
                day_ms: a.day_ms,
                seed: a.seed,
                http_addr: a.http_addr,
                deliver_stdout: a.deliver.is_some(),
            };
            let mut out = std::io::stdout();
            run_demo(&opts, &shutdown, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(a) => {
            let start = chrono::NaiveDate::parse_from_str(&a.start, "%Y-%m-%d")
                .with_context(|| format!("--start {}: expected YYYY-MM-DD", a.start))?
                .and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp();
            let mut sim =
                Simulator::new(SimConfig { seed: a.seed, accounts: a.accounts, start_unix: start, days: a.days });
            let mut progress = Progress::new(a.max_events, a.progress);
            if let Some(topic) = a.topic {
                let mut properties = Vec::new();
                for p in &a.producer_properties {
                    let (k, v) = p.split_once('=').with_context(|| format!("-X {p}: expected KEY=VALUE"))?;
                    properties.push((k.to_string(), v.to_string()));
                }
                let target = TopicTarget {
                    bootstrap_servers: a.bootstrap_servers.expect("clap: --topic requires --bootstrap-servers"),
                    topic,
                    properties,
                };
                let stats = produce_to_topic(&mut sim, &target, a.max_events, &mut progress);
                progress.finish();
                let stats = stats?;
                let secs = stats.elapsed.as_secs_f64();
                eprintln!(
                    "produced {} events ({:.1} MB of JSON) to topic {} in {:.2} s ({:.0} events/s)",
                    stats.events,
                    stats.bytes as f64 / 1e6,
                    target.topic,
                    secs,
                    stats.events as f64 / secs.max(1e-9)
                );
                // Where each partition ends, as the broker acknowledged it:
                // what a consumer must reach (scripts read this line).
                let ends: Vec<String> = stats.partition_ends.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                eprintln!("partition ends: {}", ends.join(" "));
            } else {
                let n = write_ndjson(&mut sim, &a.output, a.max_events, &mut progress);
                progress.finish();
                eprintln!("wrote {} events", n?);
            }
            if let Some(p) = &a.outcomes {
                let n = pqa_engine::sim::write_outcomes(&sim, p)?;
                eprintln!("wrote {n} outcomes to {}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The exit code of `replay` or `backtest` stopped by SIGINT or SIGTERM (as
/// a shell reports one killed by SIGINT). They stop between chunks of lines
/// (see `ReplayOptions::stop`): killed at once, a temporary state stayed in
/// the temporary directory, hundreds of MiB to GiB for a long history.
const INTERRUPTED: u8 = 130;

/// Caps the arenas of the C allocator (glibc's `malloc`, which RocksDB and
/// librdkafka use; Rust's allocations go to mimalloc) at two, unless
/// `MALLOC_ARENA_MAX` says otherwise. glibc gives threads arenas of their
/// own, up to eight per core, each keeping what was freed in it: `run`'s
/// many threads (workers, their RocksDB and Kafka clients) held 55-200 MiB
/// more at the peak with the default than with two, at the same rate
/// (BENCHMARKS.md, "Workers").
fn cap_c_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // `run` starts its threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The option set in `main` is mimalloc's purge delay: its default is
    /// 1000 ms in mimalloc 3 (no other option of the table has that value),
    /// and setting the default moves it.
    #[test]
    fn the_purge_delay_option_is_the_one_main_sets() {
        use libmimalloc_sys::{mi_option_get, mi_option_set_default};
        // SAFETY: reads and sets entries of mimalloc's option table.
        unsafe {
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(mi_option_get(super::MI_OPTION_PURGE_DELAY), 1000);
                mi_option_set_default(super::MI_OPTION_PURGE_DELAY, super::MIMALLOC_PURGE_DELAY_MS);
                assert_eq!(mi_option_get(super::MI_OPTION_PURGE_DELAY), super::MIMALLOC_PURGE_DELAY_MS);
            }
        }
    }
}
