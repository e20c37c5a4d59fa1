//! `audit verify FILE`: re-computes every hash, checks the links and sequence,
//! and the signature block if there is one; names the first line that breaks.

use std::io::BufRead;

use hmac::Mac;
use serde::Serialize;
use serde_json::Value;

use super::{event_hash_under, finish_hex, genesis_hash, signer, EventFields, HashRule, AT_FORMAT};
use crate::config::Secret;
use crate::error::{Error, Result};

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// The chain is intact and no signature block is invalid. An unsigned
    /// file (`signature: "absent"`) can still have been cut at the end.
    pub ok: bool,
    pub events: u64,
    pub last_hash: String,
    /// "valid", "invalid", "absent", or "unchecked" (signed, but no key given).
    pub signature: &'static str,
    /// 1-based line number of the first problem.
    pub broken_line: Option<u64>,
    pub problem: Option<String>,
}

impl VerifyReport {
    fn broken(mut self, line: u64, problem: String) -> Self {
        self.ok = false;
        self.broken_line = Some(line);
        self.problem = Some(problem);
        self
    }
}

fn field<'a>(v: &'a Value, name: &str) -> std::result::Result<&'a Value, String> {
    v.get(name).ok_or_else(|| format!("missing field `{name}`"))
}

fn str_field<'a>(v: &'a Value, name: &str) -> std::result::Result<&'a str, String> {
    field(v, name)?
        .as_str()
        .ok_or_else(|| format!("field `{name}` is not a string"))
}

/// Fields a line may have, and no others: anything the hash or HMAC does not
/// cover would be an unnoticed edit.
fn only_fields(v: &Value, allowed: &[&str]) -> std::result::Result<(), String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("unexpected field `{k}` (the line was altered)")),
        None => Ok(()),
    }
}

const EVENT_FIELDS: &[&str] = &[
    "seq",
    "at",
    "actor",
    "action",
    "target",
    "details",
    "prev_hash",
    "hash",
    "rule",
];

/// Checks one event line against the expected predecessor; returns its hash.
fn check_event(
    v: &Value,
    expected_seq: i64,
    expected_prev: &str,
) -> std::result::Result<String, String> {
    only_fields(v, EVENT_FIELDS)?;
    let seq = field(v, "seq")?
        .as_i64()
        .ok_or("field `seq` is not an integer")?;
    if seq != expected_seq {
        return Err(format!("sequence jumps: expected {expected_seq}, found {seq} (an event was removed or inserted)"));
    }
    let prev = str_field(v, "prev_hash")?;
    if prev != expected_prev {
        return Err("prev_hash does not match the hash of the line before (chain broken)".into());
    }
    let at_text = str_field(v, "at")?;
    let at = chrono::NaiveDateTime::parse_from_str(at_text, AT_FORMAT)
        .map_err(|e| format!("field `at` is not a timestamp: {e}"))?
        .and_utc();
    // No `rule`: an event hashed before rules were numbered (rule 1).
    let rule = match v.get("rule") {
        None => HashRule::SortedJson,
        Some(r) => r
            .as_i64()
            .and_then(HashRule::from_number)
            .ok_or_else(|| format!("unknown hash rule {r} (this build knows 1 and 2)"))?,
    };
    let details = rule.canonical(field(v, "details")?);
    let fields = EventFields {
        seq,
        at,
        actor: str_field(v, "actor")?,
        action: str_field(v, "action")?,
        target: str_field(v, "target")?,
        details_canonical: &details,
    };
    let computed = event_hash_under(rule, prev, &fields);
    let stated = str_field(v, "hash")?;
    if computed != stated {
        return Err("hash does not match the line's content (the line was altered)".into());
    }
    Ok(computed)
}

/// Reads line by line: memory stays flat whatever the file size.
pub fn verify(reader: impl BufRead, key: Option<&Secret>) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        ok: true,
        events: 0,
        last_hash: genesis_hash(),
        signature: "absent",
        broken_line: None,
        problem: None,
    };
    let mut mac = key.map(|k| signer(k.expose().as_bytes()));
    let mut line_no = 0u64;
    let mut seen_signature = false;
    for line in reader.split(b'\n') {
        let raw = line.map_err(|e| Error::io("reading audit file", e))?;
        line_no += 1;
        if raw.is_empty() {
            continue;
        }
        if seen_signature {
            return Ok(report.broken(line_no, "content after the signature block".into()));
        }
        let v: Value = match serde_json::from_slice(&raw) {
            Ok(v) => v,
            Err(e) => return Ok(report.broken(line_no, format!("not a JSON object: {e}"))),
        };
        if let Some(sig) = v.get("signature") {
            seen_signature = true;
            let shape = only_fields(&v, &["signature"])
                .and_then(|()| only_fields(sig, &["alg", "events", "hmac", "last_hash"]));
            if let Err(problem) = shape {
                return Ok(report.broken(line_no, format!("signature block: {problem}")));
            }
            if sig.get("alg").and_then(Value::as_str) != Some("HMAC-SHA256") {
                return Ok(
                    report.broken(line_no, "signature block: `alg` must be HMAC-SHA256".into())
                );
            }
            let stated = sig.get("hmac").and_then(Value::as_str).unwrap_or_default();
            let events = sig.get("events").and_then(Value::as_u64);
            let last = sig.get("last_hash").and_then(Value::as_str);
            if events != Some(report.events) || last != Some(report.last_hash.as_str()) {
                return Ok(report.broken(
                    line_no,
                    "signature block does not match the events before it (events were removed or added)".into(),
                ));
            }
            report.signature = match mac.take().map(finish_hex) {
                None => "unchecked",
                Some(computed) if computed == stated => "valid",
                Some(_) => {
                    report.signature = "invalid";
                    return Ok(report.broken(
                        line_no,
                        "HMAC signature does not match (wrong key or altered file)".into(),
                    ));
                }
            };
            continue;
        }
        match check_event(&v, report.events as i64 + 1, &report.last_hash) {
            Ok(hash) => {
                report.last_hash = hash;
                report.events += 1;
            }
            Err(problem) => return Ok(report.broken(line_no, problem)),
        }
        if let Some(m) = mac.as_mut() {
            m.update(&raw);
            m.update(b"\n");
        }
    }
    // No signature block: the chain is intact as far as it goes, but nothing proves
    // the end was not cut off. `signature: "absent"` says so; whether that is
    // enough is the caller's decision (`audit verify --require-signature`).
    Ok(report)
}
