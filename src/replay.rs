//! Replay: the same engine over an NDJSON file (plain or gzip) instead of
//! Kafka. It backtests a definition on history: same input and config, same
//! output, byte for byte.
//!
//! Lines are records of a pseudo-topic `replay`, partition 0, offset = line
//! number; with a persistent `--state-dir`, a second replay of a longer file
//! resumes after the lines already applied.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::{CompiledDefinition, Config};
use crate::definitions::Definitions;
use crate::emit::OutputEvent;
use crate::engine::commit::Committer;
use crate::engine::{Engine, EngineError, InputRecord, Output};
use crate::shutdown::Shutdown;
use crate::state::prefetch::{Fetched, Prefetcher};
use crate::state::{StateError, Store};
use crate::telemetry::Metrics;

/// The pseudo-topic replayed lines belong to.
pub const REPLAY_TOPIC: &str = "replay";

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read input {path}: {source}")]
    Input { path: String, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Output { path: String, source: io::Error },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot create a temporary state directory: {0}")]
    TempDir(io::Error),
}

/// Where replay reads and writes.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// NDJSON input; `-` is standard input. `.gz` (or gzip magic) is decompressed.
    pub input: PathBuf,
    /// Output, one CloudEvent per line; `-` is standard output.
    pub output: PathBuf,
    /// Dead letters as NDJSON (`reason`, `detail`, `line`, `original`).
    pub dead_letter: Option<PathBuf>,
    /// Persistent state directory; by default a fresh temporary one.
    pub state_dir: Option<PathBuf>,
    /// Lines per commit.
    pub batch_lines: usize,
    /// Show a progress bar on standard error (when it is a terminal).
    pub progress: bool,
    /// Stops the replay between chunks of lines once triggered (SIGINT or
    /// SIGTERM in the command): what was applied is output and committed
    /// (a `state_dir` then resumes after it), a temporary state is removed,
    /// and [`ReplayStats::interrupted`] says so.
    pub stop: Option<Shutdown>,
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplayStats {
    pub lines: u64,
    pub events: u64,
    pub dead_letters: u64,
    pub announcements: u64,
    pub elapsed: Duration,
    /// Stopped by [`ReplayOptions::stop`] before the end of the input.
    pub interrupted: bool,
    /// Lines a `state_dir` had applied already (a replay resumed): read,
    /// not applied again.
    pub skipped: u64,
}

impl ReplayStats {
    pub fn lines_per_second(&self) -> f64 {
        self.lines as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens a possibly gzipped input.
pub fn open_input(path: &Path) -> io::Result<Box<dyn BufRead + Send>> {
    let raw: Box<dyn Read + Send> =
        if path == Path::new("-") { Box::new(io::stdin()) } else { Box::new(File::open(path)?) };
    let mut buf = BufReader::with_capacity(1 << 20, raw);
    let gz = buf.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(buf)))
    } else {
        Box::new(buf)
    })
}

fn open_output(path: &Path) -> io::Result<Box<dyn Write>> {
    Ok(if path.as_os_str().is_empty() {
        Box::new(io::sink())
    } else if path == Path::new("-") {
        Box::new(BufWriter::with_capacity(1 << 16, io::stdout().lock()))
    } else {
        Box::new(BufWriter::with_capacity(1 << 20, File::create(path)?))
    })
}

/// Replays `opts.input` through the engine.
pub fn replay(
    cfg: &Config,
    def: Arc<CompiledDefinition>,
    opts: &ReplayOptions,
    metrics: Metrics,
) -> Result<ReplayStats, ReplayError> {
    replay_definitions(cfg, Arc::new(Definitions::single(def)), opts, metrics, &mut |_| {}).map(|(s, _)| s)
}

/// What the engine saw over a replay, besides the output.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    /// Per definition (live first): events it alone would have judged too
    /// late (see [`Engine::late_for`]).
    pub late_for: Vec<u64>,
    /// Earliest and latest event time applied.
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

/// [`replay`] with several definitions side by side on one decode (the
/// first live, the others as shadows): the live definition's events go to
/// `opts.output` (none when it is an empty path), and every event of every
/// definition to `on_event`.
pub fn replay_definitions(
    cfg: &Config,
    defs: Arc<Definitions>,
    opts: &ReplayOptions,
    metrics: Metrics,
    on_event: &mut dyn FnMut(&OutputEvent),
) -> Result<(ReplayStats, ReplaySummary), ReplayError> {
    let started = Instant::now();
    let temp;
    let mut state_cfg = cfg.state.clone();
    state_cfg.dir = match &opts.state_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("pqa-replay-").tempdir().map_err(ReplayError::TempDir)?;
            temp.path().to_path_buf()
        }
    };
    // A temporary state is thrown away: no write-ahead log, no final flush.
    // It is read by nothing else either: changed records stay in memory
    // until the cache evicts them (write-back).
    let store = match opts.state_dir {
        Some(_) => Store::open(&state_cfg)?,
        None => {
            let mut s = Store::open_ephemeral(&state_cfg)?;
            s.set_write_back(true)?;
            s
        }
    };
    let mut engine = Engine::with_definitions(defs, cfg.input.clone(), store, metrics)?;

    let in_name = opts.input.display().to_string();
    let input = open_input(&opts.input).map_err(|e| ReplayError::Input { path: in_name.clone(), source: e })?;
    let out_err = |p: &Path| {
        let path = p.display().to_string();
        move |e| ReplayError::Output { path, source: e }
    };
    let mut out = open_output(&opts.output).map_err(out_err(&opts.output))?;
    let mut dlq = match &opts.dead_letter {
        Some(p) => Some(open_output(p).map_err(out_err(p))?),
        None => None,
    };

    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {human_pos} lines  {per_sec}  {elapsed}  {msg}")
                .expect("valid template"),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    let mut stats = ReplayStats::default();
    let mut output = Output::default();
    let mut in_batch = 0usize;
    let mut committer: Committer<(), ReplayError> = Committer::new();
    // Lines are read and decoded on a second thread, a chunk ahead of the
    // engine, which applies them in order: the same records, the same
    // output.
    let decoder = engine.decoder();
    // The same thread reads ahead the state records the lines will need that
    // are probably not cached (see `state::prefetch`).
    let prefetcher = engine.prefetcher();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, ReplayError>>(4);
    // (Not a scoped thread: one that waits on a pipe left open is not
    // waited for after a stop; see `READER_GRACE`.)
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let name = in_name.clone();
        std::thread::Builder::new()
            .name("pqa-decode".into())
            .spawn(move || {
                let _done = done_tx;
                read_chunks(input, &decoder, prefetcher, &name, &tx)
            })
            .map_err(|e| ReplayError::Input { path: in_name.clone(), source: e })?
    };
    let applied = (|| -> Result<(), ReplayError> {
        // (Dropped whenever this returns: the reader's next send fails and
        // it ends.)
        let rx = rx;
        let stopped = || opts.stop.as_ref().is_some_and(Shutdown::is_triggered);
        loop {
            // (Waiting for the next chunk in steps, to notice a stop while
            // the input is slow.)
            let chunk = match rx.recv_timeout(STOP_POLL) {
                Ok(_) | Err(RecvTimeoutError::Timeout) if stopped() => {
                    stats.interrupted = true;
                    break;
                }
                Ok(chunk) => chunk?,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut decoded_it = chunk.decoded.into_iter();
            for (i, fetched) in chunk.fetched.into_iter().enumerate() {
                let Some(decoded) = decoded_it.next() else { break };
                engine.prefetch(decoded_it.as_slice());
                let (offset, range) = chunk.lines[i].clone();
                stats.lines += 1;
                engine.process_fetched(
                    &InputRecord {
                        topic: REPLAY_TOPIC,
                        partition: 0,
                        offset,
                        key: None,
                        payload: Some(&chunk.bytes[range]),
                        timestamp_ms: None,
                    },
                    decoded,
                    fetched,
                    &mut output,
                )?;
                in_batch += 1;
                if !output.is_empty() {
                    for e in output.events.iter().chain(&output.shadow_events) {
                        on_event(e);
                    }
                    write_output(
                        &mut output,
                        &mut out,
                        dlq.as_mut(),
                        &opts.output,
                        opts.dead_letter.as_deref(),
                        &mut stats,
                    )?;
                }
                if in_batch >= opts.batch_lines {
                    // Output first, then state: a crash can repeat, never lose. The
                    // state is written on another thread while the next batch is
                    // applied (one batch in flight at most).
                    out.flush().map_err(out_err(&opts.output))?;
                    committer.hand_over(&mut engine, Box::new(|_| Ok((Vec::new(), ()))))?;
                    in_batch = 0;
                    bar.set_position(stats.lines);
                }
            }
        }
        Ok(())
    })();
    // The reader has ended, or ends at its next send, unless it waits on
    // input that does not come (`--input -` and a pipe left open): after a
    // stop or an error that one is left behind, and ends with the process.
    let ended = if applied.is_ok() && !stats.interrupted {
        done_rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
    } else {
        done_rx.recv_timeout(READER_GRACE)
    };
    match ended {
        Err(RecvTimeoutError::Timeout) => tracing::debug!("the input is still being read; not waiting for it"),
        _ => {
            if let Err(panic) = reader.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
    applied?;
    out.flush().map_err(out_err(&opts.output))?;
    if let (Some(d), Some(p)) = (dlq.as_mut(), &opts.dead_letter) {
        d.flush().map_err(out_err(p))?;
    }
    committer.commit_now(&mut engine, Box::new(|_| Ok((Vec::new(), ()))))?;
    engine.close()?;
    bar.finish_and_clear();
    stats.elapsed = started.elapsed();
    stats.skipped = engine.metrics().duplicates_skipped.get();
    stats.events = stats.lines - stats.dead_letters - stats.skipped;
    let summary = ReplaySummary {
        late_for: (0..engine.definitions().len()).map(|i| engine.late_for(i)).collect(),
        first_ms: engine.time_range().map(|r| r.0),
        last_ms: engine.time_range().map(|r| r.1),
    };
    Ok((stats, summary))
}

/// Lines of the input, read and decoded ahead of the engine.
struct Chunk {
    bytes: Vec<u8>,
    /// Offset (line number, blank lines counted) and place in `bytes` of
    /// each non-blank line.
    lines: Vec<(i64, std::ops::Range<usize>)>,
    decoded: Vec<Result<crate::decode::Event, crate::decode::Rejection>>,
    /// The state records read ahead for each line (none for a rejected one).
    fetched: Vec<Fetched>,
}

/// Lines per chunk.
const CHUNK_LINES: usize = 1024;

/// How long a stopped replay waits for its reader to end before leaving it
/// behind (it waits on a pipe that stays open: it ends with the process).
const READER_GRACE: Duration = Duration::from_secs(1);

/// How often the engine thread, waiting for input, looks at
/// [`ReplayOptions::stop`].
const STOP_POLL: Duration = Duration::from_millis(100);

/// How many events ahead of its read-ahead the decoder thread asks for an
/// event's guesses ([`Prefetcher::prefetch`]).
const FETCH_AHEAD: usize = 8;

/// Reads `input` into chunks of decoded lines until its end, a read error
/// (sent on) or the engine stopping (the channel closed).
fn read_chunks(
    mut input: Box<dyn BufRead + Send>,
    decoder: &crate::decode::Decoder,
    mut prefetcher: Prefetcher,
    name: &str,
    tx: &std::sync::mpsc::SyncSender<Result<Chunk, ReplayError>>,
) {
    let mut offset: i64 = 0;
    loop {
        let mut chunk = Chunk {
            bytes: Vec::with_capacity(CHUNK_LINES * 512),
            lines: Vec::with_capacity(CHUNK_LINES),
            decoded: Vec::with_capacity(CHUNK_LINES),
            fetched: Vec::with_capacity(CHUNK_LINES),
        };
        let mut end = false;
        while chunk.lines.len() < CHUNK_LINES {
            let start = chunk.bytes.len();
            match input.read_until(b'\n', &mut chunk.bytes) {
                Ok(0) => {
                    end = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(ReplayError::Input { path: name.to_string(), source: e }));
                    return;
                }
            }
            while chunk.bytes.len() > start && matches!(chunk.bytes.last(), Some(b'\n' | b'\r')) {
                chunk.bytes.pop();
            }
            let this = offset;
            offset += 1;
            if chunk.bytes[start..].iter().all(u8::is_ascii_whitespace) {
                chunk.bytes.truncate(start);
                continue;
            }
            let now = chrono::Utc::now().timestamp_millis();
            chunk.decoded.push(decoder.decode(Some(&chunk.bytes[start..]), now));
            chunk.lines.push((this, start..chunk.bytes.len()));
        }
        // Then what the chunk's events need read ahead, asking for each
        // event's guesses of what is cached a few events before they are
        // looked up (a long tail's are nearly all cache misses).
        for (i, decoded) in chunk.decoded.iter().enumerate() {
            if let Some(Ok(ev)) = chunk.decoded.get(i + FETCH_AHEAD) {
                prefetcher.prefetch(ev);
            }
            chunk.fetched.push(decoded.as_ref().map(|ev| prefetcher.fetch(ev)).unwrap_or_default());
        }
        if !chunk.lines.is_empty() && tx.send(Ok(chunk)).is_err() {
            return;
        }
        if end {
            return;
        }
    }
}

fn write_output(
    output: &mut Output,
    out: &mut Box<dyn Write>,
    dlq: Option<&mut Box<dyn Write>>,
    out_path: &Path,
    dlq_path: Option<&Path>,
    stats: &mut ReplayStats,
) -> Result<(), ReplayError> {
    let werr = |p: &Path, e: io::Error| ReplayError::Output { path: p.display().to_string(), source: e };
    for e in &output.events {
        out.write_all(&e.payload).and_then(|_| out.write_all(b"\n")).map_err(|e| werr(out_path, e))?;
        stats.announcements += 1;
    }
    stats.dead_letters += output.dead_letters.len() as u64;
    if let (Some(d), Some(p)) = (dlq, dlq_path) {
        for dl in &output.dead_letters {
            let mut rec = json!({
                "reason": dl.reason.as_str(),
                "detail": dl.detail,
                "line": dl.offset + 1,
                "original": String::from_utf8_lossy(&dl.payload),
            });
            if std::str::from_utf8(&dl.payload).is_err() {
                rec["original_hex"] = dl.payload.iter().map(|b| format!("{b:02x}")).collect::<String>().into();
            }
            serde_json::to_writer(&mut *d, &rec).map_err(|e| werr(p, e.into()))?;
            d.write_all(b"\n").map_err(|e| werr(p, e))?;
        }
    }
    output.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines are read and decoded a chunk ahead, on another thread: blank
    /// lines still count as lines, CRLF endings are stripped, and a bad
    /// line past the first chunks is dead-lettered with its own line
    /// number; a read error ends the replay with an error.
    #[test]
    fn lines_decoded_ahead_keep_their_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.ndjson");
        let mut text = String::new();
        let mut bad_line = 0;
        for i in 0..(3 * CHUNK_LINES + 10) {
            let line = i + 1;
            if i % 500 == 7 {
                text.push_str("\r\n");
            } else if i == 2 * CHUNK_LINES + 3 {
                bad_line = line;
                text.push_str("{not json\r\n");
            } else {
                text.push_str(&format!(
                    r#"{{"type":"track","event":"x","userId":"u{i}","context":{{"groupId":"a"}},"timestamp":"2026-09-01T00:00:00Z","messageId":"m{i}"}}"#
                ));
                text.push_str(if i % 2 == 0 { "\r\n" } else { "\n" });
            }
        }
        std::fs::write(&input, text).unwrap();
        let cfg = Config::default_config();
        let def = Arc::new(cfg.definition.compile().unwrap());
        let dl = dir.path().join("dl.ndjson");
        let opts = ReplayOptions {
            input: input.clone(),
            output: PathBuf::new(),
            dead_letter: Some(dl.clone()),
            state_dir: None,
            batch_lines: 100,
            progress: false,
            stop: None,
        };
        let stats = replay(&cfg, def.clone(), &opts, Metrics::new()).unwrap();
        let blank = (0..(3 * CHUNK_LINES + 10)).filter(|i| i % 500 == 7).count() as u64;
        assert_eq!(stats.lines, (3 * CHUNK_LINES + 10) as u64 - blank);
        assert_eq!(stats.dead_letters, 1);
        let rec: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&dl).unwrap().trim()).unwrap();
        assert_eq!(rec["line"], bad_line as u64);
        assert_eq!(rec["original"], "{not json");

        let missing = ReplayOptions { input: dir.path().join("nowhere.ndjson"), ..opts };
        assert!(matches!(replay(&cfg, def, &missing, Metrics::new()), Err(ReplayError::Input { .. })));
    }

    /// State is written on another thread while the next batch is applied;
    /// with tiny batches and a tiny cache (most reads go to RocksDB, many
    /// of them right after the batch that changed them was handed over)
    /// the output must be exactly that of the default settings. So must a
    /// temporary state (write-back: records and message ids in memory,
    /// written when evicted), with the default cache and with a tiny one
    /// (evicted records read back from the batch in flight and from
    /// RocksDB).
    #[test]
    fn tiny_batches_and_cache_give_the_same_output() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.ndjson");
        {
            let mut f = std::io::BufWriter::new(File::create(&input).unwrap());
            let sim = crate::sim::Simulator::new(crate::sim::SimConfig {
                seed: 7,
                accounts: 40,
                start_unix: 1_767_225_600,
                days: 60,
            });
            for (i, e) in sim.take(20_000).enumerate() {
                writeln!(f, "{}", e.json).unwrap();
                if i % 97 == 0 {
                    // An upstream retry, later in the file: counted once.
                    writeln!(f, "{}", e.json).unwrap();
                }
            }
        }
        let run = |name: &str, batch_lines: usize, cache_accounts: usize, persistent: bool| {
            let mut cfg = Config::default_config();
            cfg.state.cache_accounts = cache_accounts;
            cfg.state.cache_users = Some(cache_accounts);
            let def = Arc::new(cfg.definition.compile().unwrap());
            let output = dir.path().join(name);
            let opts = ReplayOptions {
                input: input.clone(),
                output: output.clone(),
                dead_letter: None,
                state_dir: persistent.then(|| dir.path().join(format!("{name}.state"))),
                batch_lines,
                progress: false,
                stop: None,
            };
            let stats = replay(&cfg, def, &opts, Metrics::new()).unwrap();
            (stats.announcements, std::fs::read(output).unwrap())
        };
        let (n, reference) = run("default", 10_000, 100_000, true);
        assert!(n > 10, "the history qualifies accounts ({n} announcements)");
        let (_, small) = run("small", 7, 2, true);
        assert!(small == reference, "tiny batches and cache change the output");
        let (_, temporary) = run("temporary", 10_000, 100_000, false);
        assert!(temporary == reference, "a write-back state changes the output");
        let (_, evicting) = run("evicting", 7, 2, false);
        assert!(evicting == reference, "a write-back state that evicts changes the output");
    }
}
