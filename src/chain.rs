//! The hash chain's definition: what an audit event is and how its hash is
//! computed. Pure functions; the store appends with them and `audit verify`
//! recomputes with them.
//!
//! hash(n) = SHA-256( prev_hash(n) ‖ "\n" ‖ canonical JSON of the body )
//! where the body is {seq, at, actor, action, target, details} and `at` is
//! RFC 3339 UTC with exactly six fractional digits. Each event records the
//! [`HashRule`] it was hashed under: rule 1 (compact JSON, keys sorted by
//! UTF-8 bytes) for chains written before rule 2; rule 2 (RFC 8785, the JSON
//! Canonicalization Scheme, with `"rule": 2` in the body) since. Both are
//! written out here rather than taken from serde_json's map order, so no
//! dependency's feature flag (`preserve_order`, `arbitrary_precision`) can
//! change a hash.

use chrono::{DateTime, Timelike, Utc};
use serde::Serialize;
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

/// The canonical form an event was hashed under, stored with the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HashRule {
    /// Compact JSON, object keys sorted by their UTF-8 bytes.
    SortedJson = 1,
    /// RFC 8785 (JCS), the body carrying `"rule": 2`.
    Jcs = 2,
}

impl HashRule {
    /// The rule new events are hashed under.
    pub const CURRENT: HashRule = HashRule::Jcs;

    pub fn number(self) -> i64 {
        self as i64
    }

    pub fn from_number(n: i64) -> Option<HashRule> {
        match n {
            1 => Some(HashRule::SortedJson),
            2 => Some(HashRule::Jcs),
            _ => None,
        }
    }

    /// `v` in this rule's canonical text.
    pub fn canonical(self, v: &Value) -> String {
        match self {
            HashRule::SortedJson => {
                let mut out = String::new();
                write_sorted(v, &mut out);
                out
            }
            // A `Value` always serialises (no non-string keys, no NaN).
            HashRule::Jcs => {
                serde_json_canonicalizer::to_string(v).unwrap_or_else(|_| "null".to_string())
            }
        }
    }
}

/// Rule 1's text: compact, keys sorted by UTF-8 bytes at every depth.
fn write_sorted(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_sorted(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Rule 1's canonical text (what events before rule 2 stored and hashed).
pub fn canonical_json(v: &Value) -> String {
    HashRule::SortedJson.canonical(v)
}

/// The hash of an event under rule 1.
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
    let fields = EventFields {
        seq,
        at,
        actor,
        action,
        target,
        details_canonical,
    };
    event_hash_under(HashRule::SortedJson, prev_hash, &fields)
}

/// What an event's hash covers besides the previous hash.
pub struct EventFields<'a> {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    /// The details as canonical text (parsed again: one encoding of them).
    pub details_canonical: &'a str,
}

pub fn event_hash_under(rule: HashRule, prev_hash: &str, e: &EventFields) -> String {
    let details: Value = serde_json::from_str(e.details_canonical).unwrap_or(Value::Null);
    let mut body = json!({
        "seq": e.seq,
        "at": e.at.format(AT_FORMAT).to_string(),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "details": details,
    });
    if rule != HashRule::SortedJson {
        body["rule"] = json!(rule.number());
    }
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(rule.canonical(&body).as_bytes());
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
    /// The [`HashRule`] number the hash was computed under, as stored.
    pub rule: i64,
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
    let rule = HashRule::CURRENT;
    let details = rule.canonical(&e.details);
    let fields = EventFields {
        seq,
        at,
        actor: &e.actor,
        action: &e.action,
        target: &e.target,
        details_canonical: &details,
    };
    let hash = event_hash_under(rule, &prev_hash, &fields);
    AuditEvent {
        seq,
        at,
        actor: e.actor.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        details,
        prev_hash,
        hash,
        rule: rule.number(),
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

    /// The golden vector ARCHITECTURE.md quotes, computed independently
    /// (Python's json with sorted keys), under both rules.
    #[test]
    fn golden_vectors_for_both_rules() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678901Z")
            .unwrap()
            .with_timezone(&Utc);
        let details = json!({"deleted": 42, "orgs": {"beta": 2, "acme": 40}, "note": "é ok"});
        for (rule, want) in [
            (
                HashRule::SortedJson,
                "5e76dd6895d727040e5e08c9540d292359ac2e53720d1fab52eb89b2084c1b1f",
            ),
            (
                HashRule::Jcs,
                "a1b5d50d08e05202fd6421532bd6ae91140a088eae25357601805618fe98bcbe",
            ),
        ] {
            let text = rule.canonical(&details);
            let fields = EventFields {
                seq: 1,
                at,
                actor: "cli:ops",
                action: "retention.purged",
                target: "table:events",
                details_canonical: &text,
            };
            assert_eq!(
                event_hash_under(rule, &genesis_hash(), &fields),
                want,
                "{rule:?}"
            );
        }
    }

    /// RFC 8785 section 3.2.2's example: numbers in ECMAScript form, keys in
    /// UTF-16 order, strings with minimal escapes.
    #[test]
    fn jcs_matches_the_rfc_example() {
        let input = r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]}"#;
        let v: Value = serde_json::from_str(input).unwrap();
        assert_eq!(
            HashRule::Jcs.canonical(&v),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        // Where rule 1 and rule 2 differ: a number form and UTF-16 key order.
        let v = json!({"\u{e000}": 1, "\u{1f600}": 2, "n": 1e21});
        assert_ne!(
            HashRule::Jcs.canonical(&v),
            HashRule::SortedJson.canonical(&v)
        );
    }
}
