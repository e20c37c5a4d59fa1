//! `lethe audit prove`: Merkle inclusion and consistency proofs against the
//! anchors (see `crate::audit::prove`), as text for a person or `--json` for
//! an auditor's script (`tests/auditor/proof.py`, shown in the README).

use std::sync::Arc;

use anyhow::Result;

use super::out::outln;
use crate::audit::anchor;
use crate::audit::prove::{self, ProvedAnchor};
use crate::config::Secret;
use crate::context::Context;
use crate::error::Error;

fn key(ctx: &Context) -> Result<Option<Secret>, Error> {
    ctx.config.audit.signing_key.load().map_err(Error::Usage)
}

fn written(a: &ProvedAnchor) -> String {
    let hmac = match a.signature {
        "valid" => "HMAC valid".to_string(),
        _ => "HMAC not checked: no audit signing key".to_string(),
    };
    format!("{} (written {}, {hmac})", a.object, a.anchor.time)
}

fn print_path(root: &str, path: &[String]) {
    outln!("root {root}");
    outln!("path ({} hashes, leaf to root):", path.len());
    for h in path {
        outln!("  {h}");
    }
    outln!("(--json prints the proof for an auditor: the README's proof.py checks it)");
}

/// `audit prove SEQ [--anchor N]`.
pub async fn inclusion(ctx: Arc<Context>, seq: i64, at: Option<i64>, json: bool) -> Result<i32> {
    let key = key(&ctx)?;
    let anchors = anchor::open_store(&ctx.config).await?;
    let p = prove::inclusion(ctx.store.as_ref(), anchors.as_ref(), key.as_ref(), seq, at).await?;
    if json {
        super::print_json(&p)?;
        return Ok(0);
    }
    outln!(
        "INCLUDED: event seq {} ({}) is leaf {} of the tree of {} events anchored in {}",
        p.seq,
        p.event["action"].as_str().unwrap_or(""),
        p.leaf_index,
        p.tree_size,
        written(&p.anchor)
    );
    print_path(&p.root, &p.path);
    Ok(0)
}

/// `audit prove --consistency OLD NEW`.
pub async fn consistency(ctx: Arc<Context>, old: i64, new: i64, json: bool) -> Result<i32> {
    let key = key(&ctx)?;
    let anchors = anchor::open_store(&ctx.config).await?;
    let p =
        prove::consistency(ctx.store.as_ref(), anchors.as_ref(), key.as_ref(), old, new).await?;
    if json {
        super::print_json(&p)?;
        return Ok(0);
    }
    outln!(
        "CONSISTENT: the tree of {} events anchored in {} is a prefix of the tree of {} events anchored in {}",
        p.old_size,
        written(&p.old_anchor),
        p.new_size,
        written(&p.new_anchor)
    );
    outln!("old root {}", p.old_root);
    print_path(&p.new_root, &p.path);
    Ok(0)
}
