//! Fault injection for the reliability tests (tests/cli/faults.rs, docs/reliability.md).
//!
//! `W2S_FAULT=<point>:<n>[:<action>]` acts on the n-th arrival (1-based) of this process at a
//! named point: `kill` (the default) sends SIGKILL to the process itself, as a crash or an
//! out-of-memory kill would; `enospc` makes that operation fail with "No space left on device",
//! as a full disk would. Points:
//!
//! - `put`: before each artifact-store object write (table parts, checkpoint files, training
//!   state, manifests), so the n-th write never happens;
//! - `commit`: before a stage's manifest is written, every output already in place;
//! - `step`: after each optimizer step, before its state is saved;
//! - `saved`: right after each save of resumable training state.
//!
//! Unset (always, outside tests) it costs one relaxed atomic load per point.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

struct Spec {
    point: String,
    n: usize,
    enospc: bool,
}

fn spec() -> Option<&'static Spec> {
    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let v = std::env::var("W2S_FAULT").ok()?;
        let mut it = v.split(':');
        let point = it.next()?.to_string();
        let n = it.next()?.parse().ok()?;
        let enospc = it.next() == Some("enospc");
        Some(Spec { point, n, enospc })
    })
    .as_ref()
}

/// Marks an arrival at `point`; kills the process or returns the injected error when the
/// fault says so.
pub fn hit(point: &str) -> std::io::Result<()> {
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let Some(s) = spec() else { return Ok(()) };
    if s.point != point {
        return Ok(());
    }
    if SEEN.fetch_add(1, Ordering::Relaxed) + 1 != s.n {
        return Ok(());
    }
    if s.enospc {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    eprintln!("W2S_FAULT: killing this process at {point} #{}", s.n);
    // SAFETY: raising a signal on our own process; SIGKILL cannot be handled and ends it here.
    unsafe {
        libc::raise(libc::SIGKILL);
    }
    unreachable!("SIGKILL returned")
}
