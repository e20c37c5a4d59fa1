//! Tamper-evident evidence: a SHA-256 hash chain over every state change,
//! exported as JSONL with an optional trailing HMAC-SHA-256 signature block.
//!
//! hash(n) = SHA-256( prev_hash(n) ‖ "\n" ‖ canonical JSON of {seq, at, actor, action, target, details} )
//! where canonical JSON is compact with object keys sorted, and `at` is
//! RFC 3339 UTC with exactly six fractional digits.

mod export;
mod verify;

pub use export::export;
pub use verify::{verify, VerifyReport};

use chrono::{DateTime, Timelike, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::store::{AuditEvent, NewAuditEvent, Store};

pub const AT_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

pub fn genesis_hash() -> String {
    "0".repeat(64)
}

pub fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let micros = t.nanosecond() / 1_000 * 1_000;
    t.with_nanosecond(micros).unwrap_or(t)
}

/// serde_json's default map is ordered by key, so re-serialising a `Value` is canonical.
pub fn canonical_json(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

#[allow(clippy::too_many_arguments)]
pub fn event_hash(
    prev_hash: &str,
    seq: i64,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    target: &str,
    details_canonical: &str,
) -> String {
    // details are already canonical text; embedding them as a parsed Value keeps one encoding.
    let details: Value = serde_json::from_str(details_canonical).unwrap_or(Value::Null);
    let body = json!({
        "seq": seq,
        "at": at.format(AT_FORMAT).to_string(),
        "actor": actor,
        "action": action,
        "target": target,
        "details": details,
    });
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical_json(&body).as_bytes());
    hex::encode(h.finalize())
}

/// The JSONL line of an event, as exported.
pub fn event_line(e: &AuditEvent) -> Value {
    let details: Value = serde_json::from_str(&e.details).unwrap_or(Value::Null);
    json!({
        "seq": e.seq,
        "at": e.at.format(AT_FORMAT).to_string(),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "details": details,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_field() {
        let at = truncate_micros(Utc::now());
        let base = event_hash(&genesis_hash(), 1, at, "a", "x", "t", "{}");
        assert_eq!(base.len(), 64);
        assert_ne!(
            base,
            event_hash(&genesis_hash(), 2, at, "a", "x", "t", "{}")
        );
        assert_ne!(
            base,
            event_hash(&genesis_hash(), 1, at, "b", "x", "t", "{}")
        );
        assert_ne!(
            base,
            event_hash(&genesis_hash(), 1, at, "a", "y", "t", "{}")
        );
        assert_ne!(
            base,
            event_hash(&genesis_hash(), 1, at, "a", "x", "u", "{}")
        );
        assert_ne!(
            base,
            event_hash(&genesis_hash(), 1, at, "a", "x", "t", "{\"n\":1}")
        );
        assert_ne!(
            base,
            event_hash(&"1".repeat(64), 1, at, "a", "x", "t", "{}")
        );
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":3}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":3,"d":2},"b":1}"#);
    }
}
