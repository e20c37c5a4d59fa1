//! Verification against anchors: the store's own chain (`audit verify
//! --live`) or an export (`audit verify FILE --anchors`), streamed event by
//! event beside the anchors in sequence order, so memory stays flat; and
//! whether one export continues another (`--extends`).

use std::io::BufRead;

use serde::Serialize;
use tokio::io::AsyncBufReadExt;

use super::anchor::{Anchor, AnchorCursor, Found};
use super::verify::{Step, Verifier, VerifyReport};
use crate::config::Secret;
use crate::error::{Error, Result};
use crate::objstore::ObjectStore;
use crate::store::Store;

const PAGE: u32 = 1000;

/// The first thing wrong, with the sequence number it is at.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The first sequence number that does not hold what it should.
    pub first_bad_seq: i64,
    /// When the anchor that disagrees was written (none for a break inside the chain).
    pub anchor_time: Option<String>,
    /// The newest anchor that still matched before it.
    pub last_good_anchor: Option<i64>,
    pub problem: String,
}

/// What the anchors said.
#[derive(Debug, Default, Serialize)]
pub struct AnchorSummary {
    pub store: String,
    /// Anchors whose (seq, hash) matched the chain.
    pub matched: u64,
    /// Anchors past a file's last event (the file may predate them).
    pub later: u64,
    /// `valid` (every HMAC checked), `unchecked` (no key), `none` (no anchors).
    pub signatures: &'static str,
    pub latest_seq: Option<i64>,
    pub latest_time: Option<String>,
    /// Anchor objects a versioned store shows were written again or deleted.
    pub overwritten: Vec<crate::objstore::Rewritten>,
}

/// Walks anchors in step with a chain, one event at a time.
struct AnchorCheck<'a> {
    store: &'a dyn ObjectStore,
    cursor: AnchorCursor<'a>,
    key: Option<&'a Secret>,
    pending: Option<Anchor>,
    summary: AnchorSummary,
    finding: Option<Finding>,
    /// The Merkle tree of the events so far (O(log n)), for format-2 roots.
    tree: crate::merkle::Frontier,
}

impl<'a> AnchorCheck<'a> {
    fn new(store: &'a dyn ObjectStore, key: Option<&'a Secret>) -> Self {
        AnchorCheck {
            store,
            cursor: AnchorCursor::new(store),
            key,
            pending: None,
            summary: AnchorSummary {
                store: store.describe(),
                signatures: "none",
                ..AnchorSummary::default()
            },
            finding: None,
            tree: crate::merkle::Frontier::new(),
        }
    }

    fn fail(&mut self, seq: i64, time: Option<String>, problem: String) {
        if self.finding.is_none() {
            self.finding = Some(Finding {
                first_bad_seq: seq,
                anchor_time: time,
                last_good_anchor: self.summary.latest_seq,
                problem,
            });
        }
    }

    /// The next anchor not yet matched, checking its signature.
    async fn peek(&mut self) -> Result<Option<&Anchor>> {
        if self.pending.is_none() && self.finding.is_none() {
            match self.cursor.next().await? {
                None => {}
                Some(Found::Err((object, problem))) => {
                    let seq = object.trim_end_matches(".json").parse::<i64>().unwrap_or(0);
                    self.fail(seq, None, problem);
                }
                Some(Found::Ok(a)) => match self.key {
                    Some(k) if !a.signature_valid(k) => {
                        let problem = format!("anchor {} (seq {}, written {}) has an HMAC that does not match: forged, altered, or signed with another key", super::anchor::object_key(a.seq), a.seq, a.time);
                        self.fail(a.seq, Some(a.time), problem);
                    }
                    _ => self.pending = Some(a),
                },
            }
        }
        Ok(self.pending.as_ref())
    }

    /// The chain holds `hash` at `seq`; seqs arrive in order from 1.
    async fn event(&mut self, seq: i64, hash: &str) -> Result<()> {
        self.tree.push(super::tree::event_leaf(seq, hash)?);
        let Some(a) = self.peek().await? else {
            return Ok(());
        };
        if a.seq > seq {
            return Ok(());
        }
        let a = self.pending.take().unwrap_or_else(|| unreachable!());
        if a.hash != hash {
            let problem = format!(
                "seq {} does not hold what was anchored at {}: the chain was rewritten at or before seq {} (after seq {})",
                a.seq,
                a.time,
                a.seq,
                self.summary.latest_seq.unwrap_or(0)
            );
            self.fail(a.seq, Some(a.time), problem);
            return Ok(());
        }
        if a.root
            .as_ref()
            .is_some_and(|r| *r != hex::encode(self.tree.root()))
        {
            let problem = format!(
                "anchor {} (written {}) holds a Merkle root that is not the root of events 1..={}: the anchor is not what Lethe wrote",
                super::anchor::object_key(a.seq), a.time, a.seq
            );
            self.fail(a.seq, Some(a.time), problem);
            return Ok(());
        }
        self.summary.matched += 1;
        self.summary.signatures = if self.key.is_some() {
            "valid"
        } else {
            "unchecked"
        };
        self.summary.latest_seq = Some(a.seq);
        self.summary.latest_time = Some(a.time);
        Ok(())
    }

    /// Anchor objects written again or deleted, as a versioned store (S3
    /// with Object Lock) shows them: tampering, whatever the current version
    /// holds, since reads see only that version. A folder cannot tell.
    async fn versions(&mut self) -> Result<()> {
        let found: Vec<_> = self
            .store
            .rewritten("")
            .await?
            .into_iter()
            .filter(|r| r.key.ends_with(".json"))
            .collect();
        if let Some(r) = found.first() {
            let seq = r.key.trim_end_matches(".json").parse::<i64>().unwrap_or(0);
            let problem = format!(
                "anchor object {} in {} has {} versions and {} delete markers: an anchor is written once, so it was overwritten or deleted, and what a read shows is not necessarily what was anchored",
                r.key, self.summary.store, r.versions, r.delete_markers
            );
            self.fail(seq, None, problem);
        }
        self.summary.overwritten = found;
        Ok(())
    }

    /// After the chain's last event `last_seq`: anchors past it. For the live
    /// chain that is a cut tail; a file may simply predate them.
    async fn end(&mut self, last_seq: i64, live: bool) -> Result<()> {
        while let Some(a) = self.peek().await? {
            let a = a.clone();
            self.pending = None;
            if live {
                let problem = format!(
                    "anchor seq {} (written {}) lies beyond the chain's end (seq {last_seq}): events after seq {last_seq} were removed, or an older copy of the store is in use",
                    a.seq, a.time
                );
                self.fail(last_seq + 1, Some(a.time), problem);
                return Ok(());
            }
            self.summary.later += 1;
        }
        Ok(())
    }
}

/// The outcome of verifying a chain against anchors.
#[derive(Debug, Serialize)]
pub struct AnchoredReport {
    #[serde(flatten)]
    pub chain: VerifyReport,
    pub anchors: AnchorSummary,
    pub finding: Option<Finding>,
}

impl AnchoredReport {
    /// Chain intact and no anchor disagrees.
    pub fn intact(&self) -> bool {
        self.chain.ok && self.finding.is_none()
    }
}

/// Feeds one line to the verifier and, for an event, to the anchors.
async fn feed(v: &mut Verifier, check: &mut AnchorCheck<'_>, raw: &[u8]) -> Result<bool> {
    match v.line(raw) {
        Step::Event { seq, hash } => check.event(seq, &hash).await?,
        Step::Other => {}
        Step::Broken => return Ok(false),
    }
    Ok(check.finding.is_none())
}

fn finish(v: Verifier, mut check: AnchorCheck<'_>) -> AnchoredReport {
    let chain = v.finish();
    if let (false, Some(line)) = (chain.ok, chain.broken_line) {
        // The chain itself breaks first: that is the first bad event.
        check.finding = Some(Finding {
            first_bad_seq: i64::try_from(chain.events + 1).unwrap_or(i64::MAX),
            anchor_time: None,
            last_good_anchor: check.summary.latest_seq,
            problem: format!("line {line}: {}", chain.problem.clone().unwrap_or_default()),
        });
    }
    AnchoredReport {
        chain,
        anchors: check.summary,
        finding: check.finding,
    }
}

/// The store's chain, page by page, against every anchor.
pub async fn verify_live(
    store: &dyn Store,
    anchors: &dyn ObjectStore,
    key: Option<&Secret>,
) -> Result<AnchoredReport> {
    let mut v = Verifier::new(None);
    let mut check = AnchorCheck::new(anchors, key);
    let mut after = 0i64;
    'pages: loop {
        let page = store.audit_page(after, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            after = e.seq;
            let line = serde_json::to_vec(&super::event_line(e))
                .map_err(|err| Error::Audit(err.to_string()))?;
            if !feed(&mut v, &mut check, &line).await? {
                break 'pages;
            }
        }
    }
    if check.finding.is_none() && v.report().ok {
        let last = i64::try_from(v.report().events).unwrap_or(i64::MAX);
        check.end(last, true).await?;
    }
    check.versions().await?;
    Ok(finish(v, check))
}

/// An export file, line by line, against every anchor.
pub async fn verify_file(
    path: &std::path::Path,
    anchors: &dyn ObjectStore,
    key: Option<&Secret>,
) -> Result<AnchoredReport> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::Usage(format!("cannot open {}: {e}", path.display())))?;
    let mut lines = tokio::io::BufReader::new(f).split(b'\n');
    let mut v = Verifier::new(key);
    let mut check = AnchorCheck::new(anchors, key);
    while let Some(raw) = lines
        .next_segment()
        .await
        .map_err(|e| Error::io("reading audit file", e))?
    {
        if !feed(&mut v, &mut check, &raw).await? {
            break;
        }
    }
    if check.finding.is_none() && v.report().ok {
        let last = i64::try_from(v.report().events).unwrap_or(i64::MAX);
        check.end(last, false).await?;
    }
    check.versions().await?;
    Ok(finish(v, check))
}

/// Whether NEW continues OLD: both intact, and NEW holds OLD's last hash at
/// OLD's last sequence number (so, by the chain, every event before it too).
#[derive(Debug, Serialize)]
pub struct ExtendsReport {
    pub old: VerifyReport,
    pub new: VerifyReport,
    pub extends: bool,
    pub problem: Option<String>,
}

pub fn extends(
    new: impl BufRead,
    old: impl BufRead,
    key: Option<&Secret>,
) -> Result<ExtendsReport> {
    let old = super::verify(old, key)?;
    let mut v = Verifier::new(key);
    let want = i64::try_from(old.events).unwrap_or(i64::MAX);
    let mut at_old_end = (want == 0).then(super::genesis_hash);
    for line in new.split(b'\n') {
        let raw = line.map_err(|e| Error::io("reading audit file", e))?;
        match v.line(&raw) {
            Step::Event { seq, hash } if seq == want => at_old_end = Some(hash),
            Step::Broken => break,
            _ => {}
        }
    }
    let new = v.finish();
    let problem = if !old.ok {
        Some(format!(
            "OLD is broken at line {}: {}",
            old.broken_line.unwrap_or(0),
            old.problem.as_deref().unwrap_or("")
        ))
    } else if !new.ok {
        Some(format!(
            "NEW is broken at line {}: {}",
            new.broken_line.unwrap_or(0),
            new.problem.as_deref().unwrap_or("")
        ))
    } else {
        match at_old_end {
            None => Some(format!(
                "NEW has {} events, fewer than OLD's {}: it does not continue OLD (events were removed)",
                new.events, old.events
            )),
            Some(h) if h != old.last_hash => Some(format!(
                "NEW differs from OLD at or before seq {want}: history was rewritten between the two exports"
            )),
            Some(_) => None,
        }
    };
    Ok(ExtendsReport {
        extends: problem.is_none(),
        old,
        new,
        problem,
    })
}
