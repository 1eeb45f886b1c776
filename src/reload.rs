//! Hot reload of the definitions: `SIGHUP`, a change of the config file (or
//! a shadow's file) on disk, and `POST /admin/reload` all come here. The new
//! files are loaded and validated first; an invalid one changes nothing
//! (every problem is logged with its place and counted in
//! `pqa_definition_reload_failures_total`). A valid one is handed to the
//! consumer loop, which swaps the engine's definitions between two batches
//! (see [`crate::engine::Engine::set_definitions`]) and answers with the
//! input offsets from which the new version judges every event.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::definitions::{self, Definitions, Published};
use crate::shutdown::Shutdown;
use crate::state::manifest::MetricStatus;
use crate::telemetry::Metrics;

/// A change of definitions for the consumer loop, and where to answer.
pub struct ReloadRequest {
    pub defs: Arc<Definitions>,
    pub reply: mpsc::SyncSender<Result<Applied, String>>,
}

/// A reload that took effect.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// The live version and the shadows' now.
    pub live: String,
    pub shadows: Vec<String>,
    /// The next input offset of every partition when the swap happened:
    /// every event from these on is judged by the new definitions, every
    /// event before by the old.
    pub from_offsets: Vec<OffsetAt>,
    /// Metrics of the new definitions and where they stand on the state.
    pub metrics: Vec<VersionedStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OffsetAt {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionedStatus {
    pub version: String,
    #[serde(flatten)]
    pub status: MetricStatus,
}

/// What a reload request came to.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// `applied`, or `unchanged` (the files define what already runs).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    /// Settings that changed in the file but take effect only after a
    /// restart (Kafka, input, state, HTTP).
    pub needs_restart: Vec<String>,
}

/// Why a reload did not take effect.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error("the new configuration is invalid ({} problem(s)); the running definition stays", .0.len())]
    Invalid(Vec<ConfigError>),
    #[error("the state cannot serve the new definition: {0}")]
    Refused(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Loads, validates and hands over new definitions.
pub struct Reloader {
    config_path: Option<PathBuf>,
    /// Applied on top of every load (command-line flags).
    overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
    /// `--shadow FILE`s.
    extra_shadows: Vec<PathBuf>,
    /// The configuration the process started with: what cannot change
    /// without a restart is compared with it.
    started: Config,
    tx: Mutex<mpsc::Sender<ReloadRequest>>,
    metrics: Metrics,
    published: Arc<Published>,
    /// One reload at a time.
    busy: Mutex<()>,
}

impl Reloader {
    /// A reloader for a process started with `started` (from `config_path`,
    /// then `overrides`); requests go to `tx` (the consumer loop).
    pub fn new(
        config_path: Option<PathBuf>,
        overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
        extra_shadows: Vec<PathBuf>,
        started: Config,
        tx: mpsc::Sender<ReloadRequest>,
        metrics: Metrics,
        published: Arc<Published>,
    ) -> Reloader {
        Reloader {
            config_path,
            overrides,
            extra_shadows,
            started,
            tx: Mutex::new(tx),
            metrics,
            published,
            busy: Mutex::new(()),
        }
    }

    /// Loads and validates the configuration and its shadows.
    pub fn load(&self) -> Result<(Config, Definitions), Vec<ConfigError>> {
        let mut cfg = Config::load(self.config_path.as_deref()).map_err(|e| e.0)?;
        (self.overrides)(&mut cfg);
        let live = cfg.validate().map_err(|e| e.0)?;
        let defs = definitions::load(&cfg, live, self.config_dir().as_deref(), &self.extra_shadows).map_err(|e| e.0)?;
        Ok((cfg, defs))
    }

    fn config_dir(&self) -> Option<PathBuf> {
        self.config_path.as_ref().and_then(|p| p.parent()).map(Path::to_path_buf)
    }

    /// The files whose change triggers a reload: the config file and every
    /// shadow file it names (as of the last successful load).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.config_path.iter().cloned().collect();
        if let Some(d) = self.published.current() {
            files.extend(d.sources.iter().skip(1).map(PathBuf::from));
        }
        files
    }

    /// Reloads now. `trigger` says why, for the log.
    pub fn reload(&self, trigger: &str) -> Result<ReloadOutcome, ReloadError> {
        let _one = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.reload_inner(trigger);
        match &result {
            Ok(o) if o.status == "applied" => self.metrics.definition_reloads.inc(),
            Ok(_) => {}
            Err(ReloadError::Invalid(problems)) => {
                self.metrics.definition_reload_failures.inc();
                tracing::error!(
                    trigger,
                    problems = problems.len(),
                    "reload refused: the configuration is invalid; the running definition stays"
                );
                for p in problems {
                    tracing::error!(trigger, at = %p.path, "{}", p.message);
                }
            }
            Err(e) => {
                self.metrics.definition_reload_failures.inc();
                tracing::error!(trigger, cause = %e, "reload refused; the running definition stays");
            }
        }
        result
    }

    fn reload_inner(&self, trigger: &str) -> Result<ReloadOutcome, ReloadError> {
        let (cfg, defs) = self.load().map_err(ReloadError::Invalid)?;
        let needs_restart = restart_only_changes(&self.started, &cfg);
        for s in &needs_restart {
            tracing::warn!(trigger, setting = %s, "changed in the file; takes effect after a restart");
        }
        if let Some(cur) = self.published.current() {
            let same = cur.len() == defs.len()
                && cur.all().zip(defs.all()).all(|(a, b)| a.version == b.version && a.fingerprint == b.fingerprint);
            if same {
                tracing::info!(trigger, version = %cur.live.version, "reload: definitions unchanged");
                return Ok(ReloadOutcome { status: "unchanged", applied: None, needs_restart });
            }
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx
            .lock()
            .expect("lock")
            .send(ReloadRequest { defs: Arc::new(defs), reply })
            .map_err(|_| ReloadError::Unavailable("the engine is not running".into()))?;
        match answer.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(applied)) => Ok(ReloadOutcome { status: "applied", applied: Some(applied), needs_restart }),
            Ok(Err(why)) => Err(ReloadError::Refused(why)),
            Err(_) => Err(ReloadError::Unavailable("the engine did not take the new definitions within 60 s".into())),
        }
    }

    /// Watches for `SIGHUP` and for changes of the watched files (polled
    /// every `poll`), and reloads on either, until `shutdown`.
    pub fn spawn_watcher(self: Arc<Self>, shutdown: Shutdown, poll: Duration) -> std::io::Result<JoinHandle<()>> {
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
        std::thread::Builder::new().name("pqa-reload".into()).spawn(move || {
            let mut seen = fingerprints(&self.watched_files());
            // A changed file is reloaded once it has stayed the same for one
            // poll: an editor or a deploy tool writing in steps is not read
            // half-written.
            let mut changed: Option<Vec<(PathBuf, Option<u64>)>> = None;
            while !shutdown.is_triggered() {
                shutdown.sleep(poll);
                let trigger = if hup.swap(false, Ordering::Relaxed) {
                    "SIGHUP"
                } else {
                    let now = fingerprints(&self.watched_files());
                    if now == seen {
                        changed = None;
                        continue;
                    }
                    if changed.as_ref() != Some(&now) {
                        changed = Some(now);
                        continue;
                    }
                    "file change"
                };
                let _ = self.reload(trigger);
                // What was loaded is the new baseline (also when it was
                // refused: the next change of the file tries again).
                seen = fingerprints(&self.watched_files());
                changed = None;
            }
        })
    }
}

/// A cheap identity of each file's content (missing files included).
fn fingerprints(files: &[PathBuf]) -> Vec<(PathBuf, Option<u64>)> {
    files.iter().map(|f| (f.clone(), std::fs::read(f).ok().map(|b| xxhash_rust::xxh3::xxh3_64(&b)))).collect()
}

/// The settings that differ between two configurations and need a restart:
/// everything outside `[definition]` and `[[shadow]]`, by key.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let a = serde_json::to_value(old).unwrap_or_default();
    let b = serde_json::to_value(new).unwrap_or_default();
    for section in ["kafka", "input", "state", "http"] {
        diff(section, &a[section], &b[section], &mut out);
    }
    out
}

fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&serde_json::Value::Null),
                    y.get(k).unwrap_or(&serde_json::Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(path.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_are_listed_by_key() {
        let a = Config::default_config();
        let mut b = a.clone();
        b.kafka.bootstrap_servers = "elsewhere:9092".into();
        b.http.addr = "0.0.0.0:9464".into();
        b.definition.cooldown = "7d".into();
        b.kafka.properties.insert("sasl.password".into(), "x".into());
        assert_eq!(
            restart_only_changes(&a, &b),
            ["kafka.bootstrap_servers", "kafka.properties.sasl.password", "http.addr"]
        );
    }
}
