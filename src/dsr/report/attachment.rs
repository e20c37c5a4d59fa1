//! The report's CSV: one row per request (RFC 4180 quoting by the `csv`
//! crate), ISO 8601 times in UTC, and never a subject's address: the DPO looks
//! a subject up by request id when needed.

use chrono::{DateTime, Utc};

use super::super::{sla, Sla};
use super::stats::days_to_close;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::DsrRequest;

const HEAD: [&str; 14] = [
    "id",
    "kind",
    "jurisdiction",
    "state",
    "sla",
    "reason",
    "received_at",
    "due_at",
    "completed_at",
    "days_left",
    "days_to_close",
    "within_deadline",
    "extended_days",
    "source",
];

fn iso(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A text field as a cell: one that holds an address is left out, whatever
/// put it there; one a spreadsheet would run as a formula (`=`, `+`, `-`, `@`
/// first) is quoted with `'`, as OWASP advises for CSV meant for people.
fn cell(s: &str) -> String {
    if s.contains('@') {
        "(withheld: contained an address)".into()
    } else if s.starts_with(['=', '+', '-', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

fn row(ctx: &Context, d: &DsrRequest, now: DateTime<Utc>) -> Vec<String> {
    let state = sla(ctx, d, now);
    let sla_text = match state {
        Some(Sla::OnTrack) => "on_track",
        Some(Sla::AtRisk) => "at_risk",
        Some(Sla::Overdue) => "overdue",
        None => "",
    };
    let closed = days_to_close(d);
    vec![
        d.id.to_string(),
        cell(&d.kind),
        cell(&d.jurisdiction),
        d.state.as_str().to_string(),
        sla_text.to_string(),
        cell(d.reason.as_deref().unwrap_or("")),
        iso(Some(d.received_at)),
        iso(Some(d.due_at)),
        iso(d.completed_at),
        if d.state.is_open() {
            (d.due_at - now)
                .num_seconds()
                .div_euclid(86_400)
                .to_string()
        } else {
            String::new()
        },
        closed.map(|c| format!("{c:.1}")).unwrap_or_default(),
        match (closed, d.completed_at) {
            (Some(_), Some(done)) => (done <= d.due_at).to_string(),
            _ => String::new(),
        },
        d.extended_days.to_string(),
        cell(&d.source),
    ]
}

/// Every request, oldest first.
pub fn csv(ctx: &Context, all: &[DsrRequest], now: DateTime<Utc>) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let fail = |e: csv::Error| Error::Failed(format!("writing the report CSV: {e}"));
    w.write_record(HEAD).map_err(fail)?;
    let mut sorted: Vec<&DsrRequest> = all.iter().collect();
    sorted.sort_by_key(|d| d.id);
    for d in sorted {
        w.write_record(row(ctx, d, now)).map_err(fail)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::Failed(format!("writing the report CSV: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Error::Failed(format!("the report CSV: {e}")))
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn cells_never_carry_an_address_or_a_formula() {
        // Snapshot table: (field, cell).
        for (field, want) in [
            ("sole_owner", "sole_owner"),
            ("a@b.example", "(withheld: contained an address)"),
            ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"),
            ("+1", "'+1"),
            ("-cmd", "'-cmd"),
            ("", ""),
        ] {
            assert_eq!(cell(field), want, "{field}");
        }
    }
}
