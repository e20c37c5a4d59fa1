//! The guard of an append-only application table (`append_only = true` in the
//! data map, e.g. the application's own audit log): triggers that refuse
//! UPDATE and TRUNCATE, and DELETE except by Lethe's retention.
//!
//! PostgreSQL: one PL/pgSQL function and three triggers; a DELETE goes
//! through only when `current_user` is the retention role (`[database]
//! retention_role`, else the role Lethe connects as). SQLite has no roles
//! and no TRUNCATE (`DELETE FROM t` fires the DELETE trigger): a DELETE goes
//! through only while the marker table holds a row, which Lethe's delete
//! transactions insert and remove before they commit (SQLite runs one
//! writer at a time, so no other writer ever sees it). Triggers stop the
//! application and its users, not the table's owner (who can drop them).

use sqlx::Row;

use super::{quote_ident as q, AppDb};
use crate::error::{Error, Result};

pub const PG_FUNCTION: &str = "lethe_append_only_guard";
/// SQLite: a row here lets the DELETE trigger through.
pub const SQLITE_MARKER: &str = "lethe_retention_session";
pub(super) const SQLITE_MARK: &str =
    "INSERT OR REPLACE INTO lethe_retention_session (id) VALUES (1)";
pub(super) const SQLITE_UNMARK: &str = "DELETE FROM lethe_retention_session";

/// SQLite: marks the transaction as Lethe's delete, letting an append-only
/// table's DELETE trigger through until `SQLITE_UNMARK` (run before commit).
/// False when no guard is installed: no marker table, nothing to let through.
pub(super) async fn sqlite_mark(tx: &mut sqlx::SqliteConnection) -> bool {
    sqlx::query(SQLITE_MARK).execute(tx).await.is_ok()
}

const PG_BODY: &str = "
BEGIN
  IF TG_OP = 'DELETE' AND current_user = TG_ARGV[0] THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'lethe: % on %.% refused: the table is append-only (only role % deletes, for retention)',
    TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0] USING ERRCODE = 'insufficient_privilege';
END
";

// pg_trigger.tgtype bits.
const ROW: i32 = 1;
const BEFORE: i32 = 2;
const DELETE: i32 = 8;
const UPDATE: i32 = 16;
const TRUNCATE: i32 = 32;

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn sqlite_triggers(table: &str) -> [(String, String); 2] {
    let (t, name) = (q(table), table.replace('"', ""));
    let refused = |op: &str, why: &str| {
        literal(&format!(
            "lethe: {op} on {name} refused: the table is append-only{why}"
        ))
    };
    let update = format!("lethe_append_only_update_{name}");
    let delete = format!("lethe_append_only_delete_{name}");
    [
        (update.clone(), format!(
            "CREATE TRIGGER {} BEFORE UPDATE ON {t} BEGIN SELECT RAISE(ABORT, {}); END",
            q(&update), refused("UPDATE", "")
        )),
        (delete.clone(), format!(
            "CREATE TRIGGER {} BEFORE DELETE ON {t} WHEN NOT EXISTS (SELECT 1 FROM {SQLITE_MARKER}) BEGIN SELECT RAISE(ABORT, {}); END",
            q(&delete), refused("DELETE", " (only Lethe's retention deletes)")
        )),
    ]
}

/// The guard's SQL for `table`, idempotent (it replaces what it installs).
pub fn install_sql(db: &AppDb, table: &str, role: &str) -> String {
    let t = q(table);
    match db {
        AppDb::Postgres(_) => {
            let mut sql = format!(
                "CREATE OR REPLACE FUNCTION {PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $lethe${PG_BODY}$lethe$;\n"
            );
            let arg = literal(role);
            for (name, when, each) in [
                ("lethe_append_only_update", "UPDATE", "ROW"),
                ("lethe_append_only_delete", "DELETE", "ROW"),
                ("lethe_append_only_truncate", "TRUNCATE", "STATEMENT"),
            ] {
                sql += &format!(
                    "DROP TRIGGER IF EXISTS {name} ON {t};\nCREATE TRIGGER {name} BEFORE {when} ON {t} FOR EACH {each} EXECUTE FUNCTION {PG_FUNCTION}({arg});\n"
                );
            }
            sql
        }
        AppDb::Sqlite(_) => {
            let mut sql = format!(
                "CREATE TABLE IF NOT EXISTS {SQLITE_MARKER} (id INTEGER PRIMARY KEY CHECK (id = 1));\n"
            );
            for (name, create) in sqlite_triggers(table) {
                sql += &format!("DROP TRIGGER IF EXISTS {};\n{create};\n", q(&name));
            }
            sql
        }
    }
}

/// Applies the guard in one transaction.
pub async fn install(db: &AppDb, table: &str, role: &str) -> Result<()> {
    let sql = install_sql(db, table, role);
    match db {
        AppDb::Postgres(p) => {
            let mut tx = p.begin().await?;
            sqlx::raw_sql(&sql).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        AppDb::Sqlite(p) => {
            let mut tx = p.begin().await?;
            sqlx::raw_sql(&sql).execute(&mut *tx).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// The role whose DELETEs the guard lets through (PostgreSQL); empty on SQLite.
pub async fn retention_role(db: &AppDb, configured: Option<&str>) -> Result<String> {
    match (db, configured) {
        (_, Some(role)) => Ok(role.to_string()),
        (AppDb::Postgres(p), None) => Ok(sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(p)
            .await?),
        (AppDb::Sqlite(_), None) => Ok(String::new()),
    }
}

/// What is missing from `table`'s guard; empty when it is in place.
pub async fn check(db: &AppDb, table: &str, role: &str) -> Result<Vec<String>> {
    match db {
        AppDb::Postgres(p) => {
            let rows = sqlx::query(
                "SELECT t.tgtype::int AS kind, t.tgenabled::text AS enabled,
                        encode(t.tgargs, 'hex') AS args, p.prosrc AS body
                 FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
                 WHERE t.tgrelid = to_regclass($1) AND NOT t.tgisinternal AND p.proname = $2",
            )
            .bind(q(table))
            .bind(PG_FUNCTION)
            .fetch_all(p)
            .await?;
            let mut found = Vec::new();
            for r in rows {
                let body: String = r.try_get("body")?;
                let enabled: String = r.try_get("enabled")?;
                if body.trim() == PG_BODY.trim() && enabled != "D" {
                    found.push((
                        r.try_get::<i32, _>("kind")?,
                        r.try_get::<String, _>("args")?,
                    ));
                }
            }
            let arg = format!("{}00", hex::encode(role));
            let has = |bits: i32, args: Option<&str>| {
                found
                    .iter()
                    .any(|(k, a)| k & bits == bits && args.is_none_or(|want| a == want))
            };
            let mut missing = Vec::new();
            for (bits, args, what) in [
                (
                    ROW | BEFORE | UPDATE,
                    None,
                    "an enabled trigger refusing UPDATE".to_string(),
                ),
                (
                    BEFORE | TRUNCATE,
                    None,
                    "an enabled trigger refusing TRUNCATE".to_string(),
                ),
                (
                    ROW | BEFORE | DELETE,
                    Some(arg.as_str()),
                    format!("an enabled trigger refusing DELETE except by role {role}"),
                ),
            ] {
                if !has(bits, args) {
                    missing.push(what);
                }
            }
            Ok(missing)
        }
        AppDb::Sqlite(p) => {
            let stored: Vec<(String, String)> = sqlx::query_as(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1",
            )
            .bind(table)
            .fetch_all(p)
            .await?;
            let marker: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            )
            .bind(SQLITE_MARKER)
            .fetch_one(p)
            .await?;
            let mut missing = Vec::new();
            if marker == 0 {
                missing.push(format!("the marker table {SQLITE_MARKER}"));
            }
            for (name, create) in sqlite_triggers(table) {
                if !stored.iter().any(|(n, s)| *n == name && *s == create) {
                    missing.push(format!("trigger {name}, as Lethe writes it"));
                }
            }
            Ok(missing)
        }
    }
}

/// A table the data map does not mark append-only: the guard would never be checked.
pub fn not_marked(table: &str) -> Error {
    Error::Usage(format!(
        "data_map entry `{table}` is not append_only: add `append_only = true` to it, so `lethe check` verifies the guard"
    ))
}
