//! Reads and changes of one org's rows as a whole: its rows streamed out
//! for an export, and what its deletion does to the people in it (an
//! account whose org column names the departing org but which is still a
//! member of another org moves to that org, the lowest id of its remaining
//! memberships, so it survives while every row naming the departing org goes).

use super::scope::{pg_args, sqlite_args, Bind};
use super::{quote_ident as q, AppDb};
use crate::config::AppMapping;
use crate::error::Result;

/// Rows in flight between the database and the export's writer, at most.
const ROWS_IN_FLIGHT: usize = 1_024;

impl AppDb {
    /// Every row of `org` in `table` (org column `org_col`), each a JSON
    /// object (text), streamed through a bounded channel: memory stays flat
    /// whatever the org's size. An error ends the stream as its last item.
    pub async fn org_rows(
        &self,
        table: &str,
        org_col: &str,
        org: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<String>>> {
        let mut sql = self.sql();
        let cond = sql.in_list(org_col, &[org.to_string()]);
        self.json_rows(table, &cond, sql).await
    }

    /// The rows of `table` matching `cond` (whose parameters `sql` binds),
    /// each a JSON object (text), streamed through a bounded channel; an
    /// error ends the stream as its last item.
    pub(super) async fn json_rows(
        &self,
        table: &str,
        cond: &str,
        sql: super::scope::Sql,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<String>>> {
        let text = match self {
            AppDb::Postgres(_) => format!(
                "SELECT row_to_json(t)::text FROM {} t WHERE {cond}",
                q(table)
            ),
            AppDb::Sqlite(_) => {
                let cols = self.columns(table).await?.unwrap_or_default();
                let pairs: Vec<String> = cols
                    .iter()
                    .map(|c| format!("'{}', {}", c.replace('\'', "''"), q(c)))
                    .collect();
                format!(
                    "SELECT json_object({}) FROM {} WHERE {cond}",
                    pairs.join(", "),
                    q(table)
                )
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(ROWS_IN_FLIGHT);
        let db = self.clone();
        tokio::spawn(async move {
            use futures_util::{FutureExt, TryStreamExt};
            let sent = std::panic::AssertUnwindSafe(async {
                match &db {
                    AppDb::Postgres(p) => {
                        let mut rows =
                            sqlx::query_scalar_with::<_, String, _>(&text, pg_args(sql.binds)?)
                                .fetch(p);
                        while let Some(row) = rows.try_next().await? {
                            if tx.send(Ok(row)).await.is_err() {
                                break; // the reader gave up
                            }
                        }
                    }
                    AppDb::Sqlite(p) => {
                        let mut rows =
                            sqlx::query_scalar_with::<_, String, _>(&text, sqlite_args(sql.binds)?)
                                .fetch(p);
                        while let Some(row) = rows.try_next().await? {
                            if tx.send(Ok(row)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                Ok::<_, crate::error::Error>(())
            })
            .catch_unwind()
            .await
            // A crash must end the stream as an error, never as a complete table.
            .unwrap_or_else(|_| {
                Err(crate::error::Error::Failed(
                    "reading the rows crashed".into(),
                ))
            });
            if let Err(e) = sent {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    /// Re-homes the subjects-table rows of `org` (its column `org_col`) that
    /// have a membership elsewhere; returns how many moved. Without
    /// `[app.memberships]` nobody is known to belong elsewhere: none move.
    pub async fn rehome_members(&self, app: &AppMapping, org_col: &str, org: &str) -> Result<u64> {
        let Some(m) = &app.memberships else {
            return Ok(0);
        };
        let s = &app.subjects;
        let mut sql = self.sql();
        let ph = sql.placeholder(Bind::Text(org.to_string()));
        let (st, mt) = (q(&s.table), q(&m.table));
        let member = member_elsewhere(app, m, &ph);
        let text = format!(
            "UPDATE {st} SET {col} = (SELECT {mt}.{morg} FROM {mt} WHERE {member} ORDER BY {mt}.{morg} LIMIT 1)
             WHERE CAST({st}.{col} AS TEXT) = {ph} AND EXISTS (SELECT 1 FROM {mt} WHERE {member})",
            col = q(org_col),
            morg = q(&m.org),
        );
        self.execute(&text, sql).await
    }

    /// The subjects-table rows of `org` that have a membership elsewhere:
    /// (id, the org they move to, the values of `columns`), as text.
    pub async fn members_to_move(
        &self,
        app: &AppMapping,
        org_col: &str,
        org: &str,
        columns: &[String],
    ) -> Result<Vec<(String, String, Vec<Option<String>>)>> {
        let Some(m) = &app.memberships else {
            return Ok(vec![]);
        };
        let s = &app.subjects;
        let mut sql = self.sql();
        let ph = sql.placeholder(Bind::Text(org.to_string()));
        let (st, mt) = (q(&s.table), q(&m.table));
        let member = member_elsewhere(app, m, &ph);
        let cols: String = columns
            .iter()
            .map(|c| format!(", CAST({st}.{} AS TEXT)", q(c)))
            .collect();
        let text = format!(
            "SELECT CAST({st}.{id} AS TEXT),
                    (SELECT CAST({mt}.{morg} AS TEXT) FROM {mt} WHERE {member} ORDER BY {mt}.{morg} LIMIT 1){cols}
             FROM {st} WHERE CAST({st}.{col} AS TEXT) = {ph} AND EXISTS (SELECT 1 FROM {mt} WHERE {member})",
            id = q(&s.id),
            col = q(org_col),
            morg = q(&m.org),
        );
        let rows = match self {
            AppDb::Postgres(p) => sqlx::query_with(&text, pg_args(sql.binds)?)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(|r| text_row(&r, columns.len()))
                .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?,
            AppDb::Sqlite(p) => sqlx::query_with(&text, sqlite_args(sql.binds)?)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(|r| text_row(&r, columns.len()))
                .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?,
        };
        Ok(rows)
    }

    /// Moves one subjects-table row from `org` to `to`, writing `values`
    /// (column, new text) in the same statement; false when it was not there.
    pub async fn move_member(
        &self,
        app: &AppMapping,
        org_col: &str,
        (org, to): (&str, &str),
        id: &str,
        values: &[(String, String)],
    ) -> Result<bool> {
        let s = &app.subjects;
        let mut sql = self.sql();
        let target = sql.placeholder(Bind::Text(to.to_string()));
        // Cast to the column's own type: PostgreSQL will not assign text to an integer column.
        let to_col = match self {
            AppDb::Postgres(_) => format!(
                "CAST({target} AS {})",
                self.column_type(&s.table, org_col)
                    .await?
                    .unwrap_or_else(|| "text".into())
            ),
            AppDb::Sqlite(_) => target,
        };
        let mut sets = vec![format!("{} = {to_col}", q(org_col))];
        for (c, v) in values {
            let ph = sql.placeholder(Bind::Text(v.clone()));
            sets.push(format!("{} = {ph}", q(c)));
        }
        let idp = sql.placeholder(Bind::Text(id.to_string()));
        let orgp = sql.placeholder(Bind::Text(org.to_string()));
        let text = format!(
            "UPDATE {} SET {} WHERE CAST({} AS TEXT) = {idp} AND CAST({} AS TEXT) = {orgp}",
            q(&s.table),
            sets.join(", "),
            q(&s.id),
            q(org_col)
        );
        Ok(self.execute(&text, sql).await? == 1)
    }
}

impl AppDb {
    /// Runs one statement; the rows it changed.
    async fn execute(&self, text: &str, sql: super::scope::Sql) -> Result<u64> {
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

/// The condition "this subjects-table row's subject is a member of an org
/// other than `{org_ph}`", for a subquery over the memberships table.
fn member_elsewhere(app: &AppMapping, m: &crate::config::MembershipsTable, org_ph: &str) -> String {
    let (st, mt) = (q(&app.subjects.table), q(&m.table));
    format!(
        "CAST({mt}.{} AS TEXT) = CAST({st}.{} AS TEXT) AND CAST({mt}.{} AS TEXT) <> {org_ph}",
        q(&m.subject),
        q(&app.subjects.id),
        q(&m.org)
    )
}

/// A row of text columns: id, target org, then the values.
fn text_row<R: sqlx::Row>(
    r: &R,
    values: usize,
) -> std::result::Result<(String, String, Vec<Option<String>>), sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let mut vals = Vec::with_capacity(values);
    for i in 0..values {
        vals.push(r.try_get::<Option<String>, _>(i + 2)?);
    }
    Ok((r.try_get(0)?, r.try_get(1)?, vals))
}
