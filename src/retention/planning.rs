//! The plan: which rows each data map entry's rules select at the run's
//! basis time, counted per org, with the storage form of each compared
//! timestamp and the rows legal holds keep. Written once as a checkpoint.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleCutoff {
    pub rule: String,
    pub cutoff: DateTime<Utc>,
    /// How the column this rule compares stores time, detected for the plan
    /// (absent in plans written before detection existed: detected on resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<TimeForm>,
}

/// One table's rows for a set of orgs: the union of its rules (so no row is
/// counted twice), and how many rows that selected at plan time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanItem {
    pub table: String,
    pub class: String,
    pub rules: Vec<RuleCutoff>,
    /// `Some`: an override scope for these orgs; `None`: the default scope.
    pub only_orgs: Option<Vec<String>>,
    pub exclude_orgs: Vec<String>,
    pub exclude_subjects: Vec<String>,
    /// Rows selected at plan time, in all and per org (`""`: rows without one).
    pub planned: i64,
    pub planned_by_org: BTreeMap<String, i64>,
    /// Expired rows kept by a legal hold, by hold id.
    pub held: BTreeMap<i64, i64>,
    /// Partitions removed whole (their rows are in `planned` too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionDrop>,
    /// Why partitions that lie before the cutoff are not removed whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub basis: DateTime<Utc>,
    pub items: Vec<PlanItem>,
}

/// Fails with a config error (exit 2) naming the entry when the data map does
/// not fit the schema (`appdb::preflight`), or a timestamp column's storage
/// cannot be read.
pub async fn preflight(config: &Config, db: &AppDb) -> Result<Vec<crate::appdb::SchemaProblem>> {
    let warnings = crate::appdb::preflight(config, db).await?;
    for c in time_forms(config, db, Utc::now()).await? {
        c.form()?;
    }
    Ok(warnings)
}

/// A column that a retention rule compares with a cutoff, and how it stores time.
#[derive(Debug, Clone)]
pub struct TimeColumn {
    /// `lethe.toml:LINE` of the first data map entry that compares it.
    pub location: String,
    pub table: String,
    pub column: String,
    /// `Err`: what was found and how to fix it.
    pub found: std::result::Result<DetectedForm, String>,
}

impl TimeColumn {
    /// The form, or the config error (exit 2) that names the entry and column.
    pub fn form(&self) -> Result<TimeForm> {
        self.found
            .as_ref()
            .map(|d| d.form)
            .map_err(|m| Error::Config {
                path: self.location.clone().into(),
                line: None,
                column: None,
                message: format!("data_map entry `{}`: {m}", self.table),
            })
    }
}

/// How each column the data map's default rules compare stores time, for
/// cutoffs taken from `basis` (what `check` reports and `run` refuses on).
pub async fn time_forms(
    config: &Config,
    db: &AppDb,
    basis: DateTime<Utc>,
) -> Result<Vec<TimeColumn>> {
    let mut items = Vec::new();
    for entry in config.data_map.iter().filter(|e| !e.retention.is_empty()) {
        let rules = entry
            .retention
            .iter()
            .map(|r| rule_cutoff(*r, basis))
            .collect::<Result<Vec<_>>>()?;
        items.push(plan_item(entry, rules, None, vec![], vec![]));
    }
    detect_columns(db, config, &items).await
}

/// The (table, column) a rule compares with its cutoff.
pub(super) fn compared_column(
    entry: &DataMapEntry,
    rule: &str,
    config: &Config,
) -> Result<(String, String)> {
    let parsed = RetentionRule::parse(rule).map_err(Error::Usage)?;
    Ok(match parsed {
        Some(RetentionRule::OrgClosed(_)) => {
            let orgs = config.app.as_ref().and_then(|a| a.orgs.as_ref());
            let orgs =
                orgs.ok_or_else(|| Error::Usage("org_closed rules need [app.orgs]".into()))?;
            (
                orgs.table.clone(),
                orgs.closed_at.clone().unwrap_or_default(),
            )
        }
        _ => (
            entry.table.clone(),
            entry.timestamp.clone().unwrap_or_default(),
        ),
    })
}

pub(super) fn entry_for<'a>(config: &'a Config, table: &str) -> Result<&'a DataMapEntry> {
    config
        .data_map
        .iter()
        .find(|e| e.table == table)
        .ok_or_else(|| Error::Failed(format!("table {table} left the data map during the run")))
}

/// Detects each compared column once, at the latest cutoff it is compared with
/// (every value that cutoff could select is checked).
pub(super) async fn detect_columns(
    db: &AppDb,
    config: &Config,
    items: &[PlanItem],
) -> Result<Vec<TimeColumn>> {
    let mut latest: BTreeMap<(String, String), (String, DateTime<Utc>)> = BTreeMap::new();
    for item in items {
        let entry = entry_for(config, &item.table)?;
        for rc in &item.rules {
            let key = compared_column(entry, &rc.rule, config)?;
            let slot = latest
                .entry(key)
                .or_insert((entry.location.clone(), rc.cutoff));
            slot.1 = slot.1.max(rc.cutoff);
        }
    }
    let mut out = Vec::new();
    for ((table, column), (location, cutoff)) in latest {
        let found = match db.time_form(&table, &column, cutoff).await {
            Ok(d) => Ok(d),
            Err(Error::Usage(m)) => Err(m),
            Err(e) => return Err(e),
        };
        out.push(TimeColumn {
            location,
            table,
            column,
            found,
        });
    }
    Ok(out)
}

/// Records in every rule the form of the column it compares; a column that
/// cannot be read refuses the whole plan (config error) before anything is deleted.
pub(super) async fn assign_forms(
    db: &AppDb,
    config: &Config,
    items: &mut [PlanItem],
) -> Result<()> {
    let columns = detect_columns(db, config, items).await?;
    for item in items.iter_mut() {
        let entry = entry_for(config, &item.table)?;
        for rc in item.rules.iter_mut() {
            let key = compared_column(entry, &rc.rule, config)?;
            let col = columns
                .iter()
                .find(|c| (c.table.as_str(), c.column.as_str()) == (key.0.as_str(), key.1.as_str()))
                .ok_or_else(|| {
                    Error::Failed(format!("no form detected for {}.{}", key.0, key.1))
                })?;
            rc.form = Some(col.form()?);
        }
    }
    Ok(())
}

pub(super) async fn count_by_org(db: &AppDb, s: &Scope) -> Result<BTreeMap<String, i64>> {
    Ok(db
        .count_by_org(s)
        .await?
        .into_iter()
        .map(|(o, n)| (o.unwrap_or_default(), n))
        .collect())
}

pub(super) struct Holds {
    pub(super) orgs: Vec<(i64, String)>,
    /// (hold id, subject id) after resolving emails.
    pub(super) subjects: Vec<(i64, String)>,
}

pub(super) async fn active_holds(store: &dyn Store, db: &AppDb, config: &Config) -> Result<Holds> {
    let all = store.holds(false).await?;
    let orgs = all
        .iter()
        .filter(|h| h.scope == HoldScope::Org)
        .map(|h| (h.id, h.value.clone()))
        .collect();
    let mut subjects = Vec::new();
    if let Some(app) = &config.app {
        for h in all.iter().filter(|h| h.scope == HoldScope::Subject) {
            for id in db
                .subject_ids(&app.subjects, std::slice::from_ref(&h.value))
                .await?
            {
                subjects.push((h.id, id));
            }
        }
    }
    Ok(Holds { orgs, subjects })
}

pub(super) fn selector(
    entry: &DataMapEntry,
    rule: RetentionRule,
    rc: &RuleCutoff,
    config: &Config,
) -> Result<Selector> {
    let (cutoff, form) = (rc.cutoff, rc.form.unwrap_or(TimeForm::Native));
    Ok(match rule {
        RetentionRule::Age(_) => Selector::Before {
            column: entry.timestamp.clone().unwrap_or_default(),
            cutoff,
            form,
        },
        RetentionRule::OrgClosed(_) => {
            let orgs = config
                .app
                .as_ref()
                .and_then(|a| a.orgs.as_ref())
                .ok_or_else(|| Error::Usage("org_closed rules need [app.orgs]".into()))?;
            Selector::OrgClosed {
                orgs_table: orgs.table.clone(),
                orgs_id: orgs.id.clone(),
                closed_at: orgs.closed_at.clone().unwrap_or_default(),
                cutoff,
                form,
            }
        }
    })
}

pub(super) fn scope(entry: &DataMapEntry, item: &PlanItem, config: &Config) -> Result<Scope> {
    let mut selectors = Vec::new();
    for rc in &item.rules {
        let rule = RetentionRule::parse(&rc.rule)
            .map_err(Error::Usage)?
            .ok_or_else(|| Error::Usage(format!("plan rule `{}` keeps everything", rc.rule)))?;
        selectors.push(selector(entry, rule, rc, config)?);
    }
    Ok(Scope {
        table: entry.table.clone(),
        org: entry.org.clone(),
        subject: entry.subject.clone(),
        selectors,
        only_orgs: item.only_orgs.clone(),
        exclude_orgs: item.exclude_orgs.clone(),
        exclude_subjects: item.exclude_subjects.clone(),
        range: None,
        append_only: entry.append_only,
    })
}

pub(super) fn rule_cutoff(rule: RetentionRule, basis: DateTime<Utc>) -> Result<RuleCutoff> {
    let cutoff = rule
        .period()
        .before(basis)
        .ok_or_else(|| Error::Usage(format!("retention {rule} reaches before the calendar")))?;
    Ok(RuleCutoff {
        rule: rule.to_string(),
        cutoff,
        form: None,
    })
}

/// Builds the plan: cutoffs from `basis`; each org with an override gets its
/// own item (its fixed periods replaced; `org_closed` rules still apply); held
/// orgs and subjects are excluded.
pub(super) async fn plan(
    config: &Config,
    store: &dyn Store,
    db: &AppDb,
    basis: DateTime<Utc>,
    classes: Option<&[String]>,
    detacher: Option<&Detacher<'_>>,
) -> Result<Plan> {
    let overrides = store.overrides().await?;
    let holds = active_holds(store, db, config).await?;
    let held_orgs: Vec<String> = holds.orgs.iter().map(|(_, o)| o.clone()).collect();
    let held_subjects: Vec<String> = holds.subjects.iter().map(|(_, s)| s.clone()).collect();
    let mut items = Vec::new();
    for entry in &config.data_map {
        if entry.retention.is_empty() || classes.is_some_and(|c| !c.contains(&entry.class)) {
            continue;
        }
        let default_rules = entry
            .retention
            .iter()
            .map(|r| rule_cutoff(*r, basis))
            .collect::<Result<Vec<_>>>()?;
        let has_age = entry
            .retention
            .iter()
            .any(|r| matches!(r, RetentionRule::Age(_)));
        let class_overrides: Vec<_> = if has_age && entry.org.is_some() {
            overrides
                .iter()
                .filter(|o| o.class == entry.class)
                .collect()
        } else {
            vec![]
        };
        let mut default_excludes = held_orgs.clone();
        default_excludes.extend(class_overrides.iter().map(|o| o.org.clone()));
        let mut scopes = vec![(default_rules, None, default_excludes)];
        for o in &class_overrides {
            let p = Period::parse(&o.period).map_err(Error::Usage)?;
            let mut rules = vec![rule_cutoff(RetentionRule::Age(p), basis)?];
            for r in entry
                .retention
                .iter()
                .filter(|r| matches!(r, RetentionRule::OrgClosed(_)))
            {
                rules.push(rule_cutoff(*r, basis)?);
            }
            scopes.push((rules, Some(vec![o.org.clone()]), held_orgs.clone()));
        }
        for (rules, only_orgs, exclude_orgs) in scopes {
            items.push(plan_item(
                entry,
                rules,
                only_orgs,
                exclude_orgs,
                held_subjects.clone(),
            ));
        }
    }
    // Every compared column is read in its own storage form; refused before anything is counted.
    assign_forms(db, config, &mut items).await?;
    for item in &mut items {
        let entry = entry_for(config, &item.table)?;
        let s = scope(entry, item, config)?;
        // A partitioned table is counted once, by partition and org.
        let parts = plan_drops(db, entry, item, &s, detacher).await?;
        item.planned_by_org = match parts.by_org {
            Some(by_org) => by_org,
            None => count_by_org(db, &s).await?,
        };
        item.planned = item.planned_by_org.values().sum();
        item.held = held_counts(db, &s, &holds).await?;
        (item.partitions, item.partition_notes) = (parts.drops, parts.notes);
    }
    Ok(Plan { basis, items })
}

/// An item before counting.
pub(super) fn plan_item(
    entry: &DataMapEntry,
    rules: Vec<RuleCutoff>,
    only_orgs: Option<Vec<String>>,
    exclude_orgs: Vec<String>,
    exclude_subjects: Vec<String>,
) -> PlanItem {
    PlanItem {
        table: entry.table.clone(),
        class: entry.class.clone(),
        rules,
        only_orgs,
        exclude_orgs,
        exclude_subjects,
        planned: 0,
        planned_by_org: BTreeMap::new(),
        held: BTreeMap::new(),
        partitions: vec![],
        partition_notes: vec![],
    }
}

/// Expired rows that a hold keeps, by hold id.
pub(super) async fn held_counts(
    db: &AppDb,
    s: &Scope,
    holds: &Holds,
) -> Result<BTreeMap<i64, i64>> {
    let mut out = BTreeMap::new();
    if s.org.is_some() {
        for (id, org) in &holds.orgs {
            let mut h = s.clone();
            h.only_orgs = Some(vec![org.clone()]);
            h.exclude_orgs.clear();
            h.exclude_subjects.clear();
            let n = db.count(&h).await?;
            if n > 0 {
                *out.entry(*id).or_default() += n;
            }
        }
    }
    if s.subject.is_some() {
        let mut base = s.clone();
        base.exclude_subjects.clear();
        for (id, subject) in &holds.subjects {
            let n = count_subject(db, &base, subject).await?;
            if n > 0 {
                *out.entry(*id).or_default() += n;
            }
        }
    }
    Ok(out)
}

/// Rows in `s` whose subject is `subject`: total minus the rows left when that subject is excluded.
pub(super) async fn count_subject(db: &AppDb, s: &Scope, subject: &str) -> Result<i64> {
    let mut without = s.clone();
    without.exclude_subjects = vec![subject.to_string()];
    Ok(db.count(s).await? - db.count(&without).await?)
}
