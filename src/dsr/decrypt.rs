//! A subject's export carries plaintext: values in encrypted columns are
//! opened with their org's data key before they go into the archive. One the
//! archive cannot open (its org's key was shredded) becomes `null`, counted.
//! And an erasure's anonymised values for encrypted columns are sealed, so the
//! application keeps reading the column in its format.

use serde_json::Value;

use crate::appdb::{AppDb, EraseAction, EraseStep, NewValue};
use crate::cipher::Binding;
use crate::config::DataMapEntry;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::keys::{DataKeys, Opened};

/// Rows opened (decrypted) together.
const OPEN_BATCH: usize = 500;

/// Every row of `e` from a stream (JSON objects as text), with its encrypted
/// columns opened a batch at a time when `keys` are given, handed to `write`
/// in order; returns how many values could not be opened. An error in the
/// stream ends it as an error: a table is never taken as whole when it is not.
pub async fn drain_opened(
    rows: &mut tokio::sync::mpsc::Receiver<Result<String>>,
    e: &DataMapEntry,
    mut keys: Option<&mut DataKeys<'_>>,
    mut write: impl FnMut(String) -> Result<()>,
) -> Result<u64> {
    let mut unreadable = 0;
    let mut batch = Vec::with_capacity(OPEN_BATCH);
    loop {
        let next = rows.recv().await.transpose()?;
        let ended = next.is_none();
        batch.extend(next);
        if batch.len() < OPEN_BATCH && !ended {
            continue;
        }
        let mut lines = std::mem::take(&mut batch);
        if let Some(k) = keys.as_deref_mut() {
            let (opened, n) = open_rows(k, e, lines).await?;
            lines = opened;
            unreadable += n;
        }
        lines.into_iter().try_for_each(&mut write)?;
        if ended {
            return Ok(unreadable);
        }
    }
}

/// `rows` (JSON objects as text) with the entry's encrypted columns opened;
/// and how many values could not be.
pub async fn open_rows(
    keys: &mut DataKeys<'_>,
    e: &DataMapEntry,
    rows: Vec<String>,
) -> Result<(Vec<String>, u64)> {
    let Some(org_column) = e.org.as_deref() else {
        return Ok((rows, 0));
    };
    let mut unreadable = 0;
    let mut out = Vec::with_capacity(rows.len());
    for text in rows {
        let mut row: Value =
            serde_json::from_str(&text).map_err(|err| Error::json("an exported row", err))?;
        let org = match &row[org_column] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        for column in &e.encrypted {
            let Some(Value::String(stored)) = row.get(column.as_str()).cloned() else {
                continue;
            };
            let at = Binding {
                table: &e.table,
                column,
                org: &org,
            };
            match keys.open(at, &stored).await? {
                Opened::Plain(plain) => {
                    row[column.as_str()] =
                        Value::String(String::from_utf8_lossy(&plain).into_owned());
                }
                Opened::NotCiphertext => {}
                Opened::Unreadable => {
                    row[column.as_str()] = Value::Null;
                    unreadable += 1;
                }
            }
        }
        out.push(row.to_string());
    }
    Ok((out, unreadable))
}

/// Anonymised values bound for encrypted columns, sealed under the newest
/// key of each org the subject has rows of in that table: the application
/// then reads the pseudonym (or fixed value) like any value of the column,
/// instead of meeting plaintext where it expects the format. An org with no
/// usable key (shredded) gets it in plaintext, as a plain column would: its
/// old values are gone, and nothing reads that org any more. The keys come
/// from `db`, which after a restore is the restored database.
pub(super) async fn seal_anonymised(
    ctx: &Context,
    db: &AppDb,
    subject_id: &str,
    steps: &mut [EraseStep],
) -> Result<()> {
    let Some(table) = ctx.config.app.as_ref().and_then(|a| a.keys.as_ref()) else {
        return Ok(());
    };
    let mut keys: Option<DataKeys<'_>> = None;
    for step in steps.iter_mut() {
        let (EraseAction::Update(sets), Some(org_column)) = (&mut step.action, &step.org) else {
            continue;
        };
        let Some(entry) = ctx.config.data_map.iter().find(|e| e.table == step.table) else {
            continue;
        };
        for (column, value) in sets.iter_mut() {
            let NewValue::Text(plain) = value else {
                continue;
            };
            if !entry.encrypted.contains(column) {
                continue;
            }
            let keys = match &mut keys {
                Some(k) => k,
                None => keys.insert(DataKeys::new(ctx, db.app_keys(table, None).await?)),
            };
            let mut by_org = Vec::new();
            for org in db
                .subject_orgs(&step.table, &step.subject, org_column, subject_id)
                .await?
            {
                let at = Binding {
                    table: &step.table,
                    column,
                    org: &org,
                };
                if let Some(sealed) = keys.seal_newest(at, plain.as_bytes()).await? {
                    by_org.push((org, sealed));
                }
            }
            *value = NewValue::PerOrg {
                sealed: by_org,
                otherwise: plain.clone(),
            };
        }
    }
    Ok(())
}
