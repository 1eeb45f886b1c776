//! Any bytes as a configuration file: loading and validation give a config
//! or a list of errors, never a panic, hang or stack overflow.
//!
//! Two paths per input: the real loader (`Config::load` on a file: embedded
//! defaults, the file layered on top, the definition lists replaced when the
//! file brings its own) and a whole file parsed straight into `Config`. Both
//! end in `validate()`, which compiles the definition (CEL, regexes,
//! durations).
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pqa_engine::config::Config;

fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        dir.join(format!("pqa-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Not TOML at all: the loader stops at its own parse; nothing else to reach.
    if toml::from_str::<toml::Table>(text).is_err() {
        let _ = toml::from_str::<Config>(text);
        return;
    }
    if let Ok(cfg) = toml::from_str::<Config>(text) {
        check(&cfg);
    }
    let path = scratch();
    let mut f = std::fs::File::create(path).expect("scratch file");
    f.write_all(data).expect("scratch write");
    drop(f);
    match Config::load(Some(path)) {
        Ok(cfg) => check(&cfg),
        Err(e) => {
            assert!(!e.0.is_empty(), "load failed with no error listed");
            let _ = e.to_string();
        }
    }
});

fn check(cfg: &Config) {
    match cfg.validate() {
        Ok(def) => {
            assert!(!def.rules.is_empty());
            assert!(!def.tiers.is_empty());
            assert!(def.retention_seconds >= def.bucket_seconds);
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "validation failed with no error listed");
            let _ = e.to_string();
        }
    }
}
