//! How far a processor-scoped erasure (`dsr submit --org ORG`) reaches: the
//! org's rows only, or the whole subject when nothing else of theirs belongs
//! to another org. Decided from the application's rows each time, so a retry
//! after a crash decides as the first attempt did.

use crate::appdb::AppDb;
use crate::config::{AppMapping, Config};
use crate::error::{Error, Result};
use crate::store::DsrRequest;

use super::ledger::HoldsInForce;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach<'a> {
    Subject,
    Org(&'a str),
}

/// An unscoped request reaches the whole subject. A request limited to ORG
/// reaches the whole subject (as an org's deletion erases its only-members)
/// only when memberships are mapped and neither a membership nor a row of an
/// org-scoped table ties them to another org; otherwise ORG's rows only.
/// A subject no longer found was erased whole (an earlier attempt committed)
/// or deleted by the application: the whole subject either way.
pub(super) async fn reach<'a>(
    config: &Config,
    db: &AppDb,
    app: &AppMapping,
    r: &'a DsrRequest,
    subject_id: Option<&str>,
) -> Result<Reach<'a>> {
    let (Some(org), Some(id)) = (r.org.as_deref(), subject_id) else {
        return Ok(Reach::Subject);
    };
    let Some(m) = &app.memberships else {
        return Ok(Reach::Org(org));
    };
    let mut tables = vec![(m.table.as_str(), m.subject.as_str(), m.org.as_str())];
    for e in &config.data_map {
        if let (Some(s), Some(o)) = (&e.subject, &e.org) {
            tables.push((e.table.as_str(), s.as_str(), o.as_str()));
        }
    }
    for (table, subject, org_col) in tables {
        let orgs = db.subject_orgs(table, subject, org_col, id).await?;
        if orgs.iter().any(|o| o != org) {
            return Ok(Reach::Org(org));
        }
    }
    Ok(Reach::Subject)
}

/// Decided again right before the erasure's transaction: a membership of
/// another org that appeared meanwhile must not be erased with the account.
pub(super) async fn confirm(
    config: &Config,
    db: &AppDb,
    app: &AppMapping,
    r: &DsrRequest,
    (subject_id, decided): (&str, Reach<'_>),
) -> Result<()> {
    if r.org.is_none() || reach(config, db, app, r, Some(subject_id)).await? == decided {
        return Ok(());
    }
    Err(Error::Failed(format!(
        "request {}: the subject's memberships changed while it was being prepared; \
         nothing was erased, and the next run decides again",
        r.id
    )))
}

/// The `legal_hold` refusal when a hold names the subject, or the org a
/// processor-scoped request names (as at intake, whatever its reach).
pub(super) fn held(holds: &HoldsInForce, r: &DsrRequest) -> Option<(String, String)> {
    let org_hold = r.org.as_deref().and_then(|o| holds.org_hold(o));
    let h = holds.subject_hold(&r.subject).or(org_hold)?;
    Some((
        "legal_hold".into(),
        format!("legal hold {}: {}", h.id, h.reason),
    ))
}
