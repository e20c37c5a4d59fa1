//! The SLA report as the DPO reads it: what needs action first (overdue, then
//! at risk, each with the command to run), then the open queue by days left,
//! then the period's figures and the 12-week trend of time to close.

use super::super::Jurisdiction;
use super::stats::{OpenItem, SlaReport, BUCKETS};
use crate::mail::span;
use crate::notify::{Bar, Bars, Block, Row, Table, Tone, Zone};

/// Each days-left bucket's bar colour, distinct so a rendering can be measured.
pub const BUCKET_COLORS: [&str; 5] = ["#c0392b", "#e67e22", "#f1c40f", "#2e86c1", "#27ae60"];
pub const TREND_COLOR: &str = "#5b6c8f";

/// Open requests listed one by one in the mail; the CSV has them all.
const OPEN_LISTED: usize = 15;

fn law(code: &str) -> String {
    Jurisdiction::find(code).map_or_else(|_| code.to_string(), |j| j.name.to_string())
}

fn left(i: &OpenItem, r: &SlaReport) -> String {
    let d = i.due_at - r.generated_at;
    if d < chrono::Duration::zero() {
        format!("OVERDUE by {}", span(d))
    } else {
        format!("{} left", span(d))
    }
}

fn item_row(i: &OpenItem, r: &SlaReport, zone: &Zone, tone: Tone, commands: bool) -> Row {
    let mut cells = vec![
        format!("#{}", i.id),
        i.kind.clone(),
        law(&i.jurisdiction),
        zone.show(i.due_at),
        left(i, r),
    ];
    if i.extended_days > 0 {
        cells[3].push_str(&format!(" (extended {} d)", i.extended_days));
    }
    Row {
        cells,
        tone,
        commands: if commands { i.commands.clone() } else { vec![] },
    }
}

fn action(r: &SlaReport, zone: &Zone) -> Vec<Block> {
    let (o, a) = (r.overdue.len(), r.at_risk.len());
    if o + a == 0 {
        return vec![Block::Notice(
            Tone::Good,
            format!("No request is overdue or at risk. {} open.", r.open.len()),
        )];
    }
    let mut rows: Vec<Row> = r
        .overdue
        .iter()
        .map(|i| item_row(i, r, zone, Tone::Alert, true))
        .collect();
    rows.extend(
        r.at_risk
            .iter()
            .map(|i| item_row(i, r, zone, Tone::Warn, true)),
    );
    let mut blocks = vec![
        Block::Notice(
            if o > 0 { Tone::Alert } else { Tone::Warn },
            format!(
                "{o} request{} overdue and {a} at risk: act on {} first.",
                if o == 1 { " is" } else { "s are" },
                if o + a == 1 { "it" } else { "them" }
            ),
        ),
        Block::Heading("Needs action now".into()),
        Block::Table(Table {
            head: ["Request", "Kind", "Law", "Deadline", "Time"]
                .map(String::from)
                .to_vec(),
            rows,
            empty: String::new(),
        }),
    ];
    if o > 0 {
        blocks.push(Block::Para(
            "An overdue request can no longer be extended: the law wants the subject told of an extension \
             before the deadline. Complete it now: `lethe dsr show ID` says what it waits for."
                .into(),
        ));
    }
    if a > 0 {
        blocks.push(Block::Para(
            "An at-risk request may be extended, within what its law allows, once the subject is told why: \
             its extend command gives the most days still allowed; where there is none, the line says why."
                .into(),
        ));
    }
    blocks
}

fn queue(r: &SlaReport, zone: &Zone) -> Vec<Block> {
    let bars = BUCKETS
        .iter()
        .zip(BUCKET_COLORS)
        .map(|(b, color)| {
            let n = r.open_by_days_left.get(*b).copied().unwrap_or(0);
            Bar {
                label: if *b == "overdue" {
                    "overdue".into()
                } else {
                    format!("{b} days")
                },
                value: n as f64,
                shown: n.to_string(),
                color,
            }
        })
        .collect();
    let rows = r
        .open
        .iter()
        .take(OPEN_LISTED)
        .map(|i| {
            let mut row = item_row(i, r, zone, Tone::Plain, false);
            row.cells[1] = format!("{} ({})", i.kind, i.state.replace('_', " "));
            row
        })
        .collect();
    let mut blocks = vec![
        Block::Heading(format!("Open requests by days left ({})", r.open.len())),
        Block::Bars(Bars { bars }),
        Block::Table(Table {
            head: ["Request", "Kind (state)", "Law", "Deadline", "Time"]
                .map(String::from)
                .to_vec(),
            rows,
            empty: "No open requests.".into(),
        }),
    ];
    if r.open.len() > OPEN_LISTED {
        blocks.push(Block::Para(format!(
            "… and {} more, in the attached CSV.",
            r.open.len() - OPEN_LISTED
        )));
    }
    blocks
}

/// Organisations' own requests, beside the subjects': deletions and exports.
fn orgs(r: &SlaReport, zone: &Zone) -> Vec<Block> {
    if r.org_requests.is_empty() {
        return vec![];
    }
    let rows = r
        .org_requests
        .iter()
        .map(|i| Row {
            cells: vec![
                i.id.to_string(),
                format!("org {}", i.org),
                format!("{} ({})", i.kind, i.state),
                zone.show(i.due_at),
                match (i.days_left, i.completed_at) {
                    (Some(d), _) if d < 0 => format!("OVERDUE by {} days", -d),
                    (Some(d), _) => format!("{d} days left"),
                    (None, Some(c)) => format!("closed {}", zone.date(c)),
                    (None, None) => String::new(),
                },
            ],
            tone: if i.late { Tone::Alert } else { Tone::Plain },
            commands: if i.days_left.is_some() {
                vec![format!("lethe org status --org {}", i.org)]
            } else {
                vec![]
            },
        })
        .collect();
    vec![
        Block::Heading(format!("Organisation requests ({})", r.org_requests.len())),
        Block::Table(Table {
            head: ["Request", "Org", "Kind (state)", "Deadline", "Time"]
                .map(String::from)
                .to_vec(),
            rows,
            empty: String::new(),
        }),
    ]
}

fn counts_table(first: &str, rows: Vec<(String, &super::stats::Counts)>) -> Block {
    Block::Table(Table {
        head: [first, "Received", "Completed", "Late", "Rejected"]
            .map(String::from)
            .to_vec(),
        rows: rows
            .into_iter()
            .map(|(k, c)| Row {
                cells: vec![
                    k,
                    c.received.to_string(),
                    c.completed.to_string(),
                    c.completed_late.to_string(),
                    c.rejected.to_string(),
                ],
                tone: if c.completed_late > 0 {
                    Tone::Warn
                } else {
                    Tone::Plain
                },
                commands: vec![],
            })
            .collect(),
        empty: "Nothing received, completed or rejected in the period.".into(),
    })
}

fn days(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |d| format!("{d} days"))
}

fn period(r: &SlaReport) -> Vec<Block> {
    let within = r
        .percent_within_deadline
        .map_or_else(|| "—".into(), |p| format!("{p}%"));
    let reasons = if r.rejected_by_reason.is_empty() {
        "none".into()
    } else {
        r.rejected_by_reason
            .iter()
            .map(|(k, v)| format!("{} {v}", k.replace('_', " ")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        Block::Heading(format!("The last {}", r.period)),
        Block::Facts(vec![
            ("Received".into(), r.received_in_period.to_string()),
            (
                "Completed".into(),
                format!(
                    "{} ({} late)",
                    r.completed_in_period, r.completed_late_in_period
                ),
            ),
            ("Within deadline".into(), within),
            (
                "Time to close".into(),
                format!(
                    "median {}, p95 {}",
                    days(r.median_days_to_close),
                    days(r.p95_days_to_close)
                ),
            ),
            (
                "Rejected".into(),
                format!("{} ({reasons})", r.rejected_in_period),
            ),
            (
                "Extensions".into(),
                format!(
                    "{} deadlines extended in the period; open on an extension: {}",
                    r.extensions_in_period, r.open_extended
                ),
            ),
        ]),
        counts_table(
            "Kind",
            r.by_kind.iter().map(|(k, c)| (k.clone(), c)).collect(),
        ),
        counts_table(
            "Law",
            r.by_jurisdiction.iter().map(|(k, c)| (law(k), c)).collect(),
        ),
    ]
}

fn trend(r: &SlaReport, zone: &Zone) -> Vec<Block> {
    let bars = r
        .weekly
        .iter()
        .map(|w| Bar {
            label: zone.date(w.start),
            value: w.median_days_to_close.unwrap_or(0.0),
            shown: match w.median_days_to_close {
                Some(m) => format!("{m} d ({} closed, {} late)", w.completed, w.completed_late),
                None => "none closed".into(),
            },
            color: TREND_COLOR,
        })
        .collect();
    vec![
        Block::Heading(format!(
            "Median days to close, by week starting, last {} weeks",
            r.weekly.len()
        )),
        Block::Bars(Bars { bars }),
    ]
}

/// The RPO promised and achieved: how much data a restore could have lost.
fn backups(r: &SlaReport) -> Vec<Block> {
    let Some(a) = &r.backups else {
        return vec![];
    };
    let d = |s: u64| crate::config::format_duration(std::time::Duration::from_secs(s));
    let tone = if a.achieved_30d_s > a.rpo_s {
        Tone::Alert
    } else {
        Tone::Good
    };
    vec![
        Block::Heading("Backups, last 30 days".into()),
        Block::Notice(
            tone,
            format!(
                "Achieved RPO {} (the longest time without a newer recovery point, measured from the {}); promised {}.",
                d(a.achieved_30d_s),
                a.measured_from,
                d(a.rpo_s)
            ),
        ),
    ]
}

/// The subject line: what needs action, in a few words.
pub fn subject(r: &SlaReport, zone: &Zone) -> String {
    format!(
        "[lethe] DSR SLA report {}: {} overdue, {} at risk",
        zone.date(r.generated_at),
        r.overdue.len(),
        r.at_risk.len()
    )
}

pub fn blocks(r: &SlaReport, zone: &Zone) -> Vec<Block> {
    let mut b = action(r, zone);
    b.extend(queue(r, zone));
    b.extend(orgs(r, zone));
    b.extend(period(r));
    b.extend(trend(r, zone));
    b.extend(backups(r));
    b.push(Block::Para(
        "The attached CSV has one row per request: its deadline, state and time to close, with no subject's address."
            .into(),
    ));
    b
}
