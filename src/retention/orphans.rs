//! `lethe objects orphans`: files in an application store that no row of
//! the data map references — what leaked before Lethe was installed, or was
//! written by a path that forgot its row. Listed page by page (memory stays
//! bounded by a page and the orphans found), each page's keys checked
//! against every object column that points at the store.

use serde::Serialize;

use crate::appdb::AppDb;
use crate::context::Context;
use crate::error::{Error, Result};

#[derive(Debug, Default, Serialize)]
pub struct OrphanReport {
    pub store: String,
    /// The tables and columns whose rows reference this store.
    pub referenced_by: Vec<String>,
    pub objects_listed: u64,
    pub orphans: Vec<Orphan>,
    pub orphan_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Orphan {
    pub key: String,
    pub bytes: u64,
}

pub async fn orphans(ctx: &Context, db: &AppDb, store_name: &str) -> Result<OrphanReport> {
    let columns: Vec<(String, String)> = ctx
        .config
        .data_map
        .iter()
        .flat_map(|e| {
            e.objects
                .iter()
                .filter(|o| o.store == store_name)
                .map(|o| (e.table.clone(), o.column.clone()))
        })
        .collect();
    if columns.is_empty() {
        return Err(Error::Usage(format!(
            "no data map entry has objects in store `{store_name}`; name a store an `objects = [...]` entry uses"
        )));
    }
    let store = ctx.app_store(store_name).await?;
    let mut report = OrphanReport {
        store: store_name.to_string(),
        referenced_by: columns.iter().map(|(t, c)| format!("{t}.{c}")).collect(),
        ..Default::default()
    };
    // Versions: a file deleted on a versioned bucket still holds its data.
    let mut token: Option<String> = None;
    loop {
        let listing = store.list_versions_page("", token.as_deref()).await?;
        token = listing.next;
        let page = listing.keys;
        report.objects_listed += page.len() as u64;
        let keys: Vec<String> = page.iter().map(|o| o.key.clone()).collect();
        let mut referenced = std::collections::HashSet::new();
        for (table, column) in columns.iter().filter(|_| !keys.is_empty()) {
            referenced.extend(db.still_referenced(table, column, &keys).await?);
        }
        for o in page {
            if !referenced.contains(&o.key) {
                report.orphan_bytes += o.size;
                report.orphans.push(Orphan {
                    key: o.key,
                    bytes: o.size,
                });
            }
        }
        if token.is_none() {
            break;
        }
    }
    Ok(report)
}
