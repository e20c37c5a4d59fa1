//! The breach mails: the opening notice, a reminder at each mark before a
//! party's deadline, and the escalation once it passed. Each says who must be
//! told, by when (in `mail.timezone` and UTC), how long is left, and the
//! command that records the notification.

use chrono::{DateTime, Utc};

use crate::mail::span;
use crate::notify::{Block, Message, Role, Row, Table, Tone, Zone};
use crate::store::{Breach, BreachParty};

/// A title short enough for a subject line; the body has it whole.
fn headline(title: &str) -> String {
    const MAX: usize = 70;
    if title.chars().count() <= MAX {
        return title.to_string();
    }
    let cut: String = title.chars().take(MAX - 1).collect();
    format!("{}…", cut.trim_end())
}

/// The party as a person says it.
fn who(party: &str) -> &str {
    match party {
        "authority" => "the supervisory authority",
        "controller" => "the controller (your customer)",
        "subjects" => "the affected data subjects",
        other => other,
    }
}

fn record_command(b: &Breach, party: &str) -> String {
    format!(
        "lethe breach notify {} --party {party} --note \"how and when they were told\"",
        b.id
    )
}

/// The escalation: what was missed, and how to record the late notification.
fn missed(b: &Breach, p: &BreachParty, zone: &Zone, now: DateTime<Utc>) -> (String, Vec<Block>) {
    let blocks = vec![
        Block::Notice(
            Tone::Alert,
            format!(
                "Missed: {} had to be told of breach {} by {}, {} ago, and no notification is recorded. {}",
                who(&p.party),
                b.id,
                zone.show(p.due_at),
                span(now - p.due_at),
                p.rule
            ),
        ),
        Block::Para(format!(
            "Tell {} now, and record it with the reason for the delay (a late notification must say why):",
            who(&p.party)
        )),
        Block::Command(record_command(b, &p.party)),
    ];
    let subject = format!(
        "[lethe] OVERDUE: breach {}: {} not told by the deadline",
        b.id,
        who(&p.party)
    );
    (subject, blocks)
}

/// A reminder at a mark before the party's deadline.
fn reminder(b: &Breach, p: &BreachParty, zone: &Zone, now: DateTime<Utc>) -> (String, Vec<Block>) {
    let left = p.due_at - now;
    let tone = if left <= chrono::Duration::hours(24) {
        Tone::Alert
    } else {
        Tone::Warn
    };
    let blocks = vec![
        Block::Notice(
            tone,
            format!(
                "Tell {} of breach {} by {}: {} left.",
                who(&p.party),
                b.id,
                zone.show(p.due_at),
                span(left)
            ),
        ),
        Block::Para(format!("{}. Once they have been told, record it:", p.rule)),
        Block::Command(record_command(b, &p.party)),
    ];
    let subject = format!(
        "[lethe] breach {}: tell {} within {}",
        b.id,
        who(&p.party),
        span(left)
    );
    (subject, blocks)
}

/// The notice that a breach was recorded: the first deadline.
fn opened(b: &Breach, zone: &Zone, now: DateTime<Utc>) -> (String, Vec<Block>) {
    let mut blocks = Vec::new();
    let first = b
        .parties
        .iter()
        .filter(|p| p.notified_at.is_none())
        .min_by_key(|p| p.due_at);
    if let Some(first) = first {
        blocks.push(Block::Notice(
            Tone::Alert,
            format!(
                "Breach {} was recorded. The first deadline: tell {} by {} ({}).",
                b.id,
                who(&first.party),
                zone.show(first.due_at),
                if first.due_at < now {
                    format!("passed {} ago", span(now - first.due_at))
                } else {
                    format!("{} left", span(first.due_at - now))
                }
            ),
        ));
    }
    blocks.push(Block::Para(
        "Reminders follow before each deadline until the notification is recorded with:".into(),
    ));
    blocks.push(Block::Command(format!(
        "lethe breach notify {} --party PARTY --note \"how and when they were told\"",
        b.id
    )));
    (
        format!("[lethe] BREACH {} opened: {}", b.id, headline(&b.title)),
        blocks,
    )
}

/// `what`: "opened", "T-24h" (a reminder mark) or "overdue".
pub(super) fn mail(
    b: &Breach,
    p: Option<&BreachParty>,
    what: &str,
    role: Role,
    zone: &Zone,
    now: DateTime<Utc>,
) -> Message {
    let (subject, mut blocks) = match (what, p) {
        ("overdue", Some(p)) => missed(b, p, zone, now),
        (_, Some(p)) => reminder(b, p, zone, now),
        _ => opened(b, zone, now),
    };
    blocks.push(Block::Heading("The breach".into()));
    blocks.push(Block::Facts(vec![
        ("What happened".into(), b.title.clone()),
        ("Detected".into(), zone.show(b.detected_at)),
        ("Subjects affected".into(), b.subjects.to_string()),
        ("Organisations".into(), list(&b.orgs)),
        ("Jurisdictions".into(), list(&b.jurisdictions)),
    ]));
    blocks.push(Block::Heading("Who must be told".into()));
    blocks.push(Block::Table(parties(b, zone, now)));
    let dedupe = match p {
        Some(p) => format!("breach:{}:{}:{what}:{}", b.id, p.party, role.as_str()),
        None => format!("breach:{}:{what}:{}", b.id, role.as_str()),
    };
    Message {
        role,
        subject,
        blocks,
        attachments: vec![],
        dedupe_key: Some(dedupe),
    }
}

fn list(v: &serde_json::Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none recorded".into(),
    }
}

/// Every party, earliest deadline first, with what is left or was missed.
fn parties(b: &Breach, zone: &Zone, now: DateTime<Utc>) -> Table {
    let rows = b
        .parties
        .iter()
        .map(|p| {
            let (status, tone) = match p.notified_at {
                Some(t) => (format!("told {}", zone.show(t)), Tone::Good),
                None if now > p.due_at => {
                    (format!("OVERDUE by {}", span(now - p.due_at)), Tone::Alert)
                }
                None => (format!("{} left", span(p.due_at - now)), Tone::Warn),
            };
            Row {
                cells: vec![who(&p.party).to_string(), zone.show(p.due_at), status],
                tone,
                commands: if p.notified_at.is_none() {
                    vec![record_command(b, &p.party)]
                } else {
                    vec![]
                },
            }
        })
        .collect();
    Table {
        head: vec!["Party".into(), "Deadline".into(), "Status".into()],
        rows,
        empty: "No party to notify.".into(),
    }
}
