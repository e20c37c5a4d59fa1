//! The hash chain's definition: what an audit event is and how its hash is
//! computed. Pure functions; the store appends with them and `audit verify`
//! recomputes with them.
//!
//! hash(n) = SHA-256( prev_hash(n) ‖ "\n" ‖ canonical JSON of {seq, at, actor, action, target, details} )
//! where canonical JSON is compact with object keys sorted, and `at` is
//! RFC 3339 UTC with exactly six fractional digits.

use chrono::{DateTime, Timelike, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

/// One audit event as stored. `details` is the canonical JSON text that was hashed.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: serde_json::Value,
}

/// The next link after `prev` (None: the first event), stamped `at`.
pub fn chain_event(prev: Option<&AuditEvent>, e: &NewAuditEvent, at: DateTime<Utc>) -> AuditEvent {
    let seq = prev.map_or(1, |p| p.seq + 1);
    let prev_hash = prev.map_or_else(genesis_hash, |p| p.hash.clone());
    let at = truncate_micros(at);
    let details = canonical_json(&e.details);
    let hash = event_hash(
        &prev_hash, seq, at, &e.actor, &e.action, &e.target, &details,
    );
    AuditEvent {
        seq,
        at,
        actor: e.actor.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        details,
        prev_hash,
        hash,
    }
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
