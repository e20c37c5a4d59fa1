//! The data map: for each application table, its data class, columns,
//! retention rules, erasure strategy and export flag; and `[app]`, which says
//! where subjects, orgs and memberships live.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::SourceFile;
use crate::error::Result;
use crate::policy::RetentionRule;

#[derive(Debug, Clone)]
pub struct AppMapping {
    pub subjects: SubjectsTable,
    pub orgs: Option<OrgsTable>,
    pub memberships: Option<MembershipsTable>,
    /// The application's table of wrapped per-org data keys (`[app.keys]`).
    pub keys: Option<KeysTable>,
}

/// Where the application keeps its wrapped data keys: one row an org and
/// DEK version. Column names default to the names below.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysTable {
    pub table: String,
    #[serde(default = "default_keys_org")]
    pub org: String,
    #[serde(default = "default_keys_version")]
    pub version: String,
    /// The DEK as the KMS wrapped it (base64 text).
    #[serde(default = "default_keys_wrapped")]
    pub wrapped_key: String,
    /// The KMS key (KEK) that wrapped it.
    #[serde(default = "default_keys_kek")]
    pub kms_key_id: String,
    /// `active`, `retired` or `destroyed`.
    #[serde(default = "default_keys_state")]
    pub state: String,
    #[serde(default = "default_keys_created")]
    pub created_at: String,
}

fn default_keys_org() -> String {
    "org_id".into()
}
fn default_keys_version() -> String {
    "version".into()
}
fn default_keys_wrapped() -> String {
    "wrapped_key".into()
}
fn default_keys_kek() -> String {
    "kms_key_id".into()
}
fn default_keys_state() -> String {
    "state".into()
}
fn default_keys_created() -> String {
    "created_at".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectsTable {
    pub table: String,
    pub id: String,
    pub email: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgsTable {
    pub table: String,
    pub id: String,
    pub closed_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipsTable {
    pub table: String,
    pub org: String,
    pub subject: String,
    pub role: String,
    #[serde(default = "default_owner_roles")]
    pub owner_roles: Vec<String>,
}

fn default_owner_roles() -> Vec<String> {
    vec!["owner".into()]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnonymizeRule {
    Null,
    Fixed(String),
    /// Keyed HMAC-SHA-256 pseudonym: stable per subject, not reversible without the key.
    Hmac,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erasure {
    Delete,
    Anonymize(Vec<(String, AnonymizeRule)>),
    Retain { legal_basis: String },
}

#[derive(Debug, Clone)]
pub struct DataMapEntry {
    pub table: String,
    pub class: String,
    pub timestamp: Option<String>,
    pub org: Option<String>,
    pub subject: Option<String>,
    pub retention: Vec<RetentionRule>,
    pub erasure: Erasure,
    pub export: bool,
    /// Columns holding `lethe1:` ciphertexts under the row's org's data key.
    pub encrypted: Vec<String>,
    /// Columns holding keys of objects in the application's stores: the
    /// files go when their rows do.
    pub objects: Vec<ObjectColumn>,
    /// The application's own append-only log (`append_only = true`): `lethe
    /// check` demands the guard triggers (`lethe app guard install`), which
    /// refuse UPDATE and TRUNCATE, and DELETE except by Lethe's retention.
    pub append_only: bool,
    /// Columns a subject may have corrected (`dsr submit --kind
    /// rectification`). Opt-in: only the application knows which columns are
    /// facts about the person rather than keys, flags or derived values.
    pub rectifiable: Vec<String>,
    /// `lethe.toml:LINE`, for errors found later against the live schema.
    pub location: String,
}

impl DataMapEntry {
    /// Why `column` may never be rectified, whatever the map says: it keys,
    /// scopes, dates or seals the row (changing it would move the row to
    /// another person or org, or out of its retention, not correct it).
    pub fn never_rectifiable(
        &self,
        app: Option<&AppMapping>,
        column: &str,
    ) -> Option<&'static str> {
        let is = |c: Option<&String>| c.is_some_and(|c| c == column);
        let subjects = app.map(|a| &a.subjects).filter(|s| s.table == self.table);
        let members = app
            .and_then(|a| a.memberships.as_ref())
            .filter(|m| m.table == self.table);
        if self.append_only {
            Some("the table is append-only (its rows are never updated)")
        } else if is(self.subject.as_ref()) {
            Some("it names the subject the row is about")
        } else if is(self.org.as_ref()) {
            Some("it names the org the row belongs to")
        } else if is(self.timestamp.as_ref()) {
            Some("retention counts from it")
        } else if subjects.is_some_and(|s| s.id == column) {
            Some("it is the subject's id")
        } else if subjects.is_some_and(|s| s.email == column) {
            Some("the email is how requests find the subject; the application changes it, with its own check")
        } else if members
            .is_some_and(|m| [&m.org, &m.subject, &m.role].iter().any(|c| *c == column))
        {
            Some("memberships and roles decide ownership; the application changes them")
        } else if self.encrypted.iter().any(|c| c == column) {
            Some("the application encrypts it with its org's key; the application rectifies it")
        } else if self.objects.iter().any(|o| o.column == column) {
            Some("it names a stored file")
        } else {
            None
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    subjects: SubjectsTable,
    orgs: Option<OrgsTable>,
    memberships: Option<MembershipsTable>,
    keys: Option<KeysTable>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntry {
    table: Spanned<String>,
    class: String,
    timestamp: Option<String>,
    org: Option<String>,
    subject: Option<String>,
    retention: Option<Spanned<OneOrMany>>,
    erasure: Option<Spanned<String>>,
    anonymize: Option<BTreeMap<String, String>>,
    legal_basis: Option<String>,
    #[serde(default)]
    export: bool,
    #[serde(default)]
    encrypted: Vec<String>,
    #[serde(default)]
    objects: Vec<ObjectColumn>,
    #[serde(default)]
    append_only: bool,
    #[serde(default)]
    rectifiable: Vec<String>,
}

/// A column of object keys (relative to the store's URL) and its store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectColumn {
    pub column: String,
    pub store: String,
}

pub(super) fn load_app(raw: Option<RawApp>) -> Option<AppMapping> {
    raw.map(|r| AppMapping {
        subjects: r.subjects,
        orgs: r.orgs,
        memberships: r.memberships,
        keys: r.keys,
    })
}

pub(super) fn load_entries(
    src: &SourceFile,
    raw: Vec<RawEntry>,
    app: Option<&AppMapping>,
    stores: &BTreeMap<String, super::ObjectStoreConfig>,
) -> Result<Vec<DataMapEntry>> {
    let mut out: Vec<DataMapEntry> = Vec::new();
    for e in raw {
        let span = e.table.span();
        let table = e.table.get_ref().clone();
        let err = |m: String| src.error_at(span.clone(), format!("data_map entry `{table}`: {m}"));
        if table.trim().is_empty() {
            return Err(err("`table` is empty".into()));
        }
        if out.iter().any(|o| o.table == table) {
            return Err(err("this table is mapped twice; merge the entries".into()));
        }
        let rules = entry_rules(src, &e, &table, app)?;
        let erasure = entry_erasure(src, &e, &table)?;
        let encrypted = entry_encrypted(src, &e, &table, app)?;
        entry_objects(&e, &erasure, stores).map_err(err)?;
        if e.append_only {
            append_only_fits(&erasure, &encrypted).map_err(err)?;
        }
        let (line, _) = super::source::line_col(src.text, span.start);
        let entry = DataMapEntry {
            location: format!("{}:{line}", src.path.display()),
            table: table.clone(),
            class: e.class,
            timestamp: e.timestamp,
            org: e.org,
            subject: e.subject,
            retention: rules,
            erasure,
            export: e.export,
            encrypted,
            objects: e.objects,
            append_only: e.append_only,
            rectifiable: e.rectifiable,
        };
        rectifiable_fits(&entry, app).map_err(|m| {
            src.error_at(
                span.clone(),
                format!("data_map entry `{}`: {m}", entry.table),
            )
        })?;
        out.push(entry);
    }
    Ok(out)
}

/// `rectifiable` names columns of rows about one subject, each once, none
/// that keys, scopes, dates or seals the row.
fn rectifiable_fits(e: &DataMapEntry, app: Option<&AppMapping>) -> std::result::Result<(), String> {
    if e.rectifiable.is_empty() {
        return Ok(());
    }
    if e.subject.is_none() {
        return Err("`rectifiable` needs a `subject` column: rectification corrects the rows about one person".into());
    }
    for (i, c) in e.rectifiable.iter().enumerate() {
        if e.rectifiable[..i].contains(c) {
            return Err(format!("`rectifiable` lists `{c}` twice"));
        }
        if let Some(why) = e.never_rectifiable(app, c) {
            return Err(format!("`rectifiable` cannot list `{c}`: {why}"));
        }
    }
    Ok(())
}

/// An append-only table refuses UPDATE: nothing Lethe does may rewrite a row.
fn append_only_fits(erasure: &Erasure, encrypted: &[String]) -> std::result::Result<(), String> {
    if matches!(erasure, Erasure::Anonymize(_)) {
        return Err("append_only = true refuses UPDATE, so `erasure` cannot be `anonymize`: use `retain` (with `legal_basis`) or `delete`".into());
    }
    if !encrypted.is_empty() {
        return Err("append_only = true refuses UPDATE, so it cannot have `encrypted` columns (keys.reencrypt rewrites them)".into());
    }
    Ok(())
}

/// An entry's retention rules, and the columns and tables each rule needs.
fn entry_rules(
    src: &SourceFile,
    e: &RawEntry,
    table: &str,
    app: Option<&AppMapping>,
) -> Result<Vec<RetentionRule>> {
    let err = |m: String| src.error_at(e.table.span(), format!("data_map entry `{table}`: {m}"));
    let rules = match &e.retention {
        None => vec![],
        Some(r) => {
            let texts = match r.get_ref() {
                OneOrMany::One(s) => vec![s.clone()],
                OneOrMany::Many(v) => v.clone(),
            };
            let mut rules = Vec::new();
            for t in texts {
                let parsed = RetentionRule::parse(&t).map_err(|m| {
                    src.error_at(r.span(), format!("data_map entry `{table}`: retention {m}"))
                })?;
                rules.extend(parsed);
            }
            rules
        }
    };
    for rule in &rules {
        match rule {
            RetentionRule::Age(_) if e.timestamp.is_none() => {
                return Err(err(format!(
                    "retention `{rule}` needs a `timestamp` column to measure age; add `timestamp = \"created_at\"` (or the table's time column)"
                )))
            }
            RetentionRule::OrgClosed(_) if e.org.is_none() => {
                return Err(err(format!("retention `{rule}` needs an `org` column naming the row's org")))
            }
            RetentionRule::OrgClosed(_) if app.and_then(|a| a.orgs.as_ref()).and_then(|o| o.closed_at.as_ref()).is_none() => {
                return Err(err(format!(
                    "retention `{rule}` needs [app.orgs] with `closed_at`, e.g. orgs = {{ table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }}"
                )))
            }
            _ => {}
        }
    }
    Ok(rules)
}

/// An entry's erasure: delete (default), anonymize with per-column rules, or
/// retain with a legal basis.
fn entry_erasure(src: &SourceFile, e: &RawEntry, table: &str) -> Result<Erasure> {
    let err = |m: String| src.error_at(e.table.span(), format!("data_map entry `{table}`: {m}"));
    let span = e.table.span();
    let erasure = match e.erasure.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("delete") => Erasure::Delete,
        Some("anonymize") => {
            let cols = e.anonymize.clone().unwrap_or_default();
            if cols.is_empty() {
                return Err(err("erasure = \"anonymize\" needs `anonymize = { column = \"null\" | \"hmac\" | \"fixed:VALUE\" }`".into()));
            }
            let mut rules = Vec::new();
            for (col, how) in cols {
                let rule = match how.as_str() {
                    "null" => AnonymizeRule::Null,
                    "hmac" => AnonymizeRule::Hmac,
                    f if f.starts_with("fixed:") => AnonymizeRule::Fixed(f["fixed:".len()..].to_string()),
                    other => {
                        return Err(err(format!(
                            "anonymize rule `{other}` for column `{col}`: use \"null\", \"hmac\" or \"fixed:VALUE\""
                        )))
                    }
                };
                rules.push((col, rule));
            }
            Erasure::Anonymize(rules)
        }
        Some("retain") => Erasure::Retain {
            legal_basis: e.legal_basis.clone().filter(|b| !b.trim().is_empty()).ok_or_else(|| {
                err("erasure = \"retain\" needs `legal_basis`, e.g. \"tax law: invoices kept 10 years\"".into())
            })?,
        },
        Some(other) => {
            let span = e.erasure.as_ref().map(|s| s.span()).unwrap_or(span.clone());
            return Err(src.error_at(
                span,
                format!("data_map entry `{table}`: erasure `{other}` is not one of delete, anonymize, retain"),
            ));
        }
    };
    if e.anonymize.is_some() && !matches!(erasure, Erasure::Anonymize(_)) {
        return Err(err(
            "`anonymize` is set but erasure is not \"anonymize\"".into()
        ));
    }
    Ok(erasure)
}

/// Encrypted columns need the row's org (whose data key encrypts them) and
/// `[app.keys]` (where that key lives); each is named once.
fn entry_encrypted(
    src: &SourceFile,
    e: &RawEntry,
    table: &str,
    app: Option<&AppMapping>,
) -> Result<Vec<String>> {
    let err = |m: String| src.error_at(e.table.span(), format!("data_map entry `{table}`: {m}"));
    if e.encrypted.is_empty() {
        return Ok(Vec::new());
    }
    if e.org.is_none() {
        return Err(err("`encrypted` columns need an `org` column: each row is encrypted under its org's data key".into()));
    }
    if app.and_then(|a| a.keys.as_ref()).is_none() {
        return Err(err("`encrypted` columns need [app.keys], the table of the orgs' wrapped data keys, e.g. keys = { table = \"org_data_keys\" }".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &e.encrypted {
        if c.trim().is_empty() || !seen.insert(c.as_str()) {
            return Err(err(format!(
                "encrypted column `{c}` is empty or listed twice"
            )));
        }
    }
    Ok(e.encrypted.clone())
}

/// Each object column names a configured store, once; an anonymising
/// erasure keeps the row, so it must empty the column for the file to go.
fn entry_objects(
    e: &RawEntry,
    erasure: &Erasure,
    stores: &BTreeMap<String, super::ObjectStoreConfig>,
) -> std::result::Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for o in &e.objects {
        if o.column.trim().is_empty() || !seen.insert(o.column.as_str()) {
            return Err(format!(
                "object column `{}` is empty or listed twice",
                o.column
            ));
        }
        if !stores.contains_key(&o.store) {
            let known: Vec<&str> = stores.keys().map(String::as_str).collect();
            return Err(format!(
                "objects: store `{}` is not configured; add [object_stores.{}] (configured: {})",
                o.store,
                o.store,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
        if let Erasure::Anonymize(rules) = erasure {
            if !rules
                .iter()
                .any(|(c, r)| c == &o.column && *r == AnonymizeRule::Null)
            {
                return Err(format!(
                    "erasure = \"anonymize\" keeps the row, so its file in `{}` would stay: add `{} = \"null\"` to anonymize (the file then goes), or use erasure = \"delete\"",
                    o.column, o.column
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const BASE: &str = "[database]\nurl = \"sqlite://app.db\"\n[mail]\nfrom = \"l@x.example\"\ntransport = \"file\"\ndir = \"mail\"\n";

    fn load(app: &str, entry: &str) -> crate::error::Result<Config> {
        let text = format!("{BASE}[app]\nsubjects = {{ table = \"users\", id = \"id\", email = \"email\" }}\n{app}\n[[data_map]]\n{entry}\n");
        Config::from_text(Path::new("lethe.toml"), &text)
    }

    #[test]
    fn encrypted_columns_need_an_org_column_and_the_app_key_table() {
        let keys = "keys = { table = \"org_data_keys\" }";
        let entry = "table = \"customers\"\nclass = \"pii\"\norg = \"org_id\"\nencrypted = [\"nik\", \"phone\"]";
        let c = load(keys, entry).unwrap();
        assert_eq!(c.data_map[0].encrypted, ["nik", "phone"]);
        let k = c.app.as_ref().and_then(|a| a.keys.as_ref()).unwrap();
        assert_eq!(
            (
                k.table.as_str(),
                k.org.as_str(),
                k.version.as_str(),
                k.wrapped_key.as_str()
            ),
            ("org_data_keys", "org_id", "version", "wrapped_key")
        );
        assert_eq!(
            (k.kms_key_id.as_str(), k.state.as_str()),
            ("kms_key_id", "state")
        );

        let no_org = "table = \"customers\"\nclass = \"pii\"\nencrypted = [\"nik\"]";
        let e = load(keys, no_org).unwrap_err().to_string();
        assert!(
            e.contains("lethe.toml:") && e.contains("need an `org` column"),
            "{e}"
        );
        let e = load("", entry).unwrap_err().to_string();
        assert!(e.contains("[app.keys]"), "{e}");
        let twice = "table = \"customers\"\nclass = \"pii\"\norg = \"org_id\"\nencrypted = [\"nik\", \"nik\"]";
        let e = load(keys, twice).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let typo = "keys = { table = \"org_data_keys\", wraped_key = \"k\" }";
        let e = load(typo, entry).unwrap_err().to_string();
        assert!(e.contains("wraped_key"), "{e}");
    }
}
