//! The definitions an engine runs: the live one, whose announcements go to
//! sales, and shadow definitions judged on the same state beside it, whose
//! announcements go to the shadow topic. All of them are bound to one state
//! [`Layout`] (the union of the counters and signals they read). A reload
//! builds a new [`Definitions`] and the engine swaps its `Arc` between two
//! batches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::config::{CompiledDefinition, Config, ConfigError, ConfigErrors};
use crate::detect::{AccountVar, TraitFields};
use crate::state::layout::Layout;
use crate::state::manifest::Manifest;

/// The live definition, its shadows, and the state layout they share.
pub struct Definitions {
    pub live: Arc<CompiledDefinition>,
    pub shadows: Vec<Arc<CompiledDefinition>>,
    pub layout: Arc<Layout>,
    /// Where each came from (the config file; each shadow's file), for
    /// people.
    pub sources: Vec<String>,
    /// The traits any of them reads through `account`: an account's map of
    /// traits is made once for all of them (see [`TraitFields`]).
    pub account_fields: TraitFields,
    /// Tells this set of `account_fields` from any other: a cached map made
    /// for another set is made again.
    pub account_fields_id: u64,
}

impl std::fmt::Debug for Definitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Definitions")
            .field("live", &self.live.version)
            .field("shadows", &self.shadows.iter().map(|s| &s.version).collect::<Vec<_>>())
            .finish()
    }
}

impl Definitions {
    /// One live definition, no shadows.
    pub fn single(def: Arc<CompiledDefinition>) -> Definitions {
        let layout = Arc::new(Layout::single(&def));
        let (account_fields, account_fields_id) = account_fields(&def, &[]);
        Definitions {
            live: def,
            shadows: Vec::new(),
            layout,
            sources: vec![String::new()],
            account_fields,
            account_fields_id,
        }
    }

    /// The live definition and its shadows. Every shadow must have its own
    /// version (its announcements and bookkeeping are known by it) and the
    /// live definition's `bucket_seconds` (they share the state).
    pub fn new(
        live: CompiledDefinition,
        shadows: Vec<CompiledDefinition>,
        sources: Vec<String>,
    ) -> Result<Definitions, Vec<ConfigError>> {
        let mut errs = Vec::new();
        for (i, s) in shadows.iter().enumerate() {
            let at =
                |field: &str| format!("shadow[{i}] ({}): definition.{field}", sources.get(i + 1).map_or("", |s| s));
            if s.version == live.version {
                errs.push(ConfigError::new(
                    at("version"),
                    format!("`{}` is the live definition's version; give the shadow its own", s.version),
                ));
            } else if shadows[..i].iter().any(|o| o.version == s.version) {
                errs.push(ConfigError::new(at("version"), format!("`{}` is used by another shadow", s.version)));
            }
            if s.bucket_seconds != live.bucket_seconds {
                errs.push(ConfigError::new(
                    at("bucket_seconds"),
                    format!(
                        "is {} but the live definition's is {}: shadows share the live state, so they must cut time \
                         the same way",
                        s.bucket_seconds, live.bucket_seconds
                    ),
                ));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let mut live = live;
        let mut shadows = shadows;
        let layout = {
            let mut all: Vec<&mut CompiledDefinition> = Vec::with_capacity(1 + shadows.len());
            all.push(&mut live);
            all.extend(shadows.iter_mut());
            Layout::bind(&mut all)
        };
        let shadows: Vec<Arc<CompiledDefinition>> = shadows.into_iter().map(Arc::new).collect();
        let (account_fields, account_fields_id) = account_fields(&live, &shadows);
        Ok(Definitions {
            live: Arc::new(live),
            shadows,
            layout: Arc::new(layout),
            sources,
            account_fields,
            account_fields_id,
        })
    }

    /// What an account's `account` variable is made of for these definitions.
    pub fn account_var(&self) -> AccountVar<'_> {
        AccountVar { free_mail: &self.live.free_mail_domains, fields: &self.account_fields }
    }

    /// The live definition then the shadows: index 0 is live.
    pub fn all(&self) -> impl Iterator<Item = &Arc<CompiledDefinition>> + '_ {
        std::iter::once(&self.live).chain(self.shadows.iter())
    }

    pub fn get(&self, i: usize) -> &Arc<CompiledDefinition> {
        if i == 0 {
            &self.live
        } else {
            &self.shadows[i - 1]
        }
    }

    pub fn len(&self) -> usize {
        1 + self.shadows.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// `live` or `shadow`.
    pub fn role(i: usize) -> &'static str {
        if i == 0 {
            "live"
        } else {
            "shadow"
        }
    }
}

/// The traits `live` and `shadows` read through `account`, and a new id for
/// the set.
fn account_fields(live: &CompiledDefinition, shadows: &[Arc<CompiledDefinition>]) -> (TraitFields, u64) {
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let fields = shadows.iter().fold(live.plans.account_fields().clone(), |f, s| f.union(s.plans.account_fields()));
    (fields, IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

impl From<Arc<CompiledDefinition>> for Definitions {
    fn from(def: Arc<CompiledDefinition>) -> Self {
        Definitions::single(def)
    }
}

/// Reads a definition file the way `--config` is read (layered over the
/// shipped defaults, without environment variables) and compiles its
/// `[definition]`. Problems are prefixed with the file.
pub fn load_definition_file(path: &Path) -> Result<CompiledDefinition, ConfigErrors> {
    let cfg = Config::load_file_only(path)?;
    cfg.definition.compile().map_err(|errs| {
        ConfigErrors(
            errs.into_iter().map(|e| ConfigError::new(format!("{}: {}", path.display(), e.path), e.message)).collect(),
        )
    })
}

/// The definitions a validated configuration asks for: its `[definition]`
/// live, and the shadows of its `[[shadow]]` entries and of `extra` (e.g.
/// `--shadow FILE`). `config_dir` resolves relative shadow paths.
pub fn load(
    cfg: &Config,
    live: CompiledDefinition,
    config_dir: Option<&Path>,
    extra: &[PathBuf],
) -> Result<Definitions, ConfigErrors> {
    let mut errs = Vec::new();
    let mut shadows = Vec::new();
    let mut sources = vec!["config".to_string()];
    let files: Vec<PathBuf> = cfg
        .shadow
        .iter()
        .map(|s| match config_dir {
            Some(d) if s.file.is_relative() => d.join(&s.file),
            _ => s.file.clone(),
        })
        .chain(extra.iter().cloned())
        .collect();
    for f in &files {
        match load_definition_file(f) {
            Ok(d) => {
                shadows.push(d);
                sources.push(f.display().to_string());
            }
            Err(mut e) => errs.append(&mut e.0),
        }
    }
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    Definitions::new(live, shadows, sources).map_err(ConfigErrors)
}

/// Announcements of one definition version since it was loaded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionStats {
    /// By event type (`qualified`, `tier_changed`, `disqualified`).
    pub announcements: BTreeMap<String, u64>,
    /// Qualified announcements by rule and tier: `rule -> tier -> n`.
    pub by_rule: BTreeMap<String, BTreeMap<String, u64>>,
    /// For a shadow: accounts qualified by both it and the live definition,
    /// by the live one only, by the shadow only (since both were loaded).
    pub agreement: Option<Agreement>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Agreement {
    pub both: u64,
    pub live_only: u64,
    pub shadow_only: u64,
}

/// What the HTTP server shows of the running definitions: published by the
/// engine's thread after each commit and reload.
#[derive(Default)]
pub struct Published {
    pub definitions: RwLock<Option<Arc<Definitions>>>,
    pub stats: Mutex<BTreeMap<String, VersionStats>>,
    pub manifest: RwLock<Option<Manifest>>,
    /// The input offsets (topic, partition, next offset) at which the live
    /// version took over, when it came from a reload.
    pub live_since: Mutex<Vec<(String, i32, i64)>>,
    /// Per running definition: what its announcements heard back from
    /// sales, per rule (this instance's partitions).
    pub rules: Mutex<Vec<crate::outcome::RuleReport>>,
    /// The attribution window of outcomes (milliseconds; 0 until the
    /// consumer loop publishes).
    pub attribution_window_ms: std::sync::atomic::AtomicI64,
}

impl VersionStats {
    /// Adds another worker's numbers of the same version into these.
    pub fn add(&mut self, o: &VersionStats) {
        for (k, n) in &o.announcements {
            *self.announcements.entry(k.clone()).or_default() += n;
        }
        for (rule, tiers) in &o.by_rule {
            let mine = self.by_rule.entry(rule.clone()).or_default();
            for (tier, n) in tiers {
                *mine.entry(tier.clone()).or_default() += n;
            }
        }
        if let Some(a) = o.agreement {
            let mine = self.agreement.get_or_insert_with(Agreement::default);
            mine.both += a.both;
            mine.live_only += a.live_only;
            mine.shadow_only += a.shadow_only;
        }
    }
}

impl Published {
    pub fn new() -> Arc<Published> {
        Arc::new(Published::default())
    }

    /// Shows what the workers published as one process's: their numbers
    /// summed (announcements, agreement, outcomes per rule), the offsets
    /// at which each took a reload, and the first worker's definitions and
    /// manifest (all run the same definitions; each worker's state has its
    /// own manifest, all made by the same definitions).
    pub fn merge_workers(&self, workers: &[Arc<Published>]) {
        let Some(first) = workers.first() else { return };
        *self.definitions.write().expect("lock") = first.current();
        *self.manifest.write().expect("lock") = first.manifest.read().expect("lock").clone();
        let mut stats: BTreeMap<String, VersionStats> = BTreeMap::new();
        let mut since = Vec::new();
        let mut rules: Vec<crate::outcome::RuleReport> = Vec::new();
        for w in workers {
            for (version, st) in w.stats.lock().expect("lock").iter() {
                stats.entry(version.clone()).or_default().add(st);
            }
            since.extend(w.live_since.lock().expect("lock").iter().cloned());
            for r in w.rules.lock().expect("lock").iter() {
                match rules.iter_mut().find(|x| x.version == r.version && x.role == r.role) {
                    Some(x) => x.add(r),
                    None => rules.push(r.clone()),
                }
            }
        }
        since.sort();
        *self.stats.lock().expect("lock") = stats;
        *self.live_since.lock().expect("lock") = since;
        *self.rules.lock().expect("lock") = rules;
        self.attribution_window_ms.store(
            first.attribution_window_ms.load(std::sync::atomic::Ordering::Relaxed),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn current(&self) -> Option<Arc<Definitions>> {
        self.definitions.read().expect("lock").clone()
    }
}
