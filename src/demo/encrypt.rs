//! The demo plays the application's part in encryption: once Lethe has given
//! every open org a data key, it seals the sample's phone numbers and NIKs
//! in the `lethe1` format, as the application would on write; then it asks
//! for a new key version, so `keys.reencrypt` has stale values to move.

use std::path::Path;
use std::sync::Arc;

use sqlx::Row;

use crate::cipher::Binding;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::keys::{DataKeys, RotateParams};

/// The demo's encrypted columns: table, column, org column.
const COLUMNS: [(&str, &str, &str); 2] = [
    ("users", "phone", "home_org_id"),
    ("customers", "nik", "org_id"),
];

/// Seals every plaintext value of the encrypted columns under its org's
/// first key version, then rotates to a second; returns how many it sealed.
pub async fn encrypt_as_the_app(ctx: &Arc<Context>, app_db: &Path) -> Result<u64> {
    crate::keys::rotate(ctx, &RotateParams::default(), "demo").await?;
    let table = ctx
        .config
        .app
        .as_ref()
        .and_then(|a| a.keys.as_ref())
        .ok_or_else(|| Error::Failed("the demo data map has no [app.keys]".into()))?;
    let mut keys = DataKeys::new(ctx, ctx.app_db().await?.app_keys(table, None).await?);
    let pool = super::open(app_db).await?;
    let mut sealed = 0;
    for (table, column, org_column) in COLUMNS {
        let rows = sqlx::query(&format!(
            "SELECT id, CAST({org_column} AS TEXT), {column} FROM {table} WHERE {column} IS NOT NULL"
        ))
        .fetch_all(&pool)
        .await?;
        let mut tx = pool.begin().await?;
        for r in rows {
            let (id, org, plain): (i64, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let at = Binding {
                table,
                column,
                org: &org,
            };
            let value = keys
                .seal_newest(at, plain.as_bytes())
                .await?
                .ok_or_else(|| Error::Failed(format!("org {org} has no usable data key")))?;
            sqlx::query(&format!("UPDATE {table} SET {column} = ? WHERE id = ?"))
                .bind(value)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sealed += 1;
        }
        tx.commit().await?;
    }
    pool.close().await;
    let forced = RotateParams {
        org: None,
        new_dek: true,
    };
    crate::keys::rotate(ctx, &forced, "demo").await?;
    Ok(sealed)
}
