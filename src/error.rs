//! The library's error type and the exit codes every command shares.

use std::path::PathBuf;

/// Exit codes shared by every command (a fixed contract).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const REFUSED: i32 = 3;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file is unreadable or invalid; `line` is 1-based when known.
    #[error("{}: {message}", location(path, *line, *column))]
    Config {
        path: PathBuf,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// The command line asked for something that cannot be done as asked.
    #[error("{0}")]
    Usage(String),
    /// A policy refused the request (e.g. erasure of a sole owner).
    #[error("refused: {0}")]
    Refused(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller may not do this (an API key's scope or org).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A job or check ran and failed.
    #[error("{0}")]
    Failed(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// JSON that Lethe wrote or stored could not be encoded or read back.
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// A blocking task (compression, encryption) panicked or was cancelled.
    #[error("{context}: {source}")]
    Task {
        context: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("mail error: {0}")]
    Mail(String),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("object store: {0}")]
    ObjectStore(String),
    #[error("backup: {0}")]
    Backup(String),
    /// A service refused the call for its request rate: worth a retry.
    #[error("{0}")]
    Throttled(String),
    /// The KMS refused a key that is disabled: an operator's switch, not a
    /// shred, so nothing encrypted under it is given up on.
    #[error("{0}; enable the key in the KMS, then run again")]
    KeyDisabled(String),
    /// The attempt's lease may have lapsed: it must not commit anything more.
    #[error("lease lost: {0}")]
    LeaseLost(String),
}

fn location(path: &std::path::Path, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}", path.display()),
        (Some(l), None) => format!("{}:{l}", path.display()),
        _ => path.display().to_string(),
    }
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } | Error::Usage(_) | Error::NotFound(_) => exit::USAGE,
            Error::Refused(_) | Error::Forbidden(_) => exit::REFUSED,
            _ => exit::FAILED,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    pub fn task(context: impl Into<String>, source: tokio::task::JoinError) -> Self {
        Error::Task {
            context: context.into(),
            source,
        }
    }

    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
