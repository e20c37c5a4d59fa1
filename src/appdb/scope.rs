//! A set of application rows (`Scope`) rendered to SQL for each dialect:
//! counted by org, or deleted in bounded batches. Identifiers are quoted,
//! values bound; org and subject ids are compared as text so that integer,
//! UUID and text keys all work.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Arguments;

use super::timeform::{older_than, TimeForm};
use super::{guard, quote_ident as q, AppDb};
use crate::error::Result;

#[derive(Debug, Clone)]
pub enum Selector {
    /// Rows whose `column` (stored as `form`) is older than `cutoff`.
    Before {
        column: String,
        cutoff: DateTime<Utc>,
        form: TimeForm,
    },
    /// Rows of orgs closed before `cutoff` (`closed_at` stored as `form`).
    OrgClosed {
        orgs_table: String,
        orgs_id: String,
        closed_at: String,
        cutoff: DateTime<Utc>,
        form: TimeForm,
    },
    /// Rows whose subject column is one of these ids.
    Subjects(Vec<String>),
    /// Every row of these orgs (an org's own deletion).
    Orgs(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Scope {
    pub table: String,
    pub org: Option<String>,
    pub subject: Option<String>,
    /// Rows matching any of these.
    pub selectors: Vec<Selector>,
    /// Only rows of these orgs (e.g. one org with an override); `None`: all orgs.
    pub only_orgs: Option<Vec<String>>,
    pub exclude_orgs: Vec<String>,
    pub exclude_subjects: Vec<String>,
    /// Restricts the scope to one time window (a batch of a windowed purge).
    pub range: Option<TimeWindow>,
    /// The table carries the append-only guard (`appdb::guard`): on SQLite
    /// Lethe's deletes mark their transaction so its trigger lets them through.
    pub append_only: bool,
}

impl Scope {
    /// Every row of `org` in the data map's table `e` (an org's own deletion).
    pub fn of_org(e: &crate::config::DataMapEntry, org: &str) -> Scope {
        Scope {
            table: e.table.clone(),
            org: e.org.clone(),
            subject: e.subject.clone(),
            selectors: vec![Selector::Orgs(vec![org.to_string()])],
            only_orgs: None,
            exclude_orgs: vec![],
            exclude_subjects: vec![],
            range: None,
            append_only: e.append_only,
        }
    }
}

/// `lower <= column < upper`: one time window of a purge; an open
/// end is unbounded.
#[derive(Debug, Clone, Default)]
pub struct TimeWindow {
    pub column: String,
    pub lower: Option<DateTime<Utc>>,
    pub upper: Option<DateTime<Utc>>,
}

/// How a purge slices a large delete on this database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slicing {
    /// PostgreSQL keeps deleted rows in the index until vacuum, so `LIMIT`
    /// batches that each start from the oldest row would crawl over them:
    /// walk the timestamp range in windows instead.
    TimeWindows,
    /// SQLite drops index entries at once: `rowid IN (… LIMIT n)` stays cheap.
    RowBatches,
}

/// What one budgeted delete statement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Committed, this many rows.
    Rows(u64),
    /// It would have deleted more rows than its budget: rolled back, nothing deleted.
    OverBudget(u64),
    /// It would have run longer than its time limit: rolled back, nothing deleted.
    TooSlow,
}

#[derive(Clone, Copy)]
pub(super) enum Dialect {
    Postgres,
    Sqlite,
}

pub(super) enum Bind {
    Time(DateTime<Utc>),
    Text(String),
    Int(i64),
    Real(f64),
    List(Vec<String>),
}

pub(super) struct Sql {
    pub(super) dialect: Dialect,
    pub(super) binds: Vec<Bind>,
}

impl Sql {
    pub(super) fn placeholder(&mut self, b: Bind) -> String {
        self.binds.push(b);
        let n = self.binds.len();
        match (self.dialect, self.binds.last()) {
            (Dialect::Postgres, Some(Bind::List(_))) => format!("${n}::text[]"),
            _ => format!("${n}"),
        }
    }

    pub(super) fn as_text(&self, col: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("{}::text", q(col)),
            Dialect::Sqlite => format!("CAST({} AS TEXT)", q(col)),
        }
    }

    pub(super) fn in_list(&mut self, col: &str, values: &[String]) -> String {
        let expr = self.as_text(col);
        let ph = self.placeholder(Bind::List(values.to_vec()));
        match self.dialect {
            Dialect::Postgres => format!("{expr} = ANY({ph})"),
            Dialect::Sqlite => format!("{expr} IN (SELECT value FROM json_each({ph}))"),
        }
    }

    fn selector(&mut self, s: &Scope, sel: &Selector) -> String {
        match sel {
            Selector::Before {
                column,
                cutoff,
                form,
            } => older_than(self, column, *cutoff, *form),
            Selector::OrgClosed {
                orgs_table,
                orgs_id,
                closed_at,
                cutoff,
                form,
            } => match &s.org {
                Some(org) => {
                    let closed = older_than(self, closed_at, *cutoff, *form);
                    format!(
                        "{} IN (SELECT {} FROM {} WHERE {c} IS NOT NULL AND {closed})",
                        q(org),
                        q(orgs_id),
                        q(orgs_table),
                        c = q(closed_at)
                    )
                }
                None => "1 = 0".into(),
            },
            Selector::Subjects(ids) => match &s.subject {
                Some(col) => self.in_list(col, ids),
                None => "1 = 0".into(),
            },
            Selector::Orgs(ids) => match &s.org {
                Some(col) => self.in_list(col, ids),
                None => "1 = 0".into(),
            },
        }
    }

    fn range(&mut self, r: &TimeWindow) -> Vec<String> {
        let mut parts = Vec::new();
        if let Some(v) = r.lower {
            let ph = self.placeholder(Bind::Time(v));
            parts.push(format!("{} >= {ph}", q(&r.column)));
        }
        if let Some(v) = r.upper {
            let ph = self.placeholder(Bind::Time(v));
            parts.push(format!("{} < {ph}", q(&r.column)));
        }
        parts
    }

    pub(super) fn where_clause(&mut self, s: &Scope) -> String {
        let mut parts = Vec::new();
        let any: Vec<String> = s
            .selectors
            .iter()
            .map(|sel| self.selector(s, sel))
            .collect();
        parts.push(if any.is_empty() {
            "1 = 0".to_string()
        } else {
            format!("({})", any.join(" OR "))
        });
        if let Some(r) = &s.range {
            parts.extend(self.range(r));
        }
        if let (Some(only), Some(org)) = (&s.only_orgs, &s.org) {
            parts.push(self.in_list(org, only));
        }
        if let (false, Some(org)) = (s.exclude_orgs.is_empty(), &s.org) {
            let inl = self.in_list(org, &s.exclude_orgs);
            parts.push(format!("({} IS NULL OR NOT ({inl}))", q(org)));
        }
        if let (false, Some(sub)) = (s.exclude_subjects.is_empty(), &s.subject) {
            let inl = self.in_list(sub, &s.exclude_subjects);
            parts.push(format!("({} IS NULL OR NOT ({inl}))", q(sub)));
        }
        parts.join(" AND ")
    }
}

pub(super) fn pg_args(binds: Vec<Bind>) -> Result<sqlx::postgres::PgArguments> {
    let mut a = sqlx::postgres::PgArguments::default();
    for b in binds {
        let r = match b {
            Bind::Time(t) => a.add(t),
            Bind::Text(s) => a.add(s),
            Bind::Int(i) => a.add(i),
            Bind::Real(f) => a.add(f),
            Bind::List(v) => a.add(v),
        };
        r.map_err(sqlx::Error::Encode)?;
    }
    Ok(a)
}

pub(super) fn sqlite_args(binds: Vec<Bind>) -> Result<sqlx::sqlite::SqliteArguments<'static>> {
    let mut a = sqlx::sqlite::SqliteArguments::default();
    for b in binds {
        let r = match b {
            // The application's own text timestamps: SQLite's `datetime()` format.
            Bind::Time(t) => a.add(t.format("%Y-%m-%d %H:%M:%S").to_string()),
            Bind::Text(s) => a.add(s),
            Bind::Int(i) => a.add(i),
            Bind::Real(f) => a.add(f),
            Bind::List(v) => a.add(serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())),
        };
        r.map_err(sqlx::Error::Encode)?;
    }
    Ok(a)
}

impl AppDb {
    pub(super) fn sql(&self) -> Sql {
        Sql {
            dialect: match self {
                AppDb::Postgres(_) => Dialect::Postgres,
                AppDb::Sqlite(_) => Dialect::Sqlite,
            },
            binds: Vec::new(),
        }
    }

    /// Rows in scope, by org (as text; `None` for rows without an org).
    pub async fn count_by_org(&self, s: &Scope) -> Result<Vec<(Option<String>, i64)>> {
        let mut sql = self.sql();
        let org = s.org.as_deref().map_or("NULL".to_string(), q);
        let w = sql.where_clause(s);
        // Group the raw values and cast once per group, not once per row.
        let key = match sql.dialect {
            Dialect::Postgres => "o::text",
            Dialect::Sqlite => "CAST(o AS TEXT)",
        };
        let text = format!(
            "SELECT {key}, n FROM (SELECT {org} AS o, count(*) AS n FROM {} WHERE {w} GROUP BY 1) g ORDER BY 1",
            q(&s.table)
        );
        Ok(on_pool!(self, sql, query_as_with(&text), fetch_all))
    }

    pub fn slicing(&self) -> Slicing {
        match self {
            AppDb::Postgres(_) => Slicing::TimeWindows,
            AppDb::Sqlite(_) => Slicing::RowBatches,
        }
    }

    /// Deletes at most `limit` rows in scope in one short statement. The
    /// statement runs in its own transaction, rolled back when it deleted more
    /// than `budget` rows: then nothing went and the caller decides.
    pub async fn delete_batch(&self, s: &Scope, limit: u32, budget: u64) -> Result<Deleted> {
        let mut sql = self.sql();
        let t = q(&s.table);
        let w = sql.where_clause(s);
        // The outer statement checks the scope again, so a row can only go if it is in scope.
        let again = sql.where_clause(s);
        // No primary key needed, and a row updated meanwhile is simply taken next batch.
        // A ctid is unique only within one table: a partitioned or inherited table
        // repeats it in every partition and child, so the row is `(tableoid, ctid)`.
        // The `ctid = ANY` keeps the TID scan; the pair then drops other tables' rows.
        let delete = match sql.dialect {
            Dialect::Postgres => format!(
                "WITH batch AS MATERIALIZED (SELECT tableoid AS rel, ctid AS tid FROM {t} WHERE {w} LIMIT {limit})
                 DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT tid FROM batch))
                   AND (tableoid, ctid) IN (SELECT rel, tid FROM batch) AND {again}"
            ),
            Dialect::Sqlite => format!(
                "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE {w} LIMIT {limit}) AND {again}"
            ),
        };
        self.delete_within_budget(&delete, sql, budget.min(u64::from(limit)), s.append_only)
            .await
    }

    /// Runs one DELETE in its own transaction, rolled back when it deleted
    /// more than `budget` rows: then nothing went and the caller decides.
    pub(super) async fn delete_within_budget(
        &self,
        delete: &str,
        sql: Sql,
        budget: u64,
        append_only: bool,
    ) -> Result<Deleted> {
        // The same transaction on either driver; only the argument type differs,
        // and SQLite marks an append-only table's deletes as Lethe's (`guard`).
        macro_rules! within_budget {
            ($pool:expr, $args:ident, $mark:expr) => {{
                let mut tx = $pool.begin().await?;
                // No marker table: no guard installed, nothing to let through.
                let marked = $mark
                    && sqlx::query(guard::SQLITE_MARK)
                        .execute(&mut *tx)
                        .await
                        .is_ok();
                let n = sqlx::query_with(delete, $args(sql.binds)?)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if marked {
                    sqlx::query(guard::SQLITE_UNMARK).execute(&mut *tx).await?;
                }
                if n > budget {
                    tx.rollback().await?;
                    Deleted::OverBudget(n)
                } else {
                    tx.commit().await?;
                    Deleted::Rows(n)
                }
            }};
        }
        Ok(match self {
            AppDb::Postgres(p) => within_budget!(p, pg_args, false),
            AppDb::Sqlite(p) => within_budget!(p, sqlite_args, append_only),
        })
    }

    /// Deletes every row in scope (bound it with `scope.range`) in one
    /// transaction that may last at most `limit` and delete at most `budget`
    /// rows; otherwise it is rolled back and nothing was deleted. SQLite has
    /// no statement timeout; there the time limit is not enforced.
    pub async fn delete_within(&self, s: &Scope, limit: Duration, budget: u64) -> Result<Deleted> {
        let mut sql = self.sql();
        let w = sql.where_clause(s);
        let delete = format!("DELETE FROM {} WHERE {w}", q(&s.table));
        match self {
            AppDb::Postgres(p) => {
                let mut tx = p.begin().await?;
                // SET takes no bind parameters; the value is an integer we computed.
                let ms = limit.as_millis().max(1);
                sqlx::query(&format!("SET LOCAL statement_timeout = {ms}"))
                    .execute(&mut *tx)
                    .await?;
                match sqlx::query_with(&delete, pg_args(sql.binds)?)
                    .execute(&mut *tx)
                    .await
                {
                    Ok(done) if done.rows_affected() > budget => {
                        tx.rollback().await?;
                        Ok(Deleted::OverBudget(done.rows_affected()))
                    }
                    Ok(done) => {
                        tx.commit().await?;
                        Ok(Deleted::Rows(done.rows_affected()))
                    }
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("57014") => {
                        tx.rollback().await?;
                        Ok(Deleted::TooSlow)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            AppDb::Sqlite(p) => {
                let mut tx = p.begin().await?;
                let marked = s.append_only && guard::sqlite_mark(&mut tx).await;
                let n = sqlx::query_with(&delete, sqlite_args(sql.binds)?)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if marked {
                    sqlx::query(guard::SQLITE_UNMARK).execute(&mut *tx).await?;
                }
                if n > budget {
                    tx.rollback().await?;
                    Ok(Deleted::OverBudget(n))
                } else {
                    tx.commit().await?;
                    Ok(Deleted::Rows(n))
                }
            }
        }
    }

    /// Rows in scope (no grouping: an index-only count where the database can).
    pub async fn count(&self, s: &Scope) -> Result<i64> {
        let mut sql = self.sql();
        let w = sql.where_clause(s);
        let text = format!("SELECT count(*) FROM {} WHERE {w}", q(&s.table));
        Ok(on_pool!(self, sql, query_scalar_with(&text), fetch_one))
    }

    /// The oldest value of `column` in scope, read from its index: where the
    /// next time window starts. PostgreSQL only (see [`Slicing`]).
    pub async fn first_time(&self, s: &Scope, column: &str) -> Result<Option<DateTime<Utc>>> {
        let mut sql = self.sql();
        let w = sql.where_clause(s);
        let text = format!(
            "SELECT min({c})::timestamptz FROM {} WHERE {w}",
            q(&s.table),
            c = q(column)
        );
        match self {
            AppDb::Postgres(p) => Ok(sqlx::query_scalar_with(&text, pg_args(sql.binds)?)
                .fetch_one(p)
                .await?),
            AppDb::Sqlite(_) => Err(crate::error::Error::Failed(
                "time windows are for PostgreSQL; SQLite purges in row batches".into(),
            )),
        }
    }

    /// Subject ids (as text) for these emails, matched case-insensitively.
    pub async fn subject_ids(
        &self,
        subjects: &crate::config::SubjectsTable,
        emails: &[String],
    ) -> Result<Vec<String>> {
        if emails.is_empty() {
            return Ok(vec![]);
        }
        let lowered: Vec<String> = emails.iter().map(|e| e.to_lowercase()).collect();
        // Exact match first (uses the email index applications have); then case-insensitively.
        for folded in [false, true] {
            let mut sql = self.sql();
            let id = sql.as_text(&subjects.id);
            let ph = sql.placeholder(Bind::List(lowered.clone()));
            let col = if folded {
                format!("lower({})", q(&subjects.email))
            } else {
                q(&subjects.email)
            };
            let cond = match sql.dialect {
                Dialect::Postgres => format!("{col} = ANY({ph})"),
                Dialect::Sqlite => format!("{col} IN (SELECT value FROM json_each({ph}))"),
            };
            let text = format!("SELECT {id} FROM {} WHERE {cond}", q(&subjects.table));
            let found: Vec<String> = on_pool!(self, sql, query_scalar_with(&text), fetch_all);
            if !found.is_empty() || folded {
                return Ok(found);
            }
        }
        Ok(vec![])
    }

    /// Whether the org exists: in `[app.orgs]` when mapped, else as a value
    /// of some org-scoped table of `tables`.
    pub async fn org_known(
        &self,
        orgs: Option<&crate::config::OrgsTable>,
        tables: &[&crate::config::DataMapEntry],
        org: &str,
    ) -> Result<bool> {
        if let Some(o) = orgs {
            return self.org_exists(o, org).await;
        }
        for e in tables.iter().filter(|e| e.org.is_some()) {
            if self.count(&Scope::of_org(e, org)).await? > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the org exists in `[app.orgs]`.
    pub async fn org_exists(&self, orgs: &crate::config::OrgsTable, org: &str) -> Result<bool> {
        let mut sql = self.sql();
        let id = sql.as_text(&orgs.id);
        let ph = sql.placeholder(Bind::Text(org.to_string()));
        let text = format!("SELECT count(*) FROM {} WHERE {id} = {ph}", q(&orgs.table));
        let n: i64 = on_pool!(self, sql, query_scalar_with(&text), fetch_one);
        Ok(n > 0)
    }
}
