//! Encrypted columns read in batches and rewritten in place, for
//! `keys.reencrypt`. Rows are walked in physical order (`rowid` on SQLite,
//! `(tableoid, ctid)` on PostgreSQL, which tells partitions apart) from a
//! saved position, so a rescued run resumes where the last batch committed.
//! On PostgreSQL each batch is a range of pages of one relation (a TID range
//! scan, PostgreSQL 14+), so a batch costs its pages whatever the table's
//! size. A row rewritten there may reappear later in the walk under a new
//! `ctid`; it is then already current and skipped, so the walk ends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::scope::{pg_args, sqlite_args, Bind};
use super::{quote_ident as q, AppDb, Tid};
use crate::error::Result;

/// Where a walk over a table stands: after this row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowPos {
    Start,
    Rowid(i64),
    Tuple { table_oid: i64, ctid: Tid },
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

/// What a PostgreSQL walk keeps besides its position: each relation's size
/// in pages when the walk entered it (checkpointed with the position), and
/// the relations as last read from the catalog (read again as the walk
/// enters each relation, not per batch).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Walk {
    ends: BTreeMap<i64, i64>,
    #[serde(skip)]
    relations: Vec<(i64, String, i64, f64)>,
}

impl Walk {
    /// Which relation the walk is in: the first at or after `oid`. The
    /// catalog is read as the walk enters a relation (a partition attached
    /// meanwhile is then seen), not per batch.
    async fn relation(
        &mut self,
        p: &sqlx::PgPool,
        table: &str,
        oid: i64,
        entering: bool,
    ) -> Result<Option<usize>> {
        if self.relations.is_empty() || entering {
            self.relations = sqlx::query_as(PG_RELATIONS)
                .bind(q(table))
                .fetch_all(p)
                .await?;
        }
        Ok(self.relations.iter().position(|r| r.0 >= oid))
    }
}

/// One batch of the walk and where the next one starts (`None`: the walk is done).
#[derive(Debug)]
pub struct CipherBatch {
    pub rows: Vec<CipherRow>,
    pub next: Option<RowPos>,
}

/// The relations a PostgreSQL table's rows live in, by oid, with their size
/// in pages now: the table itself when it holds rows, its partitions, and
/// its inheritance children (a query on the parent reads theirs too), at
/// every depth; a partitioned table or partition of partitions holds none.
const PG_RELATIONS: &str = "WITH RECURSIVE tree(oid) AS (
        SELECT to_regclass($1)::oid
        UNION SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid)
     SELECT c.oid::bigint, c.oid::regclass::text,
        (pg_relation_size(c.oid) / current_setting('block_size')::bigint)::bigint,
        CASE WHEN c.reltuples > 0 AND c.relpages > 0 THEN c.reltuples::float8 / c.relpages ELSE 100 END
   FROM pg_class c JOIN tree t ON c.oid = t.oid
  WHERE c.relkind = 'r'
  ORDER BY 1";

impl AppDb {
    /// The next batch of non-NULL values of `column` from `after`, in walk
    /// order: about `limit` rows by rowid on SQLite; on PostgreSQL a range of
    /// pages of one relation sized to hold about `limit` rows (a TID range
    /// scan: each batch costs its pages, not the table).
    pub async fn cipher_rows(
        &self,
        table: &str,
        org_column: &str,
        column: &str,
        after: &RowPos,
        limit: u32,
        walk: &mut Walk,
    ) -> Result<CipherBatch> {
        match self {
            AppDb::Sqlite(p) => {
                self.cipher_rows_sqlite(p, table, org_column, column, after, limit)
                    .await
            }
            AppDb::Postgres(p) => {
                let at = (org_column, column);
                self.cipher_rows_pg(p, table, at, after, limit, walk).await
            }
        }
    }

    async fn cipher_rows_sqlite(
        &self,
        p: &sqlx::SqlitePool,
        table: &str,
        org_column: &str,
        column: &str,
        after: &RowPos,
        limit: u32,
    ) -> Result<CipherBatch> {
        let mut sql = self.sql();
        let (org, col) = (sql.as_text(org_column), sql.as_text(column));
        let not_null = format!("{} IS NOT NULL", q(column));
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
        let rows = rows
            .iter()
            .map(|r| {
                Ok(CipherRow {
                    pos: RowPos::Rowid(r.try_get(0)?),
                    org: r.try_get(1)?,
                    value: r.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let next = match rows.last() {
            Some(last) if rows.len() == limit as usize => Some(last.pos.clone()),
            _ => None,
        };
        Ok(CipherBatch { rows, next })
    }

    /// `ends`: each relation's size in pages when the walk entered it. Rows
    /// the walk's own rewrites move past it are current already, and reading
    /// them again would double the walk.
    async fn cipher_rows_pg(
        &self,
        p: &sqlx::PgPool,
        table: &str,
        (org_column, column): (&str, &str),
        after: &RowPos,
        limit: u32,
        walk: &mut Walk,
    ) -> Result<CipherBatch> {
        let mut sql = self.sql();
        let (org, col) = (sql.as_text(org_column), sql.as_text(column));
        let not_null = format!("{} IS NOT NULL", q(column));
        // Where the walk stands: every row of earlier relations, and of
        // this one up to this tid, is done.
        let (oid, done_to) = match after {
            RowPos::Tuple { table_oid, ctid } => (*table_oid, *ctid),
            _ => (i64::MIN, Tid::page_start(0)),
        };
        let entering = done_to.page == 0;
        let Some(at) = walk.relation(p, table, oid, entering).await? else {
            return Ok(CipherBatch {
                rows: Vec::new(),
                next: None,
            });
        };
        let Walk {
            ends,
            relations: rels,
        } = walk;
        let (rel_oid, rel, pages_now, per_page) = &rels[at];
        let pages = &*ends.entry(*rel_oid).or_insert(*pages_now);
        let done_to = if *rel_oid == oid {
            done_to
        } else {
            Tid::page_start(0)
        };
        // At most about `limit` rows: one rewrite transaction per window.
        let span = (f64::from(limit) / per_page.max(1.0))
            .floor()
            .clamp(1.0, 1e9) as u32;
        let end = Tid::page_start(done_to.page.saturating_add(span));
        // `rel` is the catalog's own quoting of the relation's name.
        let text = format!(
            "SELECT ctid, {org}, {col} FROM ONLY {rel} WHERE {not_null}
             AND ctid > {}::tid AND ctid < {}::tid",
            sql.placeholder(Bind::Text(done_to.to_string())),
            sql.placeholder(Bind::Text(end.to_string()))
        );
        let found = sqlx::query_with(&text, pg_args(sql.binds)?)
            .fetch_all(p)
            .await?;
        let rows = found
            .iter()
            .map(|r| {
                Ok(CipherRow {
                    pos: RowPos::Tuple {
                        table_oid: *rel_oid,
                        ctid: r.try_get(0)?,
                    },
                    org: r.try_get(1)?,
                    value: r.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let next = if i64::from(end.page) < *pages {
            Some(RowPos::Tuple {
                table_oid: *rel_oid,
                ctid: end,
            })
        } else {
            rels.get(at + 1).map(|r| RowPos::Tuple {
                table_oid: r.0,
                ctid: Tid::page_start(0),
            })
        };
        Ok(CipherBatch { rows, next })
    }

    /// Applies a batch of rewrites in one transaction; a value the
    /// application changed meanwhile is left alone. Returns, per rewrite,
    /// whether it applied.
    pub async fn cipher_rewrite(
        &self,
        table: &str,
        column: &str,
        rewrites: Vec<Rewrite>,
    ) -> Result<Vec<bool>> {
        match self {
            AppDb::Sqlite(p) => {
                let text = format!(
                    "UPDATE {} SET {c} = $1 WHERE rowid = $2 AND {c} = $3",
                    q(table),
                    c = q(column)
                );
                let mut applied = Vec::with_capacity(rewrites.len());
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
                Ok(applied)
            }
            AppDb::Postgres(p) => cipher_rewrite_pg(p, column, rewrites).await,
        }
    }
}

/// One relation's share of a batch: the rewrites' places in the batch, and
/// their tids, old and new values as the statement binds them.
#[derive(Default)]
struct RelationRewrites {
    index: Vec<usize>,
    tids: Vec<String>,
    olds: Vec<String>,
    news: Vec<String>,
}

/// One `UPDATE ONLY` per relation (a batch's rewrites lie in one, so
/// usually a single statement, atomic without a transaction around it).
async fn cipher_rewrite_pg(
    p: &sqlx::PgPool,
    column: &str,
    rewrites: Vec<Rewrite>,
) -> Result<Vec<bool>> {
    let mut applied = vec![false; rewrites.len()];
    let mut by_rel: BTreeMap<i64, RelationRewrites> = BTreeMap::new();
    for (i, w) in rewrites.into_iter().enumerate() {
        if let RowPos::Tuple { table_oid, ctid } = w.pos {
            let r = by_rel.entry(table_oid).or_default();
            r.index.push(i);
            r.tids.push(ctid.to_string());
            r.olds.push(w.old);
            r.news.push(w.new);
        }
    }
    // The column may be text or varchar: compare and assign as text. The
    // ordinality says which rewrites applied, without sending tids back.
    // The tids go as text and are cast in the statement: given a `tid[]`
    // itself, the planner weighs the array and may pick a sequential scan
    // of the whole relation (measured: 2-3 times slower on 1 M rows); a cast
    // it cannot weigh keeps the TID scan.
    let update = |rel: &str| {
        format!(
            "UPDATE ONLY {rel} AS t SET {c} = v.new
               FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS v(tid, old, new, i)
              WHERE t.ctid = ANY($1::text[]::tid[]) AND t.ctid = v.tid::tid AND t.{c}::text = v.old
             RETURNING v.i",
            c = q(column)
        )
    };
    let mut tx = if by_rel.len() > 1 {
        Some(p.begin().await?)
    } else {
        None
    };
    for (oid, r) in by_rel {
        // The catalog's own quoting of the relation's name.
        let name = sqlx::query_scalar("SELECT $1::bigint::oid::regclass::text").bind(oid);
        let rel: String = match tx.as_mut() {
            Some(tx) => name.fetch_one(&mut **tx).await?,
            None => name.fetch_one(p).await?,
        };
        let text = update(&rel);
        let query = sqlx::query_scalar(&text)
            .bind(&r.tids)
            .bind(&r.olds)
            .bind(&r.news);
        let done: Vec<i64> = match tx.as_mut() {
            Some(tx) => query.fetch_all(&mut **tx).await?,
            None => query.fetch_all(p).await?,
        };
        for i in done {
            let at = usize::try_from(i - 1).ok().and_then(|k| r.index.get(k));
            if let Some(at) = at {
                applied[*at] = true;
            }
        }
    }
    if let Some(tx) = tx {
        tx.commit().await?;
    }
    Ok(applied)
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
                    sql.placeholder(Bind::Text(ctid.to_string()))
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
