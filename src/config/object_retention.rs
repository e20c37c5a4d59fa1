//! `[[object_retention]]`: files no row references (capture frames,
//! uploads) kept by prefix and age: a store, a key template naming the org
//! and optionally the subject as whole path segments
//! (`frames/{org}/{subject}/`), a class, and retention rules with the data
//! map's syntax.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::source::SourceFile;
use super::{AppMapping, ObjectStoreConfig};
use crate::error::Result;
use crate::policy::RetentionRule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObjectRetention {
    store: Spanned<String>,
    keys: String,
    class: String,
    retention: Spanned<Texts>,
}

/// `"90d"` or `["90d", "org_closed+30d"]`, as in the data map.
#[derive(Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct ObjectRetention {
    pub store: String,
    pub keys: KeyTemplate,
    pub class: String,
    pub retention: Vec<RetentionRule>,
}

/// A key template: path segments, each literal or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    pub text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Org,
    Subject,
}

/// What a key names, by the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub org: String,
    pub subject: Option<String>,
}

impl KeyTemplate {
    pub fn parse(text: &str) -> std::result::Result<KeyTemplate, String> {
        let body = text
            .strip_suffix('/')
            .ok_or_else(|| format!("keys `{text}` must end with `/` (the files are below it)"))?;
        let mut segments = Vec::new();
        for s in body.split('/') {
            segments.push(match s {
                "{org}" => Segment::Org,
                "{subject}" => Segment::Subject,
                s if s.is_empty() || s.contains(['{', '}']) => {
                    return Err(format!(
                        "keys `{text}`: segment `{s}` must be a plain name, `{{org}}` or `{{subject}}` (whole segments)"
                    ))
                }
                s => Segment::Literal(s.to_string()),
            });
        }
        if segments.iter().filter(|s| **s == Segment::Org).count() != 1
            || segments.iter().filter(|s| **s == Segment::Subject).count() > 1
        {
            return Err(format!(
                "keys `{text}` must name `{{org}}` once (and `{{subject}}` at most once)"
            ));
        }
        Ok(KeyTemplate {
            text: text.to_string(),
            segments,
        })
    }

    /// The fixed prefix to list: everything before the first placeholder.
    pub fn prefix(&self) -> String {
        let mut p = String::new();
        for s in &self.segments {
            match s {
                Segment::Literal(l) => {
                    p.push_str(l);
                    p.push('/');
                }
                _ => break,
            }
        }
        p
    }

    /// The org and subject a key lies under; None when it does not fit.
    pub fn name(&self, key: &str) -> Option<Named> {
        let parts: Vec<&str> = key.split('/').collect();
        if parts.len() <= self.segments.len() || parts.last().is_some_and(|l| l.is_empty()) {
            return None;
        }
        let (mut org, mut subject) = (None, None);
        for (s, p) in self.segments.iter().zip(&parts) {
            match s {
                Segment::Literal(l) if l != p => return None,
                Segment::Literal(_) => {}
                _ if p.is_empty() => return None,
                Segment::Org => org = Some(p.to_string()),
                Segment::Subject => subject = Some(p.to_string()),
            }
        }
        Some(Named { org: org?, subject })
    }
}

pub(super) fn load(
    src: &SourceFile,
    raw: Vec<RawObjectRetention>,
    app: Option<&AppMapping>,
    stores: &BTreeMap<String, ObjectStoreConfig>,
) -> Result<Vec<ObjectRetention>> {
    let mut out = Vec::new();
    for r in raw {
        let err = |m: String| {
            src.error_at(
                r.store.span(),
                format!("object_retention `{}`: {m}", r.keys),
            )
        };
        let store = r.store.get_ref().clone();
        if !stores.contains_key(&store) {
            return Err(err(format!(
                "store `{store}` is not configured; add [object_stores.{store}]"
            )));
        }
        let keys = KeyTemplate::parse(&r.keys).map_err(err)?;
        let mut rules = Vec::new();
        let texts = match r.retention.get_ref() {
            Texts::One(t) => std::slice::from_ref(t),
            Texts::Many(v) => v.as_slice(),
        };
        for t in texts {
            rules.extend(RetentionRule::parse(t).map_err(|m| err(format!("retention {m}")))?);
        }
        let closure_known = app
            .and_then(|a| a.orgs.as_ref())
            .and_then(|o| o.closed_at.as_ref())
            .is_some();
        if rules
            .iter()
            .any(|r| matches!(r, RetentionRule::OrgClosed(_)))
            && !closure_known
        {
            return Err(err("org_closed+P needs [app.orgs] with `closed_at`".into()));
        }
        out.push(ObjectRetention {
            store,
            keys,
            class: r.class,
            retention: rules,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_org_and_subject_by_whole_segments() {
        let t = KeyTemplate::parse("frames/{org}/{subject}/").unwrap();
        assert_eq!(t.prefix(), "frames/");
        assert_eq!(
            t.name("frames/7/42/f-0001.jpg"),
            Some(Named {
                org: "7".into(),
                subject: Some("42".into())
            })
        );
        assert_eq!(t.name("frames/7/42/"), None, "a folder, not a file");
        assert_eq!(t.name("frames/7/f.jpg"), None, "too shallow");
        assert_eq!(t.name("other/7/42/f.jpg"), None);
        assert_eq!(t.name("frames//42/f.jpg"), None, "an empty org");
        let org_only = KeyTemplate::parse("uploads/{org}/").unwrap();
        assert_eq!(org_only.name("uploads/3/a/b.pdf").unwrap().org, "3");
        for bad in [
            "frames/{org}",
            "frames/{subject}/",
            "f/{org}x/",
            "f/{org}/{org}/",
            "f/{orgs}/",
            "f//{org}/",
        ] {
            assert!(KeyTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
