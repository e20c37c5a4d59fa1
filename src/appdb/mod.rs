//! The application database: the data Lethe keeps promises about. Only
//! identifiers from the validated data map reach SQL, always quoted.

/// Runs one bound statement on whichever pool `$db` is:
/// `on_pool!(self, sql, query_scalar_with(&text), fetch_one)`.
macro_rules! on_pool {
    ($db:expr, $sql:ident, $make:ident(&$text:ident), $fetch:ident) => {
        match $db {
            AppDb::Postgres(p) => sqlx::$make(&$text, pg_args($sql.binds)?).$fetch(p).await?,
            AppDb::Sqlite(p) => {
                sqlx::$make(&$text, sqlite_args($sql.binds)?)
                    .$fetch(p)
                    .await?
            }
        }
    };
}

mod ciphertexts;
pub mod guard;
mod keys;
mod objects;
mod org_members;
mod partitions;
mod rectify;
mod schema;
mod scope;
mod subject;
mod tid;
mod timeform;

pub use ciphertexts::{CipherRow, Rewrite, RowPos, Walk};
pub use keys::{newest_active, AppKey, Census};
pub use objects::ObjectRow;
pub use partitions::{Detach, NotByRange, PartitionState, RangePartition, RangePartitioning};
pub use rectify::{RectifyOutcome, TableCorrections};
pub use schema::{check_data_map, preflight, SchemaProblem};
pub use scope::{Deleted, Scope, Selector, Slicing, TimeWindow};
pub use subject::{EraseAction, EraseOutcome, EraseStep, NewValue, OrgScope};
pub use tid::Tid;
pub use timeform::{DetectedForm, TimeForm};

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::error::{Error, Result};

#[derive(Clone)]
pub enum AppDb {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl AppDb {
    /// A small pool for one-off use (`check`, a restore target). Jobs and the
    /// API share the process's pool instead: `Context::app_db`.
    pub async fn connect(url: &str) -> Result<AppDb> {
        Self::connect_pool(url, 4).await
    }

    /// A pool of at most `max_connections`; a caller that cannot get one within
    /// 15 s gets `PoolTimedOut` (the API answers 503, not 500).
    pub async fn connect_pool(url: &str, max_connections: u32) -> Result<AppDb> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // sqlx starts every session with TimeZone=UTC (over the server's and the
            // database's default), so `timestamp` and `date` columns compare as UTC.
            let opts = PgConnectOptions::from_str(url)?.application_name("lethe");
            Ok(AppDb::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(15))
                    .connect_with(opts)
                    .await?,
            ))
        } else if url.starts_with("sqlite:") {
            // Never create the application database: a typo must not look like an empty app.
            // secure_delete: an erased row's bytes are overwritten, not left in free pages.
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(false)
                .busy_timeout(Duration::from_secs(15))
                .pragma("secure_delete", "ON");
            Ok(AppDb::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(15))
                    .connect_with(opts)
                    .await?,
            ))
        } else {
            Err(Error::Usage(format!(
                "database URL `{}` must start with postgres:// or sqlite://",
                crate::config::redact_url(url)
            )))
        }
    }

    pub async fn ping(&self) -> Result<()> {
        match self {
            AppDb::Postgres(p) => {
                sqlx::query("SELECT 1").execute(p).await?;
            }
            AppDb::Sqlite(p) => {
                sqlx::query("SELECT 1").execute(p).await?;
            }
        }
        Ok(())
    }

    /// Closes every connection (a SQLite file can then be renamed or vacuumed).
    pub async fn close(&self) {
        match self {
            AppDb::Postgres(p) => p.close().await,
            AppDb::Sqlite(p) => p.close().await,
        }
    }

    /// Names of the user tables, to check the data map against.
    pub async fn tables(&self) -> Result<Vec<String>> {
        Ok(match self {
            AppDb::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables
                     WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
                )
                .fetch_all(p)
                .await?
            }
            AppDb::Sqlite(p) => {
                sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1",
                )
                .fetch_all(p)
                .await?
            }
        })
    }
}

/// Quotes an identifier for SQL (both dialects use double quotes).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_embedded_quotes() {
        assert_eq!(quote_ident("users"), "\"users\"");
        assert_eq!(
            quote_ident("a\"b; DROP TABLE x"),
            "\"a\"\"b; DROP TABLE x\""
        );
    }
}
