//! Tamper-evident evidence: a SHA-256 hash chain over every state change,
//! exported as JSONL with an optional trailing HMAC-SHA-256 signature block.
//!
//! The chain's definition (what is hashed, under which rule) is in `chain`.

pub mod anchor;
mod export;
pub mod live;
pub mod prove;
pub mod tree;
mod verify;

pub use export::export;
pub use verify::{verify, Step, Verifier, VerifyReport};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::error::Result;
use crate::store::Store;

pub use crate::chain::{
    canonical_json, event_hash, event_hash_under, genesis_hash, truncate_micros, AuditEvent,
    EventFields, HashRule, NewAuditEvent, AT_FORMAT,
};

/// The JSONL line of an event, as exported.
pub fn event_line(e: &AuditEvent) -> Value {
    let details: Value = serde_json::from_str(&e.details).unwrap_or(Value::Null);
    let mut line = json!({
        "seq": e.seq,
        "at": e.at.format(AT_FORMAT).to_string(),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "details": details,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    });
    // Rule 1 lines stay as they were exported before rules were numbered.
    if e.rule != HashRule::SortedJson.number() {
        line["rule"] = json!(e.rule);
    }
    line
}

pub type Signer = Hmac<Sha256>;

pub fn signer(key: &[u8]) -> Signer {
    // HMAC accepts keys of any length, so this cannot fail.
    match Signer::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

pub fn finish_hex(mac: Signer) -> String {
    hex::encode(mac.finalize().into_bytes())
}

/// Who did it: the CLI user or the worker's id. Never a secret.
pub fn actor_cli() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// Appends one event; thin so that every caller writes evidence the same way.
pub async fn record(
    store: &dyn Store,
    actor: &str,
    action: &str,
    target: &str,
    details: Value,
) -> Result<AuditEvent> {
    store
        .append_audit(&NewAuditEvent {
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            details,
        })
        .await
}
