//! `[[object_retention]]`: files no row references, purged by prefix and
//! age. Each rule's prefix is listed page by page (memory stays bounded by a
//! page whatever the bucket's size); a file whose key fits the template is
//! expired when a rule says so (its age by last-modified time, or its org
//! closed longer than the period), kept when its org or subject is under a
//! legal hold, and otherwise recorded as a pending delete and deleted with
//! the purges' files (every version; Object Lock deferrals; evidence per
//! class and org).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};

use super::*;
use crate::config::ObjectRetention;
use crate::store::NewPendingObject;

/// Every `[[object_retention]]` rule once; per rule what was listed, found
/// expired, and kept for holds.
pub(super) async fn purge_prefixes(
    jc: &JobContext,
    db: &AppDb,
    basis: DateTime<Utc>,
) -> Result<Vec<Value>> {
    let config = jc.ctx.config.as_ref();
    let mut out = Vec::new();
    if config.object_retention.is_empty() {
        return Ok(out);
    }
    let FilePolicy {
        closed,
        held_orgs,
        held_subjects,
        overrides,
    } = FilePolicy::load(jc, db).await?;
    for rule in &config.object_retention {
        let (mut listed, mut expired, mut held, mut unmatched) = (0u64, 0u64, 0u64, 0u64);
        let store = jc.ctx.app_store(&rule.store).await?;
        let prefix = rule.keys.prefix();
        // Versions, not current objects: a file the application deleted on
        // a versioned bucket (a delete marker on top) still holds its data.
        let mut token: Option<String> = None;
        loop {
            let page = store.list_versions_page(&prefix, token.as_deref()).await?;
            token = page.next;
            let mut pending = Vec::new();
            for o in page.keys {
                listed += 1;
                let Some(named) = rule.keys.name(&o.key) else {
                    unmatched += 1;
                    continue;
                };
                let over = overrides
                    .get(&(rule.class.clone(), named.org.clone()))
                    .copied();
                if !is_expired(rule, &named.org, o.modified, &closed, basis, over) {
                    continue;
                }
                if held_orgs.contains(&named.org)
                    || named
                        .subject
                        .as_ref()
                        .is_some_and(|s| held_subjects.contains(s))
                {
                    held += 1;
                    continue;
                }
                expired += 1;
                pending.push(NewPendingObject {
                    store_name: rule.store.clone(),
                    table_name: String::new(),
                    column_name: String::new(),
                    object_key: o.key,
                    class: rule.class.clone(),
                    org: named.org,
                });
            }
            if !jc.dry_run && !pending.is_empty() {
                jc.ctx
                    .store
                    .objects_pend(objects::RETENTION, &pending)
                    .await?;
                objects::finish_for_run(jc, db, Tail::Defer).await?;
            }
            if token.is_none() {
                break;
            }
        }
        out.push(json!({"store": rule.store, "keys": rule.keys.text, "class": rule.class,
                        "listed": listed, if jc.dry_run { "would_delete" } else { "expired" }: expired,
                        "kept_for_holds": held, "not_matching_the_template": unmatched}));
    }
    Ok(out)
}

/// What decides a file's fate besides its rule: org closures, legal holds,
/// and per-org overrides (which replace a class's age rules, as for rows).
struct FilePolicy {
    closed: BTreeMap<String, Option<DateTime<Utc>>>,
    held_orgs: HashSet<String>,
    held_subjects: HashSet<String>,
    overrides: BTreeMap<(String, String), Period>,
}

impl FilePolicy {
    async fn load(jc: &JobContext, db: &AppDb) -> Result<FilePolicy> {
        let config = jc.ctx.config.as_ref();
        let closed = match config.app.as_ref().and_then(|a| a.orgs.as_ref()) {
            Some(orgs) => db.orgs_with_closure(orgs).await?.into_iter().collect(),
            None => BTreeMap::new(),
        };
        let holds = active_holds(jc.ctx.store.as_ref(), db, config).await?;
        let mut overrides = BTreeMap::new();
        for o in jc.ctx.store.overrides().await? {
            let p = Period::parse(&o.period).map_err(Error::Usage)?;
            overrides.insert((o.class, o.org), p);
        }
        Ok(FilePolicy {
            closed,
            held_orgs: holds.orgs.into_iter().map(|(_, o)| o).collect(),
            held_subjects: holds.subjects.into_iter().map(|(_, s)| s).collect(),
            overrides,
        })
    }
}

/// Whether any of the rule's periods has run out for this file; an org's
/// override replaces the age rules (closure rules still apply).
fn is_expired(
    rule: &ObjectRetention,
    org: &str,
    modified: Option<DateTime<Utc>>,
    closed: &BTreeMap<String, Option<DateTime<Utc>>>,
    basis: DateTime<Utc>,
    over: Option<Period>,
) -> bool {
    let has_age = rule
        .retention
        .iter()
        .any(|r| matches!(r, RetentionRule::Age(_)));
    let rules: Vec<RetentionRule> = match over {
        Some(p) if has_age => rule
            .retention
            .iter()
            .filter(|r| matches!(r, RetentionRule::OrgClosed(_)))
            .copied()
            .chain([RetentionRule::Age(p)])
            .collect(),
        _ => rule.retention.clone(),
    };
    rules.iter().any(|r| match r {
        RetentionRule::Age(p) => match (modified, p.before(basis)) {
            (Some(m), Some(cutoff)) => m < cutoff,
            _ => false,
        },
        RetentionRule::OrgClosed(p) => match closed.get(org).copied().flatten() {
            Some(c) => p.after(c).is_some_and(|due| due <= basis),
            None => false,
        },
    })
}
