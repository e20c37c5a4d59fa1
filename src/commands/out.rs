//! Everything a command prints on stdout goes through here. A closed stdout
//! (`lethe jobs list | head -1`) must not panic (`println!` does) nor print an
//! error: the write is dropped, the command finishes its work and exits with
//! its own code. Any other write error (a full disk under `> file`) is kept and
//! turns the exit code into 1 at the end (`finish`), so no output is lost silently.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// `println!` for commands: `outln!("{} rows", n);`
macro_rules! outln {
    () => { $crate::commands::out::write_fmt(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::commands::out::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// Writes to stdout; a broken pipe is remembered, not reported.
pub fn write_fmt(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        note(&e);
    }
}

pub fn line(s: &str) {
    write_fmt(format_args!("{s}\n"));
}

fn note(e: &io::Error) {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CLOSED.store(true, Ordering::Relaxed);
    } else if let Ok(mut f) = FAILED.lock() {
        f.get_or_insert_with(|| e.to_string());
    }
}

/// True once a write found stdout closed by its reader.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// stdout as a `Write` for streaming output (`audit export`): errors are
/// returned (the stream stops) and a broken pipe is remembered for `closed`.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(buf).inspect_err(note)
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush().inspect_err(note)
    }
}

/// The exit code after the command returned `code`: 1 if its output could not
/// be written for any reason but a closed pipe.
pub fn finish(code: i32) -> i32 {
    let failed = FAILED.lock().ok().and_then(|mut f| f.take());
    match failed {
        Some(e) if code == crate::error::exit::OK => {
            let _ = writeln!(io::stderr(), "error: writing to stdout: {e}");
            crate::error::exit::FAILED
        }
        _ => code,
    }
}
