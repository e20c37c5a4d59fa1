//! `lethe keys status|rotate`.

use super::out::outln;
use std::sync::Arc;

use anyhow::Result;

use crate::context::Context;

pub async fn status(ctx: Arc<Context>, json_out: bool) -> Result<i32> {
    let v = crate::keys::status(&ctx).await?;
    if json_out {
        super::print_json(&v)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = v["orgs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    let s = |k: &str| {
                        o[k].as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| o[k].to_string())
                    };
                    vec![
                        s("org"),
                        o["active_version"]
                            .as_i64()
                            .map_or("-".into(), |v| format!("v{v}")),
                        o["age_days"]
                            .as_i64()
                            .map_or("-".into(), |d| format!("{d} d")),
                        o["next_rotation_due"]
                            .as_str()
                            .unwrap_or("-")
                            .chars()
                            .take(10)
                            .collect(),
                        if o["shredded"].as_bool() == Some(true) {
                            "SHREDDED".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    super::print_table(&["ORG", "ACTIVE DEK", "AGE", "NEXT ROTATION", ""], &rows);
    Ok(0)
}

pub async fn rotate(
    ctx: Arc<Context>,
    p: &crate::keys::RotateParams,
    json_out: bool,
) -> Result<i32> {
    crate::progress::enable_on_terminal();
    let v = crate::keys::rotate(&ctx, p, &crate::audit::actor_cli()).await?;
    if json_out {
        super::print_json(&v)?;
    } else {
        outln!(
            "{} orgs: {} new DEK versions, {} re-wrapped, {} KEKs rotated, shredded: {}",
            v["orgs"],
            v["deks_created"],
            v["rewrapped"],
            v["keks_rotated"],
            v["shredded"]
        );
    }
    Ok(0)
}

/// `lethe keys …`: one arm a subcommand.
pub async fn dispatch(ctx: Arc<Context>, command: crate::cli::KeysCommand) -> Result<i32> {
    use crate::cli::KeysCommand;
    match command {
        KeysCommand::Status { json } => status(ctx, json).await,
        KeysCommand::Rotate { org, new_dek, json } => {
            let p = crate::keys::RotateParams { org, new_dek };
            rotate(ctx, &p, json).await
        }
    }
}
