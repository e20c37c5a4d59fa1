//! Progress bars for long one-off runs: `lethe run` on a terminal draws them
//! on stderr. Everywhere else (`serve`, pipes, CI, `--log-format json`) they
//! stay off and only the plain logs are written.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns bars on when stderr is a terminal; returns whether it did.
pub fn enable_on_terminal() -> bool {
    let on = std::io::stderr().is_terminal();
    ENABLED.store(on, Ordering::Relaxed);
    on
}

#[derive(Clone, Copy)]
pub enum Unit {
    Rows,
    Bytes,
    Items,
}

/// A bar, or nothing when bars are off. Cleared when dropped.
pub struct Bar(Option<ProgressBar>);

/// A bar towards `total` (`None`: unknown, a spinner with a count).
pub fn bar(what: &str, total: Option<u64>, unit: Unit) -> Bar {
    if !ENABLED.load(Ordering::Relaxed) {
        return Bar(None);
    }
    let template = match (total.is_some(), unit) {
        (true, Unit::Rows) => "{msg} [{bar:30}] {human_pos}/{human_len} rows, {per_sec}, eta {eta}",
        (true, Unit::Bytes) => {
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes}, {binary_bytes_per_sec}, eta {eta}"
        }
        (true, Unit::Items) => "{msg} [{bar:30}] {human_pos}/{human_len}, eta {eta}",
        (false, Unit::Rows) => "{spinner} {msg} {human_pos} rows, {per_sec}",
        (false, Unit::Bytes) => "{spinner} {msg} {binary_bytes}, {binary_bytes_per_sec}",
        (false, Unit::Items) => "{spinner} {msg} {human_pos}",
    };
    let pb = total.map_or_else(ProgressBar::new_spinner, ProgressBar::new);
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    Bar(Some(pb))
}

impl Bar {
    pub fn inc(&self, n: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(n);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}
