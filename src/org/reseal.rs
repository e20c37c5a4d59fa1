//! Moving an account that belongs to another org too: its encrypted values
//! are bound to the org they were sealed under (the AES-GCM associated data
//! names it), so each is opened under the departing org's key and sealed
//! again under the new org's newest key, in the same statement that moves
//! the row. Before the departing org's keys are shredded.

use crate::appdb::AppDb;
use crate::cipher::Binding;
use crate::config::{AppMapping, DataMapEntry};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::keys::{DataKeys, Opened};

/// Moves the rows of `org` in the subjects table `e` that belong elsewhere, re-sealing; the count.
pub(super) async fn move_sealed(
    ctx: &Context,
    db: &AppDb,
    app: &AppMapping,
    e: &DataMapEntry,
    org_col: &str,
    org: &str,
) -> Result<u64> {
    let Some(mut keys) = DataKeys::load(ctx).await? else {
        // Without [app.keys] Lethe holds no key to these values: move the rows as they are.
        return db.rehome_members(app, org_col, org).await;
    };
    let rows = db.members_to_move(app, org_col, org, &e.encrypted).await?;
    let mut moved = 0;
    for (id, to, values) in rows {
        let mut sets = Vec::new();
        for (column, value) in e.encrypted.iter().zip(values) {
            let Some(text) = value else { continue };
            let from = Binding {
                table: &e.table,
                column,
                org,
            };
            let Opened::Plain(plain) = keys.open(from, &text).await? else {
                continue; // not a ciphertext, or unreadable already: nothing to carry over
            };
            let at = Binding {
                table: &e.table,
                column,
                org: &to,
            };
            let sealed = keys.seal_newest(at, &plain).await?.ok_or_else(|| {
                Error::Failed(format!(
                    "an account of org {org} moves to org {to}, which has no active data key to seal its \
                     {}.{column} under: run `lethe run keys.rotate` (it creates one), then the purge again",
                    e.table
                ))
            })?;
            sets.push((column.clone(), sealed));
        }
        if db.move_member(app, org_col, (org, &to), &id, &sets).await? {
            moved += 1;
        }
    }
    Ok(moved)
}
