//! Rows that reference files in the application's object stores: read with
//! their positions and keys before they are deleted, deleted by position
//! (only while still in scope), and asked whether any row still references
//! a key (a file is deleted only when none does).

use sqlx::Row;

use super::ciphertexts::RowPos;
use super::scope::{pg_args, sqlite_args, Bind, Dialect};
use super::{quote_ident as q, AppDb, Deleted, Scope};
use crate::error::Result;

/// One row in scope: where it is, its org, and its object keys (one per
/// object column, `None` where empty).
#[derive(Debug, Clone)]
pub struct ObjectRow {
    pub pos: RowPos,
    pub org: Option<String>,
    pub keys: Vec<Option<String>>,
}

impl AppDb {
    /// Up to `limit` rows in scope with their object keys.
    pub async fn object_rows(
        &self,
        s: &Scope,
        columns: &[String],
        limit: u32,
    ) -> Result<Vec<ObjectRow>> {
        let mut sql = self.sql();
        let w = sql.where_clause(s);
        let org = match &s.org {
            Some(o) => sql.as_text(o),
            None => "NULL".into(),
        };
        let keys: Vec<String> = columns.iter().map(|c| sql.as_text(c)).collect();
        let keys = keys.join(", ");
        let t = q(&s.table);
        macro_rules! rows {
            ($pool:expr, $args:ident, $pos:literal, $take_pos:expr) => {{
                let text = format!(
                    "SELECT {}, {org}, {keys} FROM {t} WHERE {w} LIMIT {limit}",
                    $pos
                );
                let rows = sqlx::query_with(&text, $args(sql.binds)?)
                    .fetch_all($pool)
                    .await?;
                let width = 1 + $pos.matches(", ").count();
                rows.iter()
                    .map(|r| {
                        let keys = (0..columns.len())
                            .map(|i| r.try_get::<Option<String>, _>(width + 1 + i))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                        Ok(ObjectRow {
                            pos: $take_pos(r)?,
                            org: r.try_get(width)?,
                            keys,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }};
        }
        Ok(match self {
            AppDb::Postgres(p) => rows!(
                p,
                pg_args,
                "tableoid::bigint, ctid",
                |r: &sqlx::postgres::PgRow| -> Result<RowPos> {
                    Ok(RowPos::Tuple {
                        table_oid: r.try_get(0)?,
                        ctid: r.try_get(1)?,
                    })
                }
            ),
            AppDb::Sqlite(p) => rows!(
                p,
                sqlite_args,
                "rowid",
                |r: &sqlx::sqlite::SqliteRow| -> Result<RowPos> {
                    Ok(RowPos::Rowid(r.try_get(0)?))
                }
            ),
        })
    }

    /// Deletes the rows at `positions` that are still in scope, in one
    /// transaction, rolled back when that would exceed `budget`.
    pub async fn delete_rows_at(
        &self,
        s: &Scope,
        positions: &[RowPos],
        budget: u64,
    ) -> Result<Deleted> {
        let mut sql = self.sql();
        let w = sql.where_clause(s);
        let t = q(&s.table);
        let text = match sql.dialect {
            Dialect::Postgres => {
                let tids: Vec<String> = positions
                    .iter()
                    .filter_map(|p| match p {
                        RowPos::Tuple { ctid, .. } => Some(ctid.to_string()),
                        _ => None,
                    })
                    .collect();
                let pairs: Vec<String> = positions
                    .iter()
                    .filter_map(|p| match p {
                        RowPos::Tuple { table_oid, ctid } => Some(format!("{table_oid}:{ctid}")),
                        _ => None,
                    })
                    .collect();
                let tids = sql.placeholder(Bind::List(tids));
                let pairs = sql.placeholder(Bind::List(pairs));
                // `ctid = ANY` keeps the TID scan; the pair tells partitions apart.
                format!("DELETE FROM {t} WHERE ctid = ANY({tids}::tid[])
                           AND (tableoid::bigint::text || ':' || ctid::text) = ANY({pairs}) AND {w}")
            }
            Dialect::Sqlite => {
                let ids: Vec<String> = positions
                    .iter()
                    .filter_map(|p| match p {
                        RowPos::Rowid(id) => Some(id.to_string()),
                        _ => None,
                    })
                    .collect();
                let ids = sql.placeholder(Bind::List(ids));
                format!(
                    "DELETE FROM {t} WHERE rowid IN (SELECT value FROM json_each({ids})) AND {w}"
                )
            }
        };
        self.delete_within_budget(&text, sql, budget, s.append_only)
            .await
    }

    /// Which of `keys` some row of `table` still holds in `column`.
    pub async fn still_referenced(
        &self,
        table: &str,
        column: &str,
        keys: &[String],
    ) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = self.sql();
        let inl = sql.in_list(column, keys);
        let text = format!(
            "SELECT DISTINCT {} FROM {} WHERE {inl}",
            sql.as_text(column),
            q(table)
        );
        Ok(on_pool!(self, sql, query_scalar_with(&text), fetch_all))
    }
}

impl AppDb {
    /// The subject's object keys in `table.column` with each row's org (as
    /// text), of the rows `scope` reaches (not those of held orgs, which an
    /// erasure keeps).
    pub async fn subject_object_keys(
        &self,
        table: &str,
        subject: &str,
        org: Option<&str>,
        column: &str,
        subject_id: &str,
        scope: super::OrgScope<'_>,
    ) -> Result<Vec<(String, String)>> {
        let t = self.column_type(table, subject).await?;
        let mut sql = self.sql();
        let mut cond = super::subject::eq_param(&mut sql, subject, t.as_deref(), subject_id);
        if let Some(c) = scope.cond(&mut sql, org) {
            cond = format!("{cond} AND {c}");
        }
        let org_text = match org {
            Some(o) => format!("coalesce({}, '')", sql.as_text(o)),
            None => "''".into(),
        };
        let text = format!(
            "SELECT {org_text}, {} FROM {} WHERE {cond} AND {} IS NOT NULL",
            sql.as_text(column),
            q(table),
            q(column)
        );
        macro_rules! pairs {
            ($pool:expr, $args:ident) => {{
                let rows = sqlx::query_with(&text, $args(sql.binds)?)
                    .fetch_all($pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<Vec<(String, String)>>>()?
            }};
        }
        Ok(match self {
            AppDb::Postgres(p) => pairs!(p, pg_args),
            AppDb::Sqlite(p) => pairs!(p, sqlite_args),
        })
    }
}
