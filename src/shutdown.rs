//! A shutdown flag shared by every loop. SIGTERM and SIGINT set it; loops
//! finish the batch in hand, commit, and return.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Cloneable; all clones see the same flag.
#[derive(Clone, Default, Debug)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Sets the flag on SIGTERM and SIGINT. A second signal while shutting
    /// down exits at once (the state is consistent at every commit).
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register_conditional_shutdown(sig, 1, self.0.clone())?;
            signal_hook::flag::register(sig, self.0.clone())?;
        }
        Ok(())
    }

    /// A new flag, set by SIGTERM and SIGINT (see
    /// [`Shutdown::install_signal_handlers`]).
    pub fn on_signals() -> std::io::Result<Shutdown> {
        let s = Shutdown::new();
        s.install_signal_handlers()?;
        Ok(s)
    }

    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early on shutdown. Returns true if shut down.
    pub fn sleep(&self, d: Duration) -> bool {
        let step = Duration::from_millis(20);
        let mut left = d;
        while !left.is_zero() {
            if self.is_triggered() {
                return true;
            }
            let s = left.min(step);
            std::thread::sleep(s);
            left -= s;
        }
        self.is_triggered()
    }
}
