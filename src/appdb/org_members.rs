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
            use futures_util::TryStreamExt;
            let sent = async {
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
            }
            .await;
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
        let member = format!(
            "CAST({mt}.{} AS TEXT) = CAST({st}.{} AS TEXT) AND CAST({mt}.{} AS TEXT) <> {ph}",
            q(&m.subject),
            q(&s.id),
            q(&m.org)
        );
        let text = format!(
            "UPDATE {st} SET {col} = (SELECT {mt}.{morg} FROM {mt} WHERE {member} ORDER BY {mt}.{morg} LIMIT 1)
             WHERE CAST({st}.{col} AS TEXT) = {ph} AND EXISTS (SELECT 1 FROM {mt} WHERE {member})",
            col = q(org_col),
            morg = q(&m.org),
        );
        Ok(match self {
            AppDb::Postgres(p) => sqlx::query_with(&text, pg_args(sql.binds)?)
                .execute(p)
                .await?
                .rows_affected(),
            AppDb::Sqlite(p) => sqlx::query_with(&text, sqlite_args(sql.binds)?)
                .execute(p)
                .await?
                .rows_affected(),
        })
    }
}
