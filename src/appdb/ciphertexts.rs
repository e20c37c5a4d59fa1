//! Encrypted columns read in batches and rewritten in place, for
//! `keys.reencrypt`. Rows are walked in physical order (`rowid` on SQLite,
//! `(tableoid, ctid)` on PostgreSQL, which tells partitions apart) from a
//! saved position, so a rescued run resumes where the last batch committed.
//! A row rewritten on PostgreSQL may reappear later in the walk under a new
//! `ctid`; it is then already current and skipped, so the walk ends.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::scope::{pg_args, sqlite_args, Bind};
use super::{quote_ident as q, AppDb};
use crate::error::Result;

/// Where a walk over a table stands: after this row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowPos {
    Start,
    Rowid(i64),
    Tuple { table_oid: i64, ctid: String },
}

/// How a log line names a row, so an operator can find it.
impl std::fmt::Display for RowPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowPos::Start => write!(f, "start"),
            RowPos::Rowid(id) => write!(f, "rowid {id}"),
            RowPos::Tuple { table_oid, ctid } => {
                write!(f, "ctid '{ctid}' in relation {table_oid} (tableoid)")
            }
        }
    }
}

/// One stored value and where it lives.
#[derive(Debug, Clone)]
pub struct CipherRow {
    pub pos: RowPos,
    pub org: String,
    pub value: String,
}

/// A rewrite of one value, applied only if the value is still `old`.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub pos: RowPos,
    pub old: String,
    pub new: String,
}

impl AppDb {
    /// Up to `limit` non-NULL values of `column` after `after`, in walk order.
    pub async fn cipher_rows(
        &self,
        table: &str,
        org_column: &str,
        column: &str,
        after: &RowPos,
        limit: u32,
    ) -> Result<Vec<CipherRow>> {
        let mut sql = self.sql();
        let (org, col) = (sql.as_text(org_column), sql.as_text(column));
        let not_null = format!("{} IS NOT NULL", q(column));
        Ok(match self {
            AppDb::Sqlite(p) => {
                let from = match after {
                    RowPos::Rowid(id) => *id,
                    _ => i64::MIN,
                };
                let text = format!(
                    "SELECT rowid, {org}, {col} FROM {} WHERE {not_null} AND rowid > {} ORDER BY rowid LIMIT {}",
                    q(table),
                    sql.placeholder(Bind::Int(from)),
                    sql.placeholder(Bind::Int(i64::from(limit)))
                );
                let rows = sqlx::query_with(&text, sqlite_args(sql.binds)?)
                    .fetch_all(p)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(CipherRow {
                            pos: RowPos::Rowid(r.try_get(0)?),
                            org: r.try_get(1)?,
                            value: r.try_get(2)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            AppDb::Postgres(p) => {
                let (oid, ctid) = match after {
                    RowPos::Tuple { table_oid, ctid } => (*table_oid, ctid.clone()),
                    _ => (-1, "(0,0)".to_string()),
                };
                let text = format!(
                    // Aliased: an output column named `ctid` (the text) would
                    // otherwise be what ORDER BY sorts, in text order.
                    "SELECT tableoid::bigint AS pos_oid, ctid::text AS pos_ctid, {org}, {col} FROM {} WHERE {not_null}
                     AND (tableoid::bigint, ctid) > ({}, {}::tid) ORDER BY tableoid::bigint, ctid LIMIT {}",
                    q(table),
                    sql.placeholder(Bind::Int(oid)),
                    sql.placeholder(Bind::Text(ctid)),
                    sql.placeholder(Bind::Int(i64::from(limit)))
                );
                let rows = sqlx::query_with(&text, pg_args(sql.binds)?)
                    .fetch_all(p)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(CipherRow {
                            pos: RowPos::Tuple {
                                table_oid: r.try_get(0)?,
                                ctid: r.try_get(1)?,
                            },
                            org: r.try_get(2)?,
                            value: r.try_get(3)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        })
    }

    /// Applies a batch of rewrites in one transaction; a value the
    /// application changed meanwhile is left alone. Returns, per rewrite,
    /// whether it applied.
    pub async fn cipher_rewrite(
        &self,
        table: &str,
        column: &str,
        rewrites: &[Rewrite],
    ) -> Result<Vec<bool>> {
        let mut applied = Vec::with_capacity(rewrites.len());
        match self {
            AppDb::Sqlite(p) => {
                let text = format!(
                    "UPDATE {} SET {c} = $1 WHERE rowid = $2 AND {c} = $3",
                    q(table),
                    c = q(column)
                );
                let mut tx = p.begin().await?;
                for w in rewrites {
                    let RowPos::Rowid(id) = w.pos else {
                        applied.push(false);
                        continue;
                    };
                    let r = sqlx::query(&text)
                        .bind(&w.new)
                        .bind(id)
                        .bind(&w.old)
                        .execute(&mut *tx)
                        .await?;
                    applied.push(r.rows_affected() == 1);
                }
                tx.commit().await?;
            }
            AppDb::Postgres(p) => {
                // The column may be text or varchar: compare and assign as text.
                let text = format!(
                    "UPDATE {} SET {c} = $1 WHERE tableoid = $2::bigint::oid AND ctid = $3::tid AND {c}::text = $4",
                    q(table),
                    c = q(column)
                );
                let mut tx = p.begin().await?;
                for w in rewrites {
                    let RowPos::Tuple { table_oid, ctid } = &w.pos else {
                        applied.push(false);
                        continue;
                    };
                    let r = sqlx::query(&text)
                        .bind(&w.new)
                        .bind(table_oid)
                        .bind(ctid)
                        .bind(&w.old)
                        .execute(&mut *tx)
                        .await?;
                    applied.push(r.rows_affected() == 1);
                }
                tx.commit().await?;
            }
        }
        Ok(applied)
    }
}

impl AppDb {
    /// How an operator finds a row the walk met: its primary key as
    /// `col=value, …`, or its position when the table has none. Never any
    /// other column (the value itself may be personal data).
    pub async fn row_key(&self, table: &str, pos: &RowPos) -> Result<String> {
        let columns: Vec<String> = match self {
            AppDb::Sqlite(p) => {
                sqlx::query_scalar(
                    "SELECT name FROM pragma_table_info($1) WHERE pk > 0 ORDER BY pk",
                )
                .bind(table)
                .fetch_all(p)
                .await?
            }
            AppDb::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT a.attname::text FROM pg_index i
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                     WHERE i.indrelid = to_regclass($1) AND i.indisprimary
                     ORDER BY array_position(i.indkey::int2[], a.attnum)",
                )
                .bind(q(table))
                .fetch_all(p)
                .await?
            }
        };
        if columns.is_empty() {
            return Ok(pos.to_string());
        }
        let mut sql = self.sql();
        let parts: Vec<String> = columns
            .iter()
            .map(|c| {
                format!(
                    "{} || '=' || coalesce({}, 'NULL')",
                    sql.placeholder(Bind::Text(c.clone())),
                    sql.as_text(c)
                )
            })
            .collect();
        let expr = parts.join(" || ', ' || ");
        let found: Option<String> = match (self, pos) {
            (AppDb::Sqlite(p), RowPos::Rowid(id)) => {
                let text = format!(
                    "SELECT {expr} FROM {} WHERE rowid = {}",
                    q(table),
                    sql.placeholder(Bind::Int(*id))
                );
                sqlx::query_scalar_with(&text, sqlite_args(sql.binds)?)
                    .fetch_optional(p)
                    .await?
            }
            (AppDb::Postgres(p), RowPos::Tuple { table_oid, ctid }) => {
                let text = format!(
                    "SELECT {expr} FROM {} WHERE tableoid::bigint = {} AND ctid = {}::tid",
                    q(table),
                    sql.placeholder(Bind::Int(*table_oid)),
                    sql.placeholder(Bind::Text(ctid.clone()))
                );
                sqlx::query_scalar_with(&text, pg_args(sql.binds)?)
                    .fetch_optional(p)
                    .await?
            }
            _ => None,
        };
        Ok(found.unwrap_or_else(|| pos.to_string()))
    }
}
