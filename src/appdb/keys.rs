//! The application's table of wrapped per-org data keys (`[app.keys]`): where
//! the application reads each org's DEKs from, one row an org and version.
//! States: `active` (decryptable; the newest active version encrypts new
//! values), `retired` (nothing is encrypted under it any more), `destroyed`
//! (its wrapped key is gone: crypto-shredded).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::scope::{pg_args, sqlite_args, Bind, Sql};
use super::{quote_ident as q, AppDb};
use crate::config::KeysTable;
use crate::error::{Error, Result};

/// One row of the key table, as text where the application's types vary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppKey {
    pub org: String,
    pub version: i64,
    /// The DEK as the KMS wrapped it; empty once destroyed.
    #[serde(skip)]
    pub wrapped_key: String,
    pub kms_key_id: String,
    pub state: String,
}

impl AppDb {
    /// Every key version, or one org's, ordered by org and version.
    pub async fn app_keys(&self, t: &KeysTable, org: Option<&str>) -> Result<Vec<AppKey>> {
        let mut sql = self.sql();
        let filter = match org {
            Some(o) => format!(
                " WHERE {} = {}",
                sql.as_text(&t.org),
                sql.placeholder(Bind::Text(o.to_string()))
            ),
            None => String::new(),
        };
        let text = format!(
            "SELECT {} AS org, CAST({} AS BIGINT) AS version, {} AS wrapped_key, {} AS kms_key_id, {} AS state
             FROM {}{filter} ORDER BY 1, 2",
            sql.as_text(&t.org),
            q(&t.version),
            sql.as_text(&t.wrapped_key),
            sql.as_text(&t.kms_key_id),
            sql.as_text(&t.state),
            q(&t.table),
        );
        let rows = match self {
            AppDb::Postgres(p) => {
                let rows = sqlx::query_with(&text, pg_args(sql.binds)?)
                    .fetch_all(p)
                    .await?;
                rows.iter().map(key_row).collect::<Result<Vec<_>>>()?
            }
            AppDb::Sqlite(p) => {
                let rows = sqlx::query_with(&text, sqlite_args(sql.binds)?)
                    .fetch_all(p)
                    .await?;
                rows.iter().map(key_row).collect::<Result<Vec<_>>>()?
            }
        };
        Ok(rows)
    }

    /// Adds an org's next DEK version as `active`; fails if the version exists.
    pub async fn app_key_add(
        &self,
        t: &KeysTable,
        key: &AppKey,
        created_at: DateTime<Utc>,
    ) -> Result<()> {
        // PostgreSQL has no implicit cast from text to the org column's type.
        let org_type = self.column_type(&t.table, &t.org).await?;
        let mut sql = self.sql();
        let values = [
            Bind::Text(key.org.clone()),
            Bind::Int(key.version),
            Bind::Text(key.wrapped_key.clone()),
            Bind::Text(key.kms_key_id.clone()),
            Bind::Text("active".into()),
            Bind::Time(created_at),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let ph = sql.placeholder(b);
            match (&org_type, i) {
                (Some(ty), 0) => format!("CAST({ph} AS {ty})"),
                _ => ph,
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
        let text = format!(
            "INSERT INTO {} ({}, {}, {}, {}, {}, {}) VALUES ({values})",
            q(&t.table),
            q(&t.org),
            q(&t.version),
            q(&t.wrapped_key),
            q(&t.kms_key_id),
            q(&t.state),
            q(&t.created_at),
        );
        let n = self.rows_changed(&text, sql).await?;
        expect_one(n, "add", key)
    }

    /// Replaces a live version's wrapped key after a KEK rotation (re-wrapped
    /// inside the KMS); a destroyed version is never brought back.
    pub async fn app_key_rewrap(&self, t: &KeysTable, key: &AppKey) -> Result<()> {
        let mut sql = self.sql();
        let text = format!(
            "UPDATE {} SET {} = {}, {} = {} WHERE {} = {} AND CAST({} AS BIGINT) = {} AND {} <> 'destroyed'",
            q(&t.table),
            q(&t.wrapped_key),
            sql.placeholder(Bind::Text(key.wrapped_key.clone())),
            q(&t.kms_key_id),
            sql.placeholder(Bind::Text(key.kms_key_id.clone())),
            sql.as_text(&t.org),
            sql.placeholder(Bind::Text(key.org.clone())),
            q(&t.version),
            sql.placeholder(Bind::Int(key.version)),
            q(&t.state),
        );
        let n = self.rows_changed(&text, sql).await?;
        expect_one(n, "re-wrap", key)
    }

    /// Marks a live version `retired` (nothing is encrypted under it any more).
    pub async fn app_key_retire(&self, t: &KeysTable, org: &str, version: i64) -> Result<bool> {
        let mut sql = self.sql();
        let text = format!(
            "UPDATE {} SET {} = 'retired' WHERE {} = {} AND CAST({} AS BIGINT) = {} AND {} = 'active'",
            q(&t.table),
            q(&t.state),
            sql.as_text(&t.org),
            sql.placeholder(Bind::Text(org.to_string())),
            q(&t.version),
            sql.placeholder(Bind::Int(version)),
            q(&t.state),
        );
        let n = self.rows_changed(&text, sql).await?;
        Ok(n == 1)
    }

    /// Crypto-shreds an org: every version's wrapped key is emptied and marked
    /// `destroyed`; returns how many versions were destroyed now.
    pub async fn app_keys_destroy(&self, t: &KeysTable, org: &str) -> Result<u64> {
        let mut sql = self.sql();
        let text = format!(
            "UPDATE {} SET {} = '', {} = 'destroyed' WHERE {} = {} AND {} <> 'destroyed'",
            q(&t.table),
            q(&t.wrapped_key),
            q(&t.state),
            sql.as_text(&t.org),
            sql.placeholder(Bind::Text(org.to_string())),
            q(&t.state),
        );
        self.rows_changed(&text, sql).await
    }
}

/// How many stored values each org has under each DEK version, in one
/// encrypted column; values not in the `lethe1` format are counted apart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Census {
    pub by_version: std::collections::BTreeMap<(String, u32), u64>,
    pub unreadable: u64,
}

impl Census {
    /// Values of `org` stored under `version`.
    pub fn count(&self, org: &str, version: i64) -> u64 {
        u32::try_from(version)
            .ok()
            .and_then(|v| self.by_version.get(&(org.to_string(), v)))
            .copied()
            .unwrap_or(0)
    }
}

/// The org's newest active version among `keys`: the one new values are
/// encrypted under.
pub fn newest_active(keys: &[AppKey], org: &str) -> Option<i64> {
    keys.iter()
        .filter(|k| k.org == org && k.state == "active")
        .map(|k| k.version)
        .max()
}

impl AppDb {
    /// Reads every non-NULL value of `column` once (streamed: memory stays
    /// flat) and counts it under its org and header version. Never decrypts.
    pub async fn ciphertext_census(
        &self,
        table: &str,
        org_column: &str,
        column: &str,
        census: &mut Census,
    ) -> Result<()> {
        use futures_util::TryStreamExt;
        let sql = self.sql();
        let text = format!(
            "SELECT {}, {} FROM {} WHERE {} IS NOT NULL",
            sql.as_text(org_column),
            sql.as_text(column),
            q(table),
            q(column)
        );
        let mut count = |org: String, value: String| match crate::cipher::dek_version(&value) {
            Ok(v) => *census.by_version.entry((org, v)).or_default() += 1,
            Err(_) => census.unreadable += 1,
        };
        match self {
            AppDb::Postgres(p) => {
                let mut rows = sqlx::query_as::<_, (String, String)>(&text).fetch(p);
                while let Some((org, value)) = rows.try_next().await? {
                    count(org, value);
                }
            }
            AppDb::Sqlite(p) => {
                let mut rows = sqlx::query_as::<_, (String, String)>(&text).fetch(p);
                while let Some((org, value)) = rows.try_next().await? {
                    count(org, value);
                }
            }
        }
        Ok(())
    }
}

impl AppDb {
    /// Runs one bound statement; the rows it changed.
    async fn rows_changed(&self, text: &str, sql: Sql) -> Result<u64> {
        Ok(match self {
            AppDb::Postgres(p) => sqlx::query_with(text, pg_args(sql.binds)?)
                .execute(p)
                .await?
                .rows_affected(),
            AppDb::Sqlite(p) => sqlx::query_with(text, sqlite_args(sql.binds)?)
                .execute(p)
                .await?
                .rows_affected(),
        })
    }
}

fn key_row<R: Row>(r: &R) -> Result<AppKey>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let state: String = r.try_get("state")?;
    if !matches!(state.as_str(), "active" | "retired" | "destroyed") {
        return Err(Error::Failed(format!(
            "the app key table has a row in state `{state}`; use active, retired or destroyed"
        )));
    }
    Ok(AppKey {
        org: r.try_get("org")?,
        version: r.try_get("version")?,
        wrapped_key: r.try_get("wrapped_key")?,
        kms_key_id: r.try_get("kms_key_id")?,
        state,
    })
}

/// A key statement changes exactly its one row, or says which it missed.
fn expect_one(n: u64, what: &str, key: &AppKey) -> Result<()> {
    if n == 1 {
        return Ok(());
    }
    Err(Error::Failed(format!(
        "key table: {what} of org {} version {} changed {n} rows (expected 1)",
        key.org, key.version
    )))
}
