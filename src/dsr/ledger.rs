//! The erasure ledger: which subjects were erased (keyed hashes of their
//! emails), the keyed check value that says which pseudonym key it was written
//! with, the legal holds both the live erasure and a re-application obey, and
//! re-application to a restored database.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};

use serde::Serialize;
use serde_json::{json, Value};

use super::process::{erase_plan, keyed, ledger_id_key, ledger_key, pseudonym_key};
use crate::appdb::{AppDb, EraseAction, EraseOutcome, EraseStep, OrgScope};
use crate::config::{AppMapping, Secret};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::store::{DsrState, HoldScope, LegalHold};

/// What the check value is a keyed hash of; bump the version to change its meaning.
const CHECK_LABEL: &str = "ledger-check:v1";

fn key_mismatch(ctx: &Context) -> Error {
    Error::Usage(format!(
        "the pseudonym key does not match the one the erasure ledger was written with: \
         set {} to that key (the erasures recorded so far can only be recognised with it)",
        ctx.config.dsr.pseudonym_key.describe()
    ))
}

/// The pseudonym key, refused unless it is the one the ledger is written with.
/// The first key used records the check value.
pub(crate) async fn checked_key(ctx: &Context) -> Result<Secret> {
    let key = pseudonym_key(&ctx.config)?;
    let ours = keyed(&key, CHECK_LABEL);
    let stored = match ctx.store.ledger_check().await? {
        Some(v) => v,
        None => {
            let entries = ctx.store.ledger_keys().await?;
            if !entries.is_empty() && !key_matches_erased_requests(ctx, &key, &entries).await? {
                return Err(key_mismatch(ctx));
            }
            ctx.store.ledger_check_init(&ours).await?
        }
    };
    if stored != ours {
        return Err(key_mismatch(ctx));
    }
    Ok(key)
}

/// A ledger written before check values existed: the key is right when it
/// hashes some completed erasure's email to a ledger entry. With no email left
/// to test, the key is trusted from now on (and recorded).
async fn key_matches_erased_requests(
    ctx: &Context,
    key: &Secret,
    entries: &[String],
) -> Result<bool> {
    let entries: HashSet<&str> = entries.iter().map(String::as_str).collect();
    let requests = ctx.store.dsr_list(Some(DsrState::Completed), 1000).await?;
    let emails: Vec<&str> = requests
        .iter()
        .filter(|r| r.kind == "erasure" && r.subject.contains('@'))
        .map(|r| r.subject.as_str())
        .collect();
    if emails.is_empty() {
        tracing::warn!(
            "the erasure ledger has entries but no check value and no erased email to test the pseudonym key with; recording this key as the ledger's"
        );
        return Ok(true);
    }
    Ok(emails
        .iter()
        .any(|e| entries.contains(ledger_key(key, e).as_str())))
}

/// The legal holds in force now, as both the live erasure and a
/// re-application of the ledger apply them.
pub(crate) struct HoldsInForce(Vec<LegalHold>);

impl HoldsInForce {
    pub(crate) async fn load(ctx: &Context) -> Result<HoldsInForce> {
        Ok(HoldsInForce(ctx.store.holds(false).await?))
    }

    /// The hold on this subject, if any: such a subject is not erased.
    pub(crate) fn subject_hold(&self, email: &str) -> Option<&LegalHold> {
        self.0
            .iter()
            .find(|h| h.scope == HoldScope::Subject && h.value.eq_ignore_ascii_case(email))
    }

    /// The hold on this org, if any: a request limited to it erases nothing.
    pub(crate) fn org_hold(&self, org: &str) -> Option<&LegalHold> {
        self.0
            .iter()
            .find(|h| h.scope == HoldScope::Org && h.value == org)
    }

    /// Orgs whose rows every erasure step leaves in place.
    pub(crate) fn held_orgs(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|h| h.scope == HoldScope::Org)
            .map(|h| h.value.clone())
            .collect()
    }
}

/// What a re-application did.
#[derive(Debug, Default, Serialize)]
pub struct ReapplyReport {
    /// Subjects whose rectifications were applied again.
    pub rectified: u64,
    /// Corrections of a table or column the restored schema lacks (or the data map no longer allows).
    pub corrections_skipped: u64,
    /// Subjects erased again.
    pub reapplied: u64,
    /// One-org erasures (a processor-scoped request's) applied again.
    pub reapplied_in_orgs: u64,
    /// Subjects in the restored data left alone because a hold names them.
    pub subjects_held: u64,
    /// Rows kept per table because their org is held.
    pub rows_kept_for_holds: BTreeMap<String, u64>,
    /// Orgs whose completed deletion was applied again, and the rows it took per table.
    pub orgs_deleted_again: Vec<String>,
    pub org_rows_deleted: BTreeMap<String, u64>,
    /// Deleted orgs found in the restored data but left alone: a hold names them now.
    pub orgs_held: Vec<String>,
}

/// A re-application of the ledger, prepared before anything is restored: a
/// missing or wrong key is refused here, so a restore that cannot re-apply
/// the ledger writes nothing.
pub struct LedgerReapply {
    entries: HashSet<String>,
    /// One-org erasures: subject id key → the orgs, each with when.
    org_entries: HashMap<String, Vec<(String, DateTime<Utc>)>>,
    key: Option<Secret>,
    holds: HoldsInForce,
    /// When the restored backup was taken: only org deletions completed
    /// after it are applied again (a newer backup may hold a new org of the same id).
    taken_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl LedgerReapply {
    pub async fn prepare(ctx: &Context) -> Result<LedgerReapply> {
        let entries: HashSet<String> = ctx.store.ledger_keys().await?.into_iter().collect();
        let mut org_entries: HashMap<String, Vec<(String, DateTime<Utc>)>> = HashMap::new();
        for (k, org, at) in ctx.store.ledger_org_entries().await? {
            org_entries.entry(k).or_default().push((org, at));
        }
        let holds = HoldsInForce::load(ctx).await?;
        let corrections = ctx.store.corrections_applied(None).await?.len();
        let count = entries.len() + org_entries.len() + corrections;
        if count == 0 {
            // Nothing to re-apply: no key needed.
            return Ok(LedgerReapply {
                entries,
                org_entries,
                key: None,
                holds,
                taken_at: None,
            });
        }
        app_mapping(ctx)?;
        let key = checked_key(ctx).await.map_err(|e| match e {
            Error::Usage(m) => Error::Usage(format!(
                "the erasure ledger holds {count} erasure(s) and correction(s) to re-apply to the restored database: {m}"
            )),
            other => other,
        })?;
        Ok(LedgerReapply {
            entries,
            org_entries,
            key: Some(key),
            holds,
            taken_at: None,
        })
    }

    /// For a restore of the backup taken at `taken_at`.
    pub fn for_backup(mut self, taken_at: chrono::DateTime<chrono::Utc>) -> LedgerReapply {
        self.taken_at = Some(taken_at);
        self
    }

    /// Erases again, in `target_url`, every subject of the ledger found there,
    /// with the live erasure's plan and the holds in force now.
    pub async fn apply(&self, ctx: &Context, target_url: &str) -> Result<ReapplyReport> {
        // Read again: an erasure completed, or a hold placed, while the backup
        // was being restored counts too (`prepare` only checked the key early).
        let now = Self::prepare(ctx).await?;
        let db = AppDb::connect(target_url).await?;
        let r = async {
            let mut report = match &now.key {
                Some(key) => {
                    // Corrections first: an erasure after them makes them moot.
                    let app = app_mapping(ctx)?;
                    let (rectified, skipped) =
                        super::rectify::reapply(ctx, &db, (app, key), self.taken_at).await?;
                    let mut report = now.apply_on(ctx, &db, key, self.taken_at).await?;
                    (report.rectified, report.corrections_skipped) = (rectified, skipped);
                    report
                }
                None => ReapplyReport::default(),
            };
            let held = now.holds.held_orgs();
            super::reapply_orgs::apply(ctx, &db, &held, self.taken_at, &mut report).await?;
            Ok(report)
        }
        .await;
        db.close().await;
        r
    }

    async fn apply_on(
        &self,
        ctx: &Context,
        db: &AppDb,
        key: &Secret,
        taken_at: Option<DateTime<Utc>>,
    ) -> Result<ReapplyReport> {
        let config = ctx.config.as_ref();
        let app = app_mapping(ctx)?;
        // Ownership may differ in old data; the ledger's promise wins: no sole-owner veto here.
        let no_memberships = AppMapping {
            memberships: None,
            ..app.clone()
        };
        let present = schema_preflight(db, app, &erase_plan(config, key, "-").steps).await?;
        let held_orgs = self.holds.held_orgs();
        let mut report = ReapplyReport::default();
        // All matches first, then the erasures: no write while the scan is open.
        let found = db
            .subjects_matching(app, |id, email| {
                self.entries.contains(&ledger_key(key, email))
                    || self.org_entries.contains_key(&ledger_id_key(key, id))
            })
            .await?;
        for (id, email) in found {
            if self.holds.subject_hold(&email).is_some() {
                report.subjects_held += 1;
                continue;
            }
            let mut steps = erase_plan(config, key, &id).steps;
            steps.retain(|s| present.contains(&s.table));
            super::decrypt::seal_anonymised(ctx, db, &id, &mut steps).await?;
            if self.entries.contains(&ledger_key(key, &email)) {
                let scope = OrgScope::AllExcept(&held_orgs);
                let kept = erase_again(db, &no_memberships, &id, &steps, scope).await?;
                for (table, n) in kept {
                    *report.rows_kept_for_holds.entry(table).or_default() += n;
                }
                report.reapplied += 1;
                continue;
            }
            // Erased in some orgs only: their tables, their rows, unless held
            // now; and only erasures after the backup was taken (rows the
            // subject made in the org since then are not the erased ones).
            steps.retain(|s| s.org.is_some());
            let orgs = self.org_entries.get(&ledger_id_key(key, &id));
            for (org, at) in orgs.into_iter().flatten() {
                if taken_at.is_some_and(|t| *at <= t) {
                    continue;
                }
                if self.holds.org_hold(org).is_none() {
                    erase_again(db, &no_memberships, &id, &steps, OrgScope::Only(org)).await?;
                    report.reapplied_in_orgs += 1;
                }
            }
        }
        Ok(report)
    }
}

/// One erasure re-applied; the rows kept for holds, per table.
async fn erase_again(
    db: &AppDb,
    no_memberships: &AppMapping,
    id: &str,
    steps: &[EraseStep],
    scope: OrgScope<'_>,
) -> Result<BTreeMap<String, u64>> {
    match db
        .erase_subject(no_memberships, id, steps, scope, &Fence::unleased())
        .await?
    {
        EraseOutcome::Done { kept_for_holds, .. } => Ok(kept_for_holds),
        EraseOutcome::SoleOwner(_) => Err(Error::Failed(
            "re-applying the ledger met a sole-owner veto it had switched off".into(),
        )),
    }
}

/// The tables of the erasure plan the restored database has. A table it lacks
/// (an older schema) has no rows to erase; a column it lacks fails: SQLite
/// would read the missing column's quoted name as a string and erase nothing.
async fn schema_preflight(
    db: &AppDb,
    app: &AppMapping,
    steps: &[EraseStep],
) -> Result<HashSet<String>> {
    let missing = |table: &str, col: &str| {
        Error::Failed(format!(
            "the restored database's table `{table}` has no column `{col}` that the data map \
             erases by: the erasure ledger cannot be re-applied to this backup, so it is not restored"
        ))
    };
    let subjects = &app.subjects;
    let cols = db.columns(&subjects.table).await?.unwrap_or_default();
    for c in [&subjects.id, &subjects.email] {
        if !cols.contains(c) {
            return Err(missing(&subjects.table, c));
        }
    }
    let mut present = HashSet::new();
    for step in steps {
        let Some(cols) = db.columns(&step.table).await? else {
            continue;
        };
        let mut needed: Vec<&String> = vec![&step.subject];
        needed.extend(&step.org);
        if let EraseAction::Update(sets) = &step.action {
            needed.extend(sets.iter().map(|(c, _)| c));
        }
        if let Some(c) = needed.into_iter().find(|c| !cols.contains(c)) {
            return Err(missing(&step.table, c));
        }
        present.insert(step.table.clone());
    }
    Ok(present)
}

fn app_mapping(ctx: &Context) -> Result<&AppMapping> {
    ctx.config.app.as_ref().ok_or_else(|| {
        Error::Usage(
            "the erasure ledger has entries, and re-applying them needs [app] in the config".into(),
        )
    })
}

/// After restoring an older backup: erase again every subject in the ledger.
pub async fn reapply_ledger(ctx: &Context, target_url: &str) -> Result<Value> {
    let r = LedgerReapply::prepare(ctx)
        .await?
        .apply(ctx, target_url)
        .await?;
    Ok(
        json!({"rectified": r.rectified, "corrections_skipped": r.corrections_skipped,
               "reapplied": r.reapplied, "reapplied_in_orgs": r.reapplied_in_orgs,
              "subjects_held": r.subjects_held, "rows_kept_for_holds": r.rows_kept_for_holds}),
    )
}
