//! Rectification (GDPR Art. 16, CCPA §1798.106): a subject's values in mapped
//! columns corrected. Intake checks each `table.column=value` against the data
//! map and the schema; `dsr.process` applies them all in one transaction, with
//! evidence that names the columns but never a value; the corrections stay in
//! the ledger, so that a restore of an older backup applies them again.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::appdb::{AppDb, OrgScope, RectifyOutcome, TableCorrections};
use crate::config::{AppMapping, Config, Secret};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::store::{AppliedCorrection, Correction, DsrRequest};

use super::process::{ledger_id_key, ledger_key, subject_pseudonym};

/// At most this many columns in one request, each value at most this long.
const MAX_CORRECTIONS: usize = 50;
const MAX_VALUE_BYTES: usize = 4096;

/// `table.column=value` items, as `--set` takes them. The column is after the
/// last dot, so a schema-qualified table (`app.users.name`) works.
pub fn parse_set(items: &[String]) -> Result<Vec<Correction>> {
    items
        .iter()
        .map(|item| {
            let bad = || {
                Error::Usage(format!(
                    "correction `{}` must name TABLE.COLUMN and a value, e.g. --set users.name=\"Ada Lovelace\"",
                    item.split('=').next().unwrap_or_default()
                ))
            };
            let (target, value) = item.split_once('=').ok_or_else(bad)?;
            let (table, column) = target.trim().rsplit_once('.').ok_or_else(bad)?;
            if table.is_empty() || column.is_empty() {
                return Err(bad());
            }
            Ok(Correction {
                table: table.to_string(),
                column: column.to_string(),
                value: value.to_string(),
            })
        })
        .collect()
}

/// Refuses (exit 2) a correction the data map does not allow: unmapped
/// tables, tables whose rows are not about one subject, and the columns that
/// key, scope, date or seal the rows (changing them would move rows between
/// people or orgs, or out of retention, not correct them).
pub(super) fn check_map(config: &Config, org: Option<&str>, changes: &[Correction]) -> Result<()> {
    if changes.is_empty() {
        return Err(Error::Usage(
            "a rectification needs at least one --set TABLE.COLUMN=VALUE (API: \"set\": {\"TABLE.COLUMN\": \"VALUE\"})".into(),
        ));
    }
    if changes.len() > MAX_CORRECTIONS {
        return Err(Error::Usage(format!(
            "a rectification sets at most {MAX_CORRECTIONS} columns; send {} as several requests",
            changes.len()
        )));
    }
    let mut seen = HashSet::new();
    for c in changes {
        let name = format!("{}.{}", c.table, c.column);
        if !seen.insert(name.clone()) {
            return Err(Error::Usage(format!("{name} is set twice")));
        }
        if c.value.len() > MAX_VALUE_BYTES || c.value.contains('\0') {
            return Err(Error::Usage(format!(
                "the value for {name} must be text of at most {MAX_VALUE_BYTES} bytes, without NUL characters"
            )));
        }
        if let Some(why) = refused_column(config, org, &c.table, &c.column) {
            return Err(Error::Usage(format!("{name} cannot be rectified: {why}")));
        }
    }
    Ok(())
}

/// Why `table.column` is not open to rectification, if it is not.
fn refused_column(config: &Config, org: Option<&str>, table: &str, column: &str) -> Option<String> {
    let Some(e) = config.data_map.iter().find(|e| e.table == table) else {
        return Some(format!("`{table}` is not in the data map"));
    };
    if org.is_some() && e.org.is_none() {
        return Some(format!(
            "the request is limited to one org, and `{table}` has no org column"
        ));
    }
    // Checked when the config loads too; kept here so no path can bypass it.
    if let Some(why) = e.never_rectifiable(config.app.as_ref(), column) {
        return Some(why.to_string());
    }
    if !e.rectifiable.iter().any(|c| c == column) {
        return Some(format!(
            "the data map does not list it in `{table}`'s `rectifiable` columns (list there the \
             columns that are facts about the person, e.g. rectifiable = [\"{column}\"])"
        ));
    }
    None
}

/// The corrections grouped by table, as the application database applies them.
fn by_table<'a>(config: &'a Config, changes: &'a [Correction]) -> Vec<TableCorrections<'a>> {
    let mut out: Vec<TableCorrections<'a>> = Vec::new();
    for c in changes {
        let Some(e) = config.data_map.iter().find(|e| e.table == c.table) else {
            continue;
        };
        let Some(subject) = e.subject.as_deref() else {
            continue;
        };
        match out.iter_mut().find(|t| t.table == c.table) {
            Some(t) => t.sets.push((&c.column, &c.value)),
            None => out.push(TableCorrections {
                table: &c.table,
                subject,
                org: e.org.as_deref(),
                sets: vec![(&c.column, &c.value)],
            }),
        }
    }
    out
}

/// Refuses (exit 2) a correction the schema does not take: a missing column,
/// or a value its column's type does not hold.
pub(super) async fn check_schema(
    config: &Config,
    db: &AppDb,
    changes: &[Correction],
) -> Result<()> {
    for c in changes {
        let cols = db.columns(&c.table).await?.unwrap_or_default();
        if !cols.contains(&c.column) {
            return Err(Error::Usage(format!(
                "{}.{} cannot be rectified: the application database's `{}` has no column `{}`",
                c.table, c.column, c.table, c.column
            )));
        }
    }
    if let Some((col, ty)) = db.misfit_value(&by_table(config, changes)).await? {
        return Err(Error::Usage(format!(
            "the value for {col} is not a valid {ty}"
        )));
    }
    Ok(())
}

/// `dsr.process` for a rectification: applied in one transaction, recorded
/// with its evidence; a subject with other than one row in a table it corrects
/// is rejected (`not_one_row`), since one value cannot say which row it means.
pub(super) async fn rectify(
    ctx: &Context,
    db: &AppDb,
    r: &DsrRequest,
    actor: &str,
    fence: &Fence,
) -> Result<std::result::Result<Value, (String, String)>> {
    let config = ctx.config.as_ref();
    // The ledger is keyed: without the key nothing is applied that a restore could not re-apply.
    let key = super::ledger::checked_key(ctx).await?;
    let (_, subject_id) = match super::process::subject_of(ctx, db, r).await? {
        Ok(found) => found,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let changes = ctx.store.dsr_corrections(r.id).await?;
    if changes.is_empty() {
        return Err(Error::Failed(format!(
            "request {} has no corrections recorded",
            r.id
        )));
    }
    // The data map may have changed since intake: what it no longer allows fails loudly.
    check_map(config, r.org.as_deref(), &changes)
        .map_err(|e| Error::Failed(format!("request {}: {e}", r.id)))?;
    check_schema(config, db, &changes)
        .await
        .map_err(|e| Error::Failed(format!("request {}: {e}", r.id)))?;
    let scope = OrgScope::of_request(r.org.as_deref());
    let tables = by_table(config, &changes);
    let rows = match db.rectify(&subject_id, &tables, (scope, true), fence).await {
        Ok(RectifyOutcome::Done(rows)) => rows,
        Ok(RectifyOutcome::NotOneRow { table, rows }) => {
            return Ok(Err((
                "not_one_row".into(),
                format!(
                    "the subject has {rows} rows in `{table}`; a rectification sets one value per column, \
                     so it corrects tables with one row per subject (correct the others in the application)"
                ),
            )))
        }
        Err(e) => return refusal(e).map(Err),
    };
    let columns: Vec<String> = changes
        .iter()
        .map(|c| format!("{}.{}", c.table, c.column))
        .collect();
    // Columns, never values: the old and the new are both the subject's personal data.
    let evidence = json!({"request": r.id, "subject": subject_pseudonym(&key, &r.subject),
                          "columns": columns, "rows": rows, "org": r.org});
    let event = crate::store::evidence(
        actor,
        "dsr.rectified",
        &format!("dsr:{}", r.id),
        evidence.clone(),
    );
    ctx.store
        .dsr_rectified(
            r.id,
            (
                &ledger_id_key(&key, &subject_id),
                &ledger_key(&key, &r.subject),
                r.org.as_deref(),
            ),
            &event,
        )
        .await?;
    Ok(Ok(evidence))
}

/// After a restore: the ledger's corrections (those after `taken_at`, when
/// given) applied again, oldest first, to every row of each subject in their
/// scope; a table or column the restored schema lacks is skipped. Returns the
/// subjects corrected and the corrections skipped.
pub(super) async fn reapply(
    ctx: &Context,
    db: &AppDb,
    (app, key): (&AppMapping, &Secret),
    taken_at: Option<DateTime<Utc>>,
) -> Result<(u64, u64)> {
    let applied = ctx.store.corrections_applied(taken_at).await?;
    if applied.is_empty() {
        return Ok((0, 0));
    }
    let mut of: HashMap<&str, Vec<&AppliedCorrection>> = HashMap::new();
    for a in &applied {
        of.entry(a.subject_key.as_str()).or_default().push(a);
    }
    let found = db
        .subjects_matching(app, |id, _| {
            of.contains_key(ledger_id_key(key, id).as_str())
        })
        .await?;
    let (mut corrected, mut skipped) = (0, 0);
    for (id, _) in found {
        let Some(entries) = of.get(ledger_id_key(key, &id).as_str()) else {
            continue;
        };
        // Request by request, oldest first, whatever its scope: a later
        // correction of a column wins, as it did when it was applied.
        let mut batches: Vec<(Option<&str>, DateTime<Utc>, Vec<Correction>)> = Vec::new();
        for a in entries {
            let c = Correction {
                table: a.table.clone(),
                column: a.column.clone(),
                value: a.value.clone(),
            };
            match batches.last_mut() {
                Some((org, at, list)) if *org == a.org.as_deref() && *at == a.applied_at => {
                    list.push(c)
                }
                _ => batches.push((a.org.as_deref(), a.applied_at, vec![c])),
            }
        }
        for (org, _, list) in batches {
            let mut present = Vec::new();
            for c in list {
                if reapplicable(&ctx.config, db, &c).await? {
                    present.push(c);
                } else {
                    skipped += 1;
                }
            }
            let scope = OrgScope::of_request(org);
            let tables = by_table(&ctx.config, &present);
            if !tables.is_empty() {
                db.rectify(&id, &tables, (scope, false), &Fence::unleased())
                    .await?;
            }
        }
        corrected += 1;
    }
    Ok((corrected, skipped))
}

/// Whether a recorded correction still lands: its table mapped, its column
/// present in the restored schema and never one that keys or scopes rows. (It
/// need not be `rectifiable` still: it was lawfully made, and stays made.)
async fn reapplicable(config: &Config, db: &AppDb, c: &Correction) -> Result<bool> {
    let Some(e) = config.data_map.iter().find(|e| e.table == c.table) else {
        return Ok(false);
    };
    if e.subject.is_none()
        || e.never_rectifiable(config.app.as_ref(), &c.column)
            .is_some()
    {
        return Ok(false);
    }
    Ok(db
        .columns(&c.table)
        .await?
        .is_some_and(|cols| cols.contains(&c.column)))
}

/// A constraint, trigger or type of the application that refused the values,
/// as a rejection (a retry would be refused again), by its code and
/// constraint name only: the database's message may quote the value. Any
/// other error stays an error (the attempt is retried).
fn refusal(e: Error) -> Result<(String, String)> {
    match e {
        Error::Database(sqlx::Error::Database(e)) if refused_the_values(e.as_ref()) => Ok((
            "refused_by_database".into(),
            format!(
                "the application database refused the correction (SQLSTATE {}{}); nothing changed",
                e.code().unwrap_or_default(),
                e.constraint()
                    .map(|c| format!(", constraint {c}"))
                    .unwrap_or_default()
            ),
        )),
        other => Err(other),
    }
}

/// A constraint or data error (PostgreSQL classes 22 and 23, SQLite's
/// SQLITE_CONSTRAINT family): the values are refused, not the moment.
fn refused_the_values(e: &dyn sqlx::error::DatabaseError) -> bool {
    use sqlx::error::ErrorKind;
    if !matches!(e.kind(), ErrorKind::Other) {
        return true;
    }
    let code = e.code().unwrap_or_default();
    code.starts_with("22")
        || code.starts_with("23")
        || code.parse::<u32>().is_ok_and(|c| c % 256 == 19)
}
