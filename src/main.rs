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
use pqa_engine::demo::{run_demo, DemoOptions};
use pqa_engine::http::{self, AppState, Health};
use pqa_engine::replay::{replay, ReplayOptions};
use pqa_engine::shutdown::Shutdown;
use pqa_engine::sim::{produce_to_topic, write_ndjson, Progress, SimConfig, Simulator, TopicTarget};
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
    Validate {
        /// Configuration file (TOML), layered over the shipped defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// One command, nothing to install: an embedded Kafka, a simulated
    /// product whose clock runs fast, the engine, and a live view of PQAs as
    /// they appear.
    Demo(DemoArgs),
    /// Write a simulated product-usage history (Segment Spec NDJSON) for
    /// replay, tests and benchmarks: to a file (`.gz` compressed) or straight
    /// into a Kafka topic.
    Simulate(SimulateArgs),
    /// Print accounts as a state directory holds them: one JSON line per
    /// account, the view of /accounts/{id} plus its members. For a state
    /// the engine is not running on (RocksDB allows one process at a time):
    /// compare runs, look into a backup.
    Inspect(InspectArgs),
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) => "info",
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

fn load(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    Config::load(config.map(PathBuf::as_path)).map_err(|e| anyhow::anyhow!("{e}"))
}

fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Validate { config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            match cfg.validate() {
                Ok(def) => {
                    println!(
                        "ok: definition {} with {} rules ({}), {} metrics, {} signals",
                        def.version,
                        def.rules.len(),
                        def.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
                        def.metrics.len(),
                        def.signals.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprint!("{e}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Run(a) => {
            let mut cfg = load(a.config.as_ref())?;
            if let Some(v) = a.bootstrap_servers {
                cfg.kafka.bootstrap_servers = v;
            }
            if let Some(v) = a.group_id {
                cfg.kafka.group_id = v;
            }
            if !a.input_topics.is_empty() {
                cfg.kafka.input_topics = a.input_topics;
            }
            if let Some(v) = a.output_topic {
                cfg.kafka.output_topic = v;
            }
            if let Some(v) = a.dlq_topic {
                cfg.kafka.dlq_topic = v;
            }
            if let Some(v) = a.state_dir {
                cfg.state.dir = v;
            }
            if let Some(v) = a.http_addr {
                cfg.http.addr = v;
            }
            let def = Arc::new(cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?);
            let shutdown = Shutdown::new();
            shutdown.install_signal_handlers().context("installing signal handlers")?;
            let metrics = Metrics::new();
            let health = Health::new();
            let http_thread = if cfg.http.addr.is_empty() {
                None
            } else {
                let app = AppState { def: def.clone(), metrics: metrics.clone(), health: health.clone() };
                let (addr, t) = http::spawn(&cfg.http.addr, app, shutdown.clone())
                    .with_context(|| format!("binding HTTP to {}", cfg.http.addr))?;
                tracing::info!(%addr, "http listening");
                Some(t)
            };
            tracing::info!(version = %def.version, state = %cfg.state.dir.display(), "pqa-engine starting");
            let result = pqa_engine::source::run(&cfg, def, metrics, health, &shutdown);
            shutdown.trigger();
            if let Some(t) = http_thread {
                let _ = t.join();
            }
            result?;
            tracing::info!("stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect(a) => {
            let mut cfg = load(a.config.as_ref())?;
            let def = cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            if !a.state_dir.join("CURRENT").exists() {
                anyhow::bail!("no state at {}", a.state_dir.display());
            }
            cfg.state.dir = a.state_dir;
            let store = pqa_engine::state::Store::open(&cfg.state)
                .with_context(|| format!("opening {} (is an engine running on it?)", cfg.state.dir.display()))?;
            let reader = store.reader();
            for id in &a.accounts {
                let v = http::account_with_members(&def, &reader, id).map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
                println!("{}", serde_json::json!({ "account_id": id, "state": v }));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(a) => {
            let cfg = load(a.config.as_ref())?;
            let def = Arc::new(cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?);
            let opts = ReplayOptions {
                input: a.input,
                output: a.output,
                dead_letter: a.dead_letter,
                state_dir: a.state_dir,
                batch_lines: a.batch_lines.max(1),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let stats = replay(&cfg, def, &opts, Metrics::new())?;
            eprintln!(
                "replayed {} lines in {:.2} s ({:.0} lines/s): {} events applied, {} dead letters, {} announcements",
                stats.lines,
                stats.elapsed.as_secs_f64(),
                stats.lines_per_second(),
                stats.events,
                stats.dead_letters,
                stats.announcements
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(a) => {
            let shutdown = Shutdown::new();
            shutdown.install_signal_handlers().context("installing signal handlers")?;
            let opts = DemoOptions {
                duration: a.duration.map(Duration::from_secs),
                accounts: a.accounts,
                days: a.days,
                day_ms: a.day_ms,
                seed: a.seed,
                http_addr: a.http_addr,
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
            Ok(ExitCode::SUCCESS)
        }
    }
}
