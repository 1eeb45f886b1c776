//! Any bytes through the Segment decoder: never a panic, hang or stack
//! overflow; always an event that respects the limits, or a rejection.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pqa_engine::config::Config;
use pqa_engine::decode::{Decoder, Kind, Reason, MAX_ID_BYTES, MAX_PATH_BYTES, MAX_TRAITS_BYTES};

/// 2026-09-21, as in the decoder's tests.
const NOW: i64 = 1_790_000_000_000;

fn decoder() -> &'static Decoder {
    static D: OnceLock<Decoder> = OnceLock::new();
    D.get_or_init(|| Decoder::new(Config::default_config().input))
}

fuzz_target!(|data: &[u8]| {
    let d = decoder();
    match d.decode(Some(data), NOW) {
        Ok(e) => {
            assert!(!e.user_id.trim().is_empty(), "accepted an event without a user id");
            assert!(e.user_id.len() <= MAX_ID_BYTES);
            assert!(e.account_id.as_ref().is_none_or(|a| a.len() <= MAX_ID_BYTES));
            assert!(e.message_id.as_ref().is_none_or(|a| a.len() <= MAX_ID_BYTES));
            assert!(e.name.as_ref().is_none_or(|a| a.len() <= MAX_ID_BYTES));
            assert!(e.path.as_ref().is_none_or(|a| a.len() <= MAX_PATH_BYTES));
            assert!(e.time_ms >= 946_684_800_000, "time before 2000 accepted: {}", e.time_ms);
            assert!(e.time_ms <= NOW + 86_400_000, "future time accepted: {}", e.time_ms);
            if e.kind == Kind::Track {
                assert!(e.name.as_ref().is_some_and(|n| !n.is_empty()), "track without a name");
            }
            // An alias always names its previous id; nothing else does.
            assert_eq!(e.kind == Kind::Alias, e.previous_id.is_some());
            assert!(e.previous_id.as_ref().is_none_or(|p| !p.trim().is_empty() && p.len() <= MAX_ID_BYTES));
            if let Some(t) = &e.traits {
                assert!(e.kind == Kind::Identify || e.kind == Kind::Group);
                assert!(serde_json::to_vec(t).unwrap().len() <= MAX_TRAITS_BYTES);
            }
        }
        Err(r) => {
            assert!(Reason::ALL.contains(&r.reason));
            assert!(!r.detail.is_empty(), "rejection {:?} without a detail", r.reason);
            let _ = r.to_string();
        }
    }
    // The payload-less and empty cases are fixed, but cheap.
    if data.is_empty() {
        assert_eq!(d.decode(None, NOW).unwrap_err().reason, Reason::Empty);
    }
});
