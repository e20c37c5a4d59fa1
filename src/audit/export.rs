//! `audit export`: the chain as JSONL, page by page (bounded memory), with an
//! optional trailing signature block over every preceding byte.

use std::io::Write;

use serde_json::json;

use hmac::Mac;

use super::{event_line, finish_hex, signer};
use crate::config::Secret;
use crate::error::{Error, Result};
use crate::store::Store;

const PAGE: u32 = 1000;

/// Writes every event; returns how many. With a key, appends
/// `{"signature": {"alg": "HMAC-SHA256", "events": N, "last_hash": H, "hmac": HEX}}`.
pub async fn export(
    store: &dyn Store,
    out: &mut dyn Write,
    signing_key: Option<&Secret>,
) -> Result<u64> {
    let mut mac = signing_key.map(|k| signer(k.expose().as_bytes()));
    let mut count = 0u64;
    let mut last_hash = super::genesis_hash();
    let mut after = 0i64;
    loop {
        let page = store.audit_page(after, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            let mut line =
                serde_json::to_vec(&event_line(e)).map_err(|err| Error::Audit(err.to_string()))?;
            line.push(b'\n');
            out.write_all(&line)
                .map_err(|err| Error::io("writing audit export", err))?;
            if let Some(m) = mac.as_mut() {
                m.update(&line);
            }
            count += 1;
            last_hash = e.hash.clone();
            after = e.seq;
        }
    }
    if let Some(m) = mac {
        let sig = json!({"signature": {
            "alg": "HMAC-SHA256",
            "events": count,
            "last_hash": last_hash,
            "hmac": finish_hex(m),
        }});
        writeln!(out, "{sig}").map_err(|err| Error::io("writing audit export", err))?;
    }
    out.flush()
        .map_err(|err| Error::io("writing audit export", err))?;
    Ok(count)
}
