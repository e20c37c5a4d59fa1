//! Rectification on the application database: the subject's values in mapped
//! columns set to what they asked for, every table in one transaction, or
//! nothing at all.

use std::collections::BTreeMap;

use sqlx::{Connection, Executor};

use super::scope::{pg_args, sqlite_args, Bind, Sql};
use super::subject::{eq_param, OrgScope};
use super::{quote_ident as q, AppDb};
use crate::error::Result;
use crate::fence::Fence;

/// One table's corrections: the columns and values, and how its rows name
/// the subject and the org.
pub struct TableCorrections<'a> {
    pub table: &'a str,
    pub subject: &'a str,
    pub org: Option<&'a str>,
    pub sets: Vec<(&'a str, &'a str)>,
}

pub enum RectifyOutcome {
    /// Committed: rows changed per table.
    Done(BTreeMap<String, u64>),
    /// A table holds other than exactly one of the subject's rows in scope, so
    /// one value per column cannot say which row it corrects: nothing changed.
    NotOneRow { table: String, rows: u64 },
}

impl AppDb {
    /// The first value that its column's type does not take: (table.column,
    /// type). PostgreSQL casts each value as the UPDATE will; SQLite's columns
    /// take any value.
    pub async fn misfit_value(
        &self,
        tables: &[TableCorrections<'_>],
    ) -> Result<Option<(String, String)>> {
        let AppDb::Postgres(p) = self else {
            return Ok(None);
        };
        for t in tables {
            for (col, value) in &t.sets {
                let Some((ty, max_chars)) = self.base_type(t.table, col).await? else {
                    continue;
                };
                let name = format!("{}.{col}", t.table);
                if let Some(max) = max_chars.filter(|m| value.chars().count() > *m as usize) {
                    return Ok(Some((name, format!("{ty} of at most {max} characters"))));
                }
                let fits = sqlx::query(&format!("SELECT CAST($1::text AS {ty})"))
                    .bind(*value)
                    .execute(p)
                    .await
                    .is_ok();
                if !fits {
                    return Ok(Some((name, ty)));
                }
            }
        }
        Ok(None)
    }

    /// A column's type without its modifier (`character varying`, not
    /// `character varying(255)`) and its length limit, if any. An explicit
    /// cast to `varchar(255)` cuts a longer value short without a word; the
    /// assignment to the column checks the length instead (an error). None on
    /// SQLite, whose columns take any value.
    async fn base_type(&self, table: &str, col: &str) -> Result<Option<(String, Option<i32>)>> {
        let AppDb::Postgres(p) = self else {
            return Ok(None);
        };
        Ok(sqlx::query_as(
            "SELECT format_type(a.atttypid, NULL),
                    CASE WHEN a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype) AND a.atttypmod > 4
                         THEN a.atttypmod - 4 END
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relname = $1 AND a.attname = $2 AND NOT a.attisdropped",
        )
        .bind(table)
        .bind(col)
        .fetch_optional(p)
        .await?)
    }

    /// Sets the corrections in one transaction. With `one_row`, a table
    /// holding other than exactly one of the subject's rows in scope stops
    /// it all (a restore's re-application sets every such row instead).
    pub async fn rectify(
        &self,
        subject_id: &str,
        tables: &[TableCorrections<'_>],
        (scope, one_row): (OrgScope<'_>, bool),
        before_commit: &Fence,
    ) -> Result<RectifyOutcome> {
        let mut types = Vec::new();
        for t in tables {
            let subject_type = self.column_type(t.table, t.subject).await?;
            let mut cols = Vec::new();
            for (c, _) in &t.sets {
                cols.push(self.base_type(t.table, c).await?.map(|(ty, _)| ty));
            }
            types.push((subject_type, cols));
        }
        macro_rules! rectify_in {
            ($tx:ident, $args:ident) => {{
                let mut changed = BTreeMap::new();
                for (t, types) in tables.iter().zip(&types) {
                    let ((count, count_sql), (update, update_sql)) =
                        self.rectify_sql(t, types, subject_id, scope);
                    let rows: i64 = sqlx::query_scalar_with(&count, $args(count_sql.binds)?)
                        .fetch_one(&mut *$tx)
                        .await?;
                    let rows = u64::try_from(rows).unwrap_or(0);
                    if one_row && rows != 1 {
                        return Ok(RectifyOutcome::NotOneRow { table: t.table.to_string(), rows });
                    }
                    let n = $tx
                        .execute(sqlx::query_with(&update, $args(update_sql.binds)?))
                        .await?
                        .rows_affected();
                    if n != rows {
                        return Err(crate::error::Error::Failed(format!(
                            "rectifying `{}` changed {n} of the subject's {rows} row(s); nothing was applied \
                             (does a trigger or rule on the table skip or add rows?)",
                            t.table
                        )));
                    }
                    changed.insert(t.table.to_string(), n);
                }
                before_commit.check()?;
                $tx.commit().await?;
                Ok(RectifyOutcome::Done(changed))
            }};
        }
        match self {
            AppDb::Postgres(p) => {
                let mut conn = p.acquire().await?;
                let mut tx = conn.begin().await?;
                rectify_in!(tx, pg_args)
            }
            AppDb::Sqlite(p) => {
                let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
                rectify_in!(tx, sqlite_args)
            }
        }
    }

    /// One table's statements: the count of the subject's rows in scope, and
    /// the UPDATE (PostgreSQL casts each value to its column's catalog type).
    fn rectify_sql(
        &self,
        t: &TableCorrections<'_>,
        (subject_type, col_types): &(Option<String>, Vec<Option<String>>),
        subject_id: &str,
        scope: OrgScope<'_>,
    ) -> ((String, Sql), (String, Sql)) {
        let cond = |sql: &mut Sql| {
            let mut cond = eq_param(sql, t.subject, subject_type.as_deref(), subject_id);
            if let Some(c) = scope.cond(sql, t.org) {
                cond = format!("{cond} AND {c}");
            }
            cond
        };
        let mut count_sql = self.sql();
        let count = format!(
            "SELECT count(*) FROM {} WHERE {}",
            q(t.table),
            cond(&mut count_sql)
        );
        // The condition's parameters first, then the values.
        let mut sql = self.sql();
        let where_ = cond(&mut sql);
        let sets: Vec<String> = t
            .sets
            .iter()
            .zip(col_types)
            .map(|((c, v), ty)| {
                let ph = sql.placeholder(Bind::Text(v.to_string()));
                match ty {
                    Some(ty) => format!("{} = CAST({ph}::text AS {ty})", q(c)),
                    None => format!("{} = {ph}", q(c)),
                }
            })
            .collect();
        let update = format!(
            "UPDATE {} SET {} WHERE {where_}",
            q(t.table),
            sets.join(", ")
        );
        ((count, count_sql), (update, sql))
    }
}
