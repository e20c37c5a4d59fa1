//! The process entry: parses arguments, sets up logging and the runtime,
//! runs the command, maps the outcome to an exit code. `main.rs` calls it.

use std::io::Write;

use clap::Parser;

use crate::cli::{Cli, Command, LogFormat};
use crate::commands;
use crate::error::{exit, Error};

fn init_logging(format: LogFormat, command: &Command) {
    // serve logs its work; one-off commands keep stderr quiet unless asked (RUST_LOG).
    let default = if matches!(command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Parses arguments, runs the command, returns the process exit code.
pub fn main() -> i32 {
    let code = run();
    // PostgreSQL's restore_command: an exit of 1 to 125 reads as "no more
    // WAL" and ends recovery early; every failure but "not archived" (1)
    // must stop it instead, whether it came from the arguments, the config
    // or the fetch itself.
    let args: Vec<String> = std::env::args().collect();
    let fetching = args.windows(2).any(|w| w[0] == "wal" && w[1] == "fetch");
    if fetching && code > 1 {
        126
    } else {
        code
    }
}

fn run() -> i32 {
    crate::private_file::restrict_process_umask();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    init_logging(cli.log_format, &cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {e}"
            );
            return exit::FAILED;
        }
    };
    let code = match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            let code = e
                .downcast_ref::<Error>()
                .map_or(exit::FAILED, Error::exit_code);
            // stderr may be a closed pipe too: never panic on the way out.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            code
        }
    };
    // A dropped run's clean-ups (its scratch database) finish before the process ends.
    if !runtime.block_on(crate::cleanup::wait(std::time::Duration::from_secs(60))) {
        tracing::warn!(
            "a clean-up did not finish within 60 s; the next backup.verify sweeps what it left"
        );
    }
    // The command is done and its output written: background tasks (a
    // connection pool's maintenance after an early error return was seen
    // spinning) must not keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    commands::out::finish(code)
}
