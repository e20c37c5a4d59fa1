//! Checks the data map against the live schema: every table and column it
//! names must exist; timestamp columns should be indexed.

use super::AppDb;
use crate::config::{Config, Erasure};
use crate::error::{Error, Result};

#[derive(Debug, Clone, serde::Serialize)]
pub struct SchemaProblem {
    /// `lethe.toml:LINE` of the entry.
    pub location: String,
    pub table: String,
    pub message: String,
    /// Errors stop `check` and `run` (exit 2); warnings only inform.
    pub fatal: bool,
}

impl AppDb {
    /// Column names of `table`, or `None` when it does not exist.
    pub async fn columns(&self, table: &str) -> Result<Option<Vec<String>>> {
        let cols: Vec<String> = match self {
            AppDb::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(p)
                .await?
            }
            AppDb::Sqlite(p) => sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                .bind(table)
                .fetch_all(p)
                .await?,
        };
        Ok((!cols.is_empty()).then_some(cols))
    }

    /// Whether some index on `table` starts with `column` (what a range purge needs).
    pub async fn has_leading_index(&self, table: &str, column: &str) -> Result<bool> {
        Ok(match self {
            AppDb::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (
                     SELECT 1 FROM pg_index i
                     JOIN pg_class c ON c.oid = i.indrelid
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
                     WHERE n.nspname = current_schema() AND c.relname = $1 AND a.attname = $2)",
                )
                .bind(table)
                .bind(column)
                .fetch_one(p)
                .await?
            }
            AppDb::Sqlite(p) => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pragma_index_list($1) il, pragma_index_info(il.name) ii
                     WHERE ii.seqno = 0 AND ii.name = $2",
                )
                .bind(table)
                .bind(column)
                .fetch_one(p)
                .await?;
                n > 0
            }
        })
    }
}

/// The check every job and command that touches the application database
/// runs first: a config error (exit 2) naming the entry when the data map or
/// `[app]` mapping does not fit the live schema (on SQLite a misspelt column
/// in double quotes would silently become a string literal). Returns the
/// warnings.
pub async fn preflight(config: &Config, db: &AppDb) -> Result<Vec<SchemaProblem>> {
    let problems = check_data_map(db, config).await?;
    if let Some(p) = problems.iter().find(|p| p.fatal) {
        return Err(Error::Config {
            path: p.location.clone().into(),
            line: None,
            column: None,
            message: format!("data_map entry `{}`: {}", p.table, p.message),
        });
    }
    Ok(problems.into_iter().filter(|p| !p.fatal).collect())
}

impl AppDb {
    /// Partitions and inheritance children of `table` (at any depth) that hold
    /// rows but no index starting with `column`: an index on a parent does not
    /// cover its children unless it is a partitioned index. PostgreSQL only.
    pub async fn unindexed_children(&self, table: &str, column: &str) -> Result<Vec<String>> {
        let AppDb::Postgres(p) = self else {
            return Ok(vec![]);
        };
        Ok(sqlx::query_scalar(
            "WITH RECURSIVE kids(oid) AS (
               SELECT i.inhrelid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = current_schema() AND c.relname = $1
               UNION SELECT i.inhrelid FROM pg_inherits i JOIN kids k ON i.inhparent = k.oid)
             SELECT c.relname::text FROM kids k JOIN pg_class c ON c.oid = k.oid
             WHERE c.relkind = 'r' AND NOT EXISTS (
               SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = c.oid AND a.attname = $2)
             ORDER BY 1",
        )
        .bind(table)
        .bind(column)
        .fetch_all(p)
        .await?)
    }
}

/// Every problem with the data map and `[app]` mapping against the live schema.
/// The tables and columns the config names, each with where it is named.
type Wanted = Vec<(String, String, Vec<(String, String)>)>;

pub async fn check_data_map(db: &AppDb, config: &Config) -> Result<Vec<SchemaProblem>> {
    let mut problems = missing_columns(db, wanted_columns(config)).await?;
    unindexed_timestamps(db, config, &mut problems).await?;
    Ok(problems)
}

fn wanted_columns(config: &Config) -> Wanted {
    let cfg_loc = config.path.display().to_string();
    let need = |location: &str, table: &str, columns: Vec<(&str, &str)>| {
        let cols: Vec<(String, String)> = columns
            .into_iter()
            .map(|(k, c)| (k.to_string(), c.to_string()))
            .collect();
        (location.to_string(), table.to_string(), cols)
    };
    let mut wanted = Vec::new();
    if let Some(app) = &config.app {
        let s = &app.subjects;
        wanted.push(need(
            &cfg_loc,
            &s.table,
            vec![("app.subjects.id", &s.id), ("app.subjects.email", &s.email)],
        ));
        if let Some(o) = &app.orgs {
            let mut cols = vec![("app.orgs.id", o.id.as_str())];
            if let Some(c) = &o.closed_at {
                cols.push(("app.orgs.closed_at", c));
            }
            wanted.push(need(&cfg_loc, &o.table, cols));
        }
        if let Some(m) = &app.memberships {
            wanted.push(need(
                &cfg_loc,
                &m.table,
                vec![
                    ("app.memberships.org", &m.org),
                    ("app.memberships.subject", &m.subject),
                    ("app.memberships.role", &m.role),
                ],
            ));
        }
        if let Some(k) = &app.keys {
            wanted.push(need(
                &cfg_loc,
                &k.table,
                vec![
                    ("app.keys.org", &k.org),
                    ("app.keys.version", &k.version),
                    ("app.keys.wrapped_key", &k.wrapped_key),
                    ("app.keys.kms_key_id", &k.kms_key_id),
                    ("app.keys.state", &k.state),
                    ("app.keys.created_at", &k.created_at),
                ],
            ));
        }
    }
    for e in &config.data_map {
        let mut cols: Vec<(&str, &str)> = Vec::new();
        for (key, col) in [
            ("timestamp", &e.timestamp),
            ("org", &e.org),
            ("subject", &e.subject),
        ] {
            if let Some(c) = col {
                cols.push((key, c));
            }
        }
        if let Erasure::Anonymize(rules) = &e.erasure {
            for (c, _) in rules {
                cols.push(("anonymize", c));
            }
        }
        for o in &e.objects {
            cols.push(("objects", &o.column));
        }
        for c in &e.encrypted {
            cols.push(("encrypted", c));
        }
        for c in &e.rectifiable {
            cols.push(("rectifiable", c));
        }
        wanted.push(need(&e.location, &e.table, cols));
    }
    wanted
}

async fn missing_columns(db: &AppDb, wanted: Wanted) -> Result<Vec<SchemaProblem>> {
    let mut problems = Vec::new();
    for (location, table, cols) in wanted {
        match db.columns(&table).await? {
            None => problems.push(SchemaProblem {
                location,
                table: table.clone(),
                message: format!("table `{table}` does not exist in the application database"),
                fatal: true,
            }),
            Some(have) => {
                for (key, col) in cols {
                    if !have.contains(&col) {
                        problems.push(SchemaProblem {
                            location: location.clone(),
                            table: table.clone(),
                            message: format!(
                                "{key} column `{col}` does not exist in `{table}` (it has: {})",
                                have.join(", ")
                            ),
                            fatal: true,
                        });
                    }
                }
            }
        }
    }
    Ok(problems)
}

/// A purge by age without an index on the timestamp scans the whole table every batch.
async fn unindexed_timestamps(
    db: &AppDb,
    config: &Config,
    problems: &mut Vec<SchemaProblem>,
) -> Result<()> {
    for e in &config.data_map {
        let Some(ts) = &e.timestamp else { continue };
        if e.retention.is_empty() || problems.iter().any(|p| p.table == e.table && p.fatal) {
            continue;
        }
        if !db.has_leading_index(&e.table, ts).await? {
            problems.push(SchemaProblem {
                location: e.location.clone(),
                table: e.table.clone(),
                message: format!(
                    "no index starts with `{ts}`: each purge batch will scan `{}`; add one: CREATE INDEX ON {} ({})",
                    e.table,
                    super::quote_ident(&e.table),
                    super::quote_ident(ts)
                ),
                fatal: false,
            });
        }
        let children = db.unindexed_children(&e.table, ts).await?;
        if !children.is_empty() {
            problems.push(SchemaProblem {
                location: e.location.clone(),
                table: e.table.clone(),
                message: format!(
                    "partitions or child tables of `{}` have no index starting with `{ts}`: {}; \
                     each purge batch will scan them; index each of them on ({})",
                    e.table,
                    children.join(", "),
                    super::quote_ident(ts)
                ),
                fatal: false,
            });
        }
    }
    Ok(())
}
