//! Progress bars for long loops. They draw on stderr only when it is a terminal, so logs and
//! CI output stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting items.
pub fn items(len: u64, msg: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(msg);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// A bar counting bytes.
pub fn bytes(len: u64, msg: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(msg);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
