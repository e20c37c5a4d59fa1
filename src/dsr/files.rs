//! A subject's files (the data map's object-key columns) go with their
//! erasure, through the store's pending deletes (origin `dsr:<request>`):
//! recorded before the erasure's transaction, deleted after it, and finished
//! by any later attempt of the request, so a crash between the commit and
//! the deletes leaves no file behind. A key some remaining row still
//! references is never deleted. The evidence counts files, versions and
//! bytes, never keys.

use serde_json::Value;

use crate::appdb::{AppDb, EraseAction, EraseStep, NewValue, OrgScope};
use crate::context::Context;
use crate::error::Result;
use crate::fence::Fence;
use crate::objstore::Tail;
use crate::store::NewPendingObject;

fn origin(request: i64) -> String {
    format!("dsr:{request}")
}

/// Records the files of the subject's rows in `scope` that `steps` delete,
/// or whose object column they empty; rows of held orgs are kept, and so are
/// their files.
pub(super) async fn pend(
    ctx: &Context,
    db: &AppDb,
    (request, subject_id): (i64, &str),
    steps: &[EraseStep],
    scope: OrgScope<'_>,
) -> Result<()> {
    let mut pending = Vec::new();
    for step in steps {
        let Some(entry) = ctx.config.data_map.iter().find(|e| e.table == step.table) else {
            continue;
        };
        for o in &entry.objects {
            let goes = match &step.action {
                EraseAction::Delete => true,
                EraseAction::Update(sets) => sets
                    .iter()
                    .any(|(c, v)| c == &o.column && *v == NewValue::Null),
            };
            if !goes {
                continue;
            }
            let keys = db
                .subject_object_keys(
                    &step.table,
                    &step.subject,
                    step.org.as_deref(),
                    &o.column,
                    subject_id,
                    scope,
                )
                .await?;
            pending.extend(keys.into_iter().map(|(org, key)| NewPendingObject {
                store_name: o.store.clone(),
                table_name: step.table.clone(),
                column_name: o.column.clone(),
                object_key: key,
                class: entry.class.clone(),
                org,
            }));
        }
    }
    ctx.store.objects_pend(&origin(request), &pending).await
}

/// Deletes the request's recorded files that no row references any more; counts.
pub(super) async fn finish(
    ctx: &Context,
    db: &AppDb,
    request: i64,
    fence: &Fence,
) -> Result<Value> {
    let tallies =
        crate::retention::objects::finish(ctx, db, &origin(request), fence, Tail::Send).await?;
    Ok(crate::retention::objects::totals(&tallies))
}
