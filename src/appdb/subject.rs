//! A data subject in the application database: lookup, sole-owner check,
//! export of mapped rows, and erasure in one transaction.

use std::collections::BTreeMap;

use sqlx::{Acquire, Executor};

use super::scope::{pg_args, sqlite_args, Bind, Dialect, Sql};
use super::{quote_ident as q, AppDb};
use crate::config::{AppMapping, MembershipsTable};
use crate::error::{Error, Result};
use crate::fence::Fence;

/// One table's erasure step, as the data map says.
#[derive(Debug, Clone)]
pub struct EraseStep {
    pub table: String,
    pub subject: String,
    pub org: Option<String>,
    pub action: EraseAction,
}

#[derive(Debug, Clone)]
pub enum EraseAction {
    Delete,
    /// column → new value. Values are computed by the caller (pseudonyms).
    Update(Vec<(String, NewValue)>),
}

/// What an anonymised column becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewValue {
    Null,
    Text(String),
    /// An encrypted column's value, sealed per org (org as text → value):
    /// each row gets its own org's; a row of an org not listed (no usable
    /// key) gets `otherwise`, in plaintext. A NULL stays NULL.
    PerOrg {
        sealed: Vec<(String, String)>,
        otherwise: String,
    },
}

#[derive(Debug)]
pub enum EraseOutcome {
    /// Rows changed per table (deleted or anonymised), and rows kept for held orgs.
    Done {
        changed: BTreeMap<String, u64>,
        kept_for_holds: BTreeMap<String, u64>,
    },
    /// The subject became the sole owner of these orgs since intake.
    SoleOwner(Vec<String>),
}

/// Which of a subject's rows an erasure or an export reaches, by their org.
#[derive(Debug, Clone, Copy)]
pub enum OrgScope<'a> {
    /// Every row but those of these (held) orgs; a row without an org is never held.
    AllExcept(&'a [String]),
    /// Only the rows of this org (a processor-scoped request): a table
    /// without an org column has none.
    Only(&'a str),
}

impl<'a> OrgScope<'a> {
    /// A request's reach, held orgs aside: its org's rows only, or every org's.
    pub fn of_request(org: Option<&'a str>) -> OrgScope<'a> {
        match org {
            Some(o) => OrgScope::Only(o),
            None => OrgScope::AllExcept(&[]),
        }
    }

    /// The org a processor-scoped request is limited to.
    pub fn only(&self) -> Option<&str> {
        match self {
            OrgScope::Only(o) => Some(o),
            OrgScope::AllExcept(_) => None,
        }
    }

    /// Held orgs whose rows stay, when a table has an org column to tell them by.
    fn held_in(&self, org: Option<&str>) -> Option<&[String]> {
        match (self, org) {
            (OrgScope::AllExcept(held), Some(_)) if !held.is_empty() => Some(held),
            _ => None,
        }
    }

    /// The condition that keeps a table's rows (org column `org`) within scope.
    pub(super) fn cond(&self, sql: &mut Sql, org: Option<&str>) -> Option<String> {
        match (self, org) {
            (OrgScope::Only(o), Some(col)) => Some(sql.in_list(col, &[o.to_string()])),
            (OrgScope::Only(_), None) => Some("1 = 0".into()),
            (OrgScope::AllExcept(_), Some(col)) => self.held_in(org).map(|held| {
                let held = sql.in_list(col, held);
                format!("({} IS NULL OR NOT ({held}))", q(col))
            }),
            (OrgScope::AllExcept(_), None) => None,
        }
    }
}

/// What `erase_sql` renders for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepSql {
    Apply,
    CountAll,
    CountHeld,
}

/// `col = value` with the value bound as text: on PostgreSQL the parameter is
/// cast to the column's own type so the column's index can be used.
pub(super) fn eq_param(sql: &mut Sql, col: &str, pg_type: Option<&str>, value: &str) -> String {
    let ph = sql.placeholder(Bind::Text(value.to_string()));
    match (sql.dialect, pg_type) {
        (Dialect::Postgres, Some(t)) => format!("{} = {ph}::{t}", q(col)),
        (Dialect::Postgres, None) => format!("{}::text = {ph}", q(col)),
        // SQLite applies the column's affinity to the text operand by itself.
        (Dialect::Sqlite, _) => format!("{} = {ph}", q(col)),
    }
}

impl AppDb {
    /// A column's type as PostgreSQL spells it (from the catalog, never from input); None on SQLite.
    pub async fn column_type(&self, table: &str, col: &str) -> Result<Option<String>> {
        Ok(match self {
            AppDb::Postgres(p) => sqlx::query_scalar(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = current_schema() AND c.relname = $1 AND a.attname = $2 AND NOT a.attisdropped",
            )
            .bind(table)
            .bind(col)
            .fetch_optional(p)
            .await?,
            AppDb::Sqlite(_) => None,
        })
    }

    /// The subject's id (as text) for an email, case-insensitively.
    pub async fn subject_id(&self, app: &AppMapping, email: &str) -> Result<Option<String>> {
        Ok(self
            .subject_ids(&app.subjects, &[email.to_string()])
            .await?
            .into_iter()
            .next())
    }

    /// Every org's id and closure time (`closed_at` as the database prints it, parsed).
    pub async fn orgs_with_closure(
        &self,
        orgs: &crate::config::OrgsTable,
    ) -> Result<Vec<(String, Option<chrono::DateTime<chrono::Utc>>)>> {
        let sql = self.sql();
        let id = sql.as_text(&orgs.id);
        let closed = match &orgs.closed_at {
            Some(c) => sql.as_text(c),
            None => "NULL".into(),
        };
        let text = format!("SELECT {id}, {closed} FROM {} ORDER BY 1", q(&orgs.table));
        let rows: Vec<(String, Option<String>)> = match self {
            AppDb::Postgres(p) => sqlx::query_as(&text).fetch_all(p).await?,
            AppDb::Sqlite(p) => sqlx::query_as(&text).fetch_all(p).await?,
        };
        Ok(rows
            .into_iter()
            .map(|(id, c)| (id, c.and_then(|c| parse_db_time(&c))))
            .collect())
    }

    /// Ids and (lower-cased) emails of the subjects `keep(id, email)` accepts.
    /// Rows are streamed, so memory holds only the matches, whatever the table's size.
    pub async fn subjects_matching(
        &self,
        app: &AppMapping,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<(String, String)>> {
        use futures_util::TryStreamExt;
        let sql = self.sql();
        let id = sql.as_text(&app.subjects.id);
        let text = format!(
            "SELECT {id}, lower({}) FROM {}",
            q(&app.subjects.email),
            q(&app.subjects.table)
        );
        let mut out = Vec::new();
        macro_rules! scan {
            ($pool:expr) => {{
                let mut rows = sqlx::query_as::<_, (String, String)>(&text).fetch($pool);
                while let Some((id, email)) = rows.try_next().await? {
                    if keep(&id, &email) {
                        out.push((id, email));
                    }
                }
            }};
        }
        match self {
            AppDb::Postgres(p) => scan!(p),
            AppDb::Sqlite(p) => scan!(p),
        }
        Ok(out)
    }

    /// After erasures, on SQLite: rebuild the file, because B-tree interior
    /// pages keep copies of index keys (an erased email among them) that
    /// `secure_delete` does not reach. PostgreSQL's old row versions go with
    /// its (auto)vacuum. Returns whether a rebuild ran.
    pub async fn compact_after_erasure(&self) -> Result<bool> {
        match self {
            AppDb::Postgres(_) => Ok(false),
            AppDb::Sqlite(p) => {
                sqlx::query("VACUUM").execute(p).await?;
                Ok(true)
            }
        }
    }

    /// The orgs (as text) of the subject's rows in `table`.
    pub async fn subject_orgs(
        &self,
        table: &str,
        subject: &str,
        org: &str,
        subject_id: &str,
    ) -> Result<Vec<String>> {
        let t = self.column_type(table, subject).await?;
        let mut sql = self.sql();
        let cond = eq_param(&mut sql, subject, t.as_deref(), subject_id);
        let text = format!(
            "SELECT DISTINCT {} FROM {} WHERE {cond} AND {} IS NOT NULL",
            sql.as_text(org),
            q(table),
            q(org)
        );
        Ok(on_pool!(self, sql, query_scalar_with(&text), fetch_all))
    }

    /// Whether the subject is a member of `org` (false without `[app.memberships]`).
    pub async fn is_member(&self, app: &AppMapping, org: &str, subject_id: &str) -> Result<bool> {
        let Some(m) = &app.memberships else {
            return Ok(false);
        };
        let t = self.column_type(&m.table, &m.subject).await?;
        let mut sql = self.sql();
        let subject = eq_param(&mut sql, &m.subject, t.as_deref(), subject_id);
        let org_col = sql.as_text(&m.org);
        let ph = sql.placeholder(Bind::Text(org.to_string()));
        let text = format!(
            "SELECT count(*) FROM {} WHERE {subject} AND {org_col} = {ph}",
            q(&m.table)
        );
        let n: i64 = on_pool!(self, sql, query_scalar_with(&text), fetch_one);
        Ok(n > 0)
    }

    /// Orgs (open ones, where closure is mapped; `only` this one, if given)
    /// whose only owner is this subject.
    pub async fn sole_owned_orgs(
        &self,
        app: &AppMapping,
        subject_id: &str,
        only: Option<&str>,
    ) -> Result<Vec<String>> {
        let Some(m) = &app.memberships else {
            return Ok(vec![]);
        };
        let t = self.column_type(&m.table, &m.subject).await?;
        let (text, sql) = self.sole_owner_sql(app, m, (subject_id, only), t.as_deref(), false);
        Ok(on_pool!(self, sql, query_scalar_with(&text), fetch_all))
    }

    fn sole_owner_sql(
        &self,
        app: &AppMapping,
        m: &MembershipsTable,
        (subject_id, only): (&str, Option<&str>),
        subject_type: Option<&str>,
        lock: bool,
    ) -> (String, Sql) {
        let mut sql = self.sql();
        let subject_cond = eq_param(&mut sql, &m.subject, subject_type, subject_id);
        let owner = sql.in_list(&m.role, &m.owner_roles);
        let owner2 = sql.in_list(&m.role, &m.owner_roles);
        let open = match app
            .orgs
            .as_ref()
            .and_then(|o| o.closed_at.as_ref().map(|c| (o, c)))
        {
            Some((o, closed)) => format!(
                " AND m.{org} IN (SELECT {id} FROM {t} WHERE {c} IS NULL)",
                org = q(&m.org),
                id = q(&o.id),
                t = q(&o.table),
                c = q(closed)
            ),
            None => String::new(),
        };
        let org_text = match sql.dialect {
            Dialect::Postgres => format!("m.{}::text", q(&m.org)),
            Dialect::Sqlite => format!("CAST(m.{} AS TEXT)", q(&m.org)),
        };
        let only = match only {
            Some(o) => format!(
                " AND {org_text} = {}",
                sql.placeholder(Bind::Text(o.into()))
            ),
            None => String::new(),
        };
        // Qualified copies of the role/subject tests for the aliased tables.
        let owner = owner.replacen(&q(&m.role), &format!("m.{}", q(&m.role)), 1);
        let owner2 = owner2.replacen(&q(&m.role), &format!("m2.{}", q(&m.role)), 1);
        let subject = subject_cond.replacen(&q(&m.subject), &format!("m.{}", q(&m.subject)), 1);
        let lock = if lock && matches!(sql.dialect, Dialect::Postgres) {
            " FOR UPDATE OF m"
        } else {
            ""
        };
        let text = format!(
            "SELECT {org_text} FROM {t} m WHERE {subject} AND {owner}{open}{only}
               AND (SELECT count(*) FROM {t} m2 WHERE m2.{org} = m.{org} AND {owner2}) = 1
             ORDER BY 1{lock}",
            t = q(&m.table),
            org = q(&m.org),
        );
        (text, sql)
    }

    /// Every mapped row of the subject in `table` (org column `org`) within
    /// `scope`, each as a JSON object (text), streamed through a bounded
    /// channel: memory stays flat whatever the subject's row count.
    pub async fn subject_rows(
        &self,
        (table, org): (&str, Option<&str>),
        subject_col: &str,
        subject_id: &str,
        scope: OrgScope<'_>,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<String>>> {
        let ty = self.column_type(table, subject_col).await?;
        let mut sql = self.sql();
        let mut cond = eq_param(&mut sql, subject_col, ty.as_deref(), subject_id);
        if let Some(c) = scope.cond(&mut sql, org) {
            cond = format!("{cond} AND {c}");
        }
        self.json_rows(table, &cond, sql).await
    }

    /// Erases one subject in a single transaction: re-checks sole ownership
    /// inside it (with row locks on PostgreSQL), then applies every step to
    /// the rows `scope` reaches (not those of held orgs; only one org's for a
    /// processor-scoped request). Each step must change exactly the subject's
    /// rows in scope, counted in the same transaction; any
    /// other count rolls the whole erasure back. `before_commit` is checked
    /// last, so an attempt that lost its lease commits nothing.
    pub async fn erase_subject(
        &self,
        app: &AppMapping,
        subject_id: &str,
        steps: &[EraseStep],
        scope: OrgScope<'_>,
        before_commit: &Fence,
    ) -> Result<EraseOutcome> {
        let (owner_type, types) = self.erase_column_types(app, steps).await?;
        // The same steps on either driver; only the transaction and argument types differ.
        macro_rules! erase_in {
            ($tx:ident, $args:ident, $marked:expr) => {{
                if let Some(m) = &app.memberships {
                    let who = (subject_id, scope.only());
                    let (text, sql) = self.sole_owner_sql(app, m, who, owner_type.as_deref(), true);
                    let orgs: Vec<String> = sqlx::query_scalar_with(&text, $args(sql.binds)?)
                        .fetch_all(&mut *$tx)
                        .await?;
                    if !orgs.is_empty() {
                        return Ok(EraseOutcome::SoleOwner(orgs));
                    }
                }
                let mut changed = BTreeMap::new();
                let mut kept = BTreeMap::new();
                for (step, ty) in steps.iter().zip(&types) {
                    let count = |part| self.erase_sql(step, ty.as_deref(), subject_id, scope, part);
                    let (text, sql) = count(StepSql::CountAll);
                    let total: i64 = sqlx::query_scalar_with(&text, $args(sql.binds)?)
                        .fetch_one(&mut *$tx)
                        .await?;
                    let mut k = 0i64;
                    if scope.held_in(step.org.as_deref()).is_some() {
                        let (text, sql) = count(StepSql::CountHeld);
                        k = sqlx::query_scalar_with(&text, $args(sql.binds)?)
                            .fetch_one(&mut *$tx)
                            .await?;
                        kept.insert(step.table.clone(), k.max(0) as u64);
                    }
                    let (text, sql) = count(StepSql::Apply);
                    let n = $tx
                        .execute(sqlx::query_with(&text, $args(sql.binds)?))
                        .await?
                        .rows_affected();
                    let expected = u64::try_from(total - k).unwrap_or(0);
                    if n != expected {
                        // Dropping the transaction rolls every step back.
                        return Err(Error::Failed(format!(
                            "erasure in `{}` changed {n} of the subject's {expected} row(s) in scope; \
                             nothing was applied (does a trigger or rule on the table skip or add rows?)",
                            step.table
                        )));
                    }
                    changed.insert(step.table.clone(), n);
                }
                if $marked {
                    sqlx::query(super::guard::SQLITE_UNMARK).execute(&mut *$tx).await?;
                }
                before_commit.check()?;
                $tx.commit().await?;
                Ok(EraseOutcome::Done {
                    changed,
                    kept_for_holds: kept,
                })
            }};
        }
        match self {
            AppDb::Postgres(p) => {
                let mut conn = p.acquire().await?;
                let mut tx = conn.begin().await?;
                erase_in!(tx, pg_args, false)
            }
            AppDb::Sqlite(p) => {
                // IMMEDIATE: take the write lock before the sole-owner re-check reads.
                let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
                let marked = super::guard::sqlite_mark(&mut tx).await;
                erase_in!(tx, sqlite_args, marked)
            }
        }
    }

    /// The owner column's type and each step's subject column type, read
    /// before the erasure's transaction: parameters are cast to them.
    async fn erase_column_types(
        &self,
        app: &AppMapping,
        steps: &[EraseStep],
    ) -> Result<(Option<String>, Vec<Option<String>>)> {
        let owner_type = match &app.memberships {
            Some(m) => self.column_type(&m.table, &m.subject).await?,
            None => None,
        };
        let mut types = Vec::with_capacity(steps.len());
        for s in steps {
            types.push(self.column_type(&s.table, &s.subject).await?);
        }
        Ok((owner_type, types))
    }

    /// The statement for one step, or a count of the subject's rows in its
    /// table (all of them in reach of a processor-scoped request's org, or
    /// those a hold keeps).
    fn erase_sql(
        &self,
        step: &EraseStep,
        subject_type: Option<&str>,
        subject_id: &str,
        scope: OrgScope<'_>,
        part: StepSql,
    ) -> (String, Sql) {
        let mut sql = self.sql();
        let mut cond = eq_param(&mut sql, &step.subject, subject_type, subject_id);
        let count = |cond: &str| format!("SELECT count(*) FROM {} WHERE {cond}", q(&step.table));
        match (part, scope.held_in(step.org.as_deref()), &step.org) {
            (StepSql::CountAll, _, _) if scope.only().is_none() => return (count(&cond), sql),
            (StepSql::CountHeld, Some(held), Some(org)) => {
                let held = sql.in_list(org, held);
                return (count(&format!("{cond} AND {held}")), sql);
            }
            _ => {}
        }
        if let Some(c) = scope.cond(&mut sql, step.org.as_deref()) {
            cond = format!("{cond} AND {c}");
        }
        if part == StepSql::CountAll {
            return (count(&cond), sql);
        }
        let text = match &step.action {
            EraseAction::Delete => format!("DELETE FROM {} WHERE {cond}", q(&step.table)),
            EraseAction::Update(cols) => {
                let sets: Vec<String> = cols
                    .iter()
                    .map(|(c, v)| format!("{} = {}", q(c), new_value(&mut sql, step, c, v)))
                    .collect();
                format!(
                    "UPDATE {} SET {} WHERE {cond}",
                    q(&step.table),
                    sets.join(", ")
                )
            }
        };
        (text, sql)
    }
}

/// The SQL expression an anonymised column is set to.
fn new_value(sql: &mut Sql, step: &EraseStep, column: &str, v: &NewValue) -> String {
    match (v, &step.org) {
        (NewValue::Text(t), _) => sql.placeholder(Bind::Text(t.clone())),
        (NewValue::PerOrg { sealed, otherwise }, org) => {
            let mut case = format!("CASE WHEN {} IS NULL THEN NULL", q(column));
            for (o, t) in org
                .iter()
                .flat_map(|org| sealed.iter().map(move |s| (org, s)))
            {
                let when = sql.in_list(o, std::slice::from_ref(&t.0));
                let then = sql.placeholder(Bind::Text(t.1.clone()));
                case.push_str(&format!(" WHEN {when} THEN {then}"));
            }
            let otherwise = sql.placeholder(Bind::Text(otherwise.clone()));
            format!("{case} ELSE {otherwise} END")
        }
        (NewValue::Null, _) => "NULL".into(),
    }
}

/// Timestamps as PostgreSQL and SQLite print them ("2026-01-02 03:04:05+00", "2026-01-02 03:04:05", RFC 3339).
fn parse_db_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Utc.from_utc_datetime(&t))
}
