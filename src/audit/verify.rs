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

/// What one line was.
pub enum Step {
    /// An event that checked out: its sequence number and hash.
    Event { seq: i64, hash: String },
    /// An empty line or the signature block.
    Other,
    /// The chain breaks here; `finish` has the report.
    Broken,
}

/// Checks an export one line at a time (a file, or the store's events
/// rendered as lines), so callers can stream and act on each event.
pub struct Verifier {
    report: VerifyReport,
    mac: Option<super::Signer>,
    line_no: u64,
    seen_signature: bool,
    done: bool,
}

impl Verifier {
    pub fn new(key: Option<&Secret>) -> Self {
        Verifier {
            report: VerifyReport {
                ok: true,
                events: 0,
                last_hash: genesis_hash(),
                signature: "absent",
                broken_line: None,
                problem: None,
            },
            mac: key.map(|k| signer(k.expose().as_bytes())),
            line_no: 0,
            seen_signature: false,
            done: false,
        }
    }

    fn broken(&mut self, problem: String) -> Step {
        self.report.ok = false;
        self.report.broken_line = Some(self.line_no);
        self.report.problem = Some(problem);
        self.done = true;
        Step::Broken
    }

    /// One line without its newline. After `Broken`, further lines are ignored.
    pub fn line(&mut self, raw: &[u8]) -> Step {
        if self.done {
            return Step::Broken;
        }
        self.line_no += 1;
        if raw.is_empty() {
            return Step::Other;
        }
        if self.seen_signature {
            return self.broken("content after the signature block".into());
        }
        let v: Value = match serde_json::from_slice(raw) {
            Ok(v) => v,
            Err(e) => return self.broken(format!("not a JSON object: {e}")),
        };
        if let Some(sig) = v.get("signature") {
            self.seen_signature = true;
            return match self.signature(&v, sig) {
                Ok(()) => Step::Other,
                Err(problem) => self.broken(problem),
            };
        }
        let expected = self.report.events as i64 + 1;
        match check_event(&v, expected, &self.report.last_hash) {
            Ok(hash) => {
                self.report.last_hash.clone_from(&hash);
                self.report.events += 1;
                if let Some(m) = self.mac.as_mut() {
                    m.update(raw);
                    m.update(b"\n");
                }
                Step::Event {
                    seq: expected,
                    hash,
                }
            }
            Err(problem) => self.broken(problem),
        }
    }

    fn signature(&mut self, v: &Value, sig: &Value) -> std::result::Result<(), String> {
        only_fields(v, &["signature"])
            .and_then(|()| only_fields(sig, &["alg", "events", "hmac", "last_hash"]))
            .map_err(|problem| format!("signature block: {problem}"))?;
        if sig.get("alg").and_then(Value::as_str) != Some("HMAC-SHA256") {
            return Err("signature block: `alg` must be HMAC-SHA256".into());
        }
        let stated = sig.get("hmac").and_then(Value::as_str).unwrap_or_default();
        let events = sig.get("events").and_then(Value::as_u64);
        let last = sig.get("last_hash").and_then(Value::as_str);
        if events != Some(self.report.events) || last != Some(self.report.last_hash.as_str()) {
            return Err("signature block does not match the events before it (events were removed or added)".into());
        }
        self.report.signature = match self.mac.take().map(finish_hex) {
            None => "unchecked",
            Some(computed) if computed == stated => "valid",
            Some(_) => {
                self.report.signature = "invalid";
                return Err("HMAC signature does not match (wrong key or altered file)".into());
            }
        };
        Ok(())
    }

    /// The report so far.
    pub fn report(&self) -> &VerifyReport {
        &self.report
    }

    /// The report. Without a signature block the chain is intact as far as it
    /// goes, but nothing proves the end was not cut off: `signature: "absent"`
    /// says so, and whether that is enough is the caller's decision.
    pub fn finish(self) -> VerifyReport {
        self.report
    }
}

/// Reads line by line: memory stays flat whatever the file size.
pub fn verify(reader: impl BufRead, key: Option<&Secret>) -> Result<VerifyReport> {
    let mut v = Verifier::new(key);
    for line in reader.split(b'\n') {
        let raw = line.map_err(|e| Error::io("reading audit file", e))?;
        if let Step::Broken = v.line(&raw) {
            break;
        }
    }
    Ok(v.finish())
}
