//! A subject's export carries plaintext: values in encrypted columns are
//! opened with their org's data key before they go into the archive. One the
//! archive cannot open (its org's key was shredded) becomes `null`, counted.

use serde_json::Value;

use crate::cipher::Binding;
use crate::config::DataMapEntry;
use crate::error::{Error, Result};
use crate::keys::{DataKeys, Opened};

/// `rows` (JSON objects as text) with the entry's encrypted columns opened;
/// and how many values could not be.
pub(super) async fn open_rows(
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
