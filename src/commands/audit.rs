use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use crate::audit::anchor;
use crate::audit::live::{self, AnchoredReport};
use crate::config::{self, Config, Secret};
use crate::context::Context;
use crate::error::Error;

pub async fn export(ctx: Arc<Context>, signed: bool, out: Option<&Path>) -> Result<i32> {
    let key = if signed {
        Some(signing_key(&ctx.config)?)
    } else {
        None
    };
    let mut sink: Box<dyn Write> = match out {
        // Write beside the target and rename, so a failed export leaves no half file.
        Some(p) => Box::new(std::io::BufWriter::new(
            crate::private_file::create(&tmp_path(p))
                .with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(super::out::Stdout)),
    };
    let n = match crate::audit::export(ctx.store.as_ref(), &mut sink, key.as_ref()).await {
        // The reader closed stdout (`| head`): stop quietly, nothing half-written on disk.
        Err(_) if out.is_none() && super::out::closed() => return Ok(0),
        other => other?,
    };
    drop(sink);
    if let Some(p) = out {
        std::fs::rename(tmp_path(p), p).with_context(|| format!("writing {}", p.display()))?;
        // A note on stderr; a closed stderr is no reason to fail the export.
        let _ = writeln!(
            std::io::stderr(),
            "exported {n} events to {}{}",
            p.display(),
            if signed { " (signed)" } else { "" }
        );
    }
    Ok(0)
}

fn tmp_path(p: &Path) -> std::path::PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".partial");
    s.into()
}

fn signing_key(config: &Config) -> Result<Secret, Error> {
    config
        .audit
        .signing_key
        .load()
        .map_err(Error::Usage)?
        .ok_or_else(|| {
            Error::Usage(format!(
                "--signed needs the audit signing key in {}",
                config.audit.signing_key.describe()
            ))
        })
}

/// How a verification reports and what it demands.
#[derive(Clone, Copy)]
pub struct VerifyHow {
    pub require_signature: bool,
    pub json: bool,
}

/// The signing key for verification and where it was looked for; works
/// without a config (then the key comes from $AUDIT_SIGNING_KEY).
fn verify_key(cfg_flag: Option<&Path>, how: VerifyHow) -> Result<(Option<Secret>, String)> {
    let (key, key_source) = match crate::jobs::load_config(&config::resolve_path(cfg_flag)) {
        Ok(c) => return config_key(&c, how),
        Err(_) if cfg_flag.is_none() => {
            let src = config::SecretSource {
                env: config::ENV_AUDIT_SIGNING_KEY.into(),
                file: None,
            };
            (src.load().map_err(Error::Usage)?, src.describe())
        }
        Err(e) => return Err(e.into()),
    };
    demand_key(key, key_source, how)
}

/// The signing key `c` names, and where.
fn config_key(c: &Config, how: VerifyHow) -> Result<(Option<Secret>, String)> {
    let key = c.audit.signing_key.load().map_err(Error::Usage)?;
    demand_key(key, c.audit.signing_key.describe(), how)
}

fn demand_key(
    key: Option<Secret>,
    key_source: String,
    how: VerifyHow,
) -> Result<(Option<Secret>, String)> {
    if how.require_signature && key.is_none() {
        return Err(Error::Usage(format!(
            "--require-signature needs the audit signing key in {key_source} to check the signature"
        ))
        .into());
    }
    Ok((key, key_source))
}

/// Verifies a file.
/// Exit 0: chain intact (signed and valid, or unsigned / unchecked, said so);
/// 1: broken, or unsigned under `--require-signature`; 2: `--require-signature` without a key.
pub fn verify(cfg_flag: Option<&Path>, file: &Path, how: VerifyHow) -> Result<i32> {
    let (key, key_source) = verify_key(cfg_flag, how)?;
    let f = std::fs::File::open(file)
        .map_err(|e| Error::Usage(format!("cannot open {}: {e}", file.display())))?;
    let report = crate::audit::verify(BufReader::new(f), key.as_ref())?;
    let (verdict, passed) = verdict(&report, how.require_signature);
    if how.json {
        let mut v = serde_json::to_value(&report)?;
        v["intact"] = serde_json::json!(report.ok);
        v["ok"] = serde_json::json!(passed);
        v["verdict"] = serde_json::json!(verdict);
        v["require_signature"] = serde_json::json!(how.require_signature);
        super::print_json(&v)?;
    } else {
        let missing_key = key.is_none().then_some(key_source.as_str());
        super::out::line(&verify_text(&report, verdict, missing_key));
    }
    Ok(if passed { 0 } else { 1 })
}

/// `signed` (intact, signature valid), `unsigned` (intact, no signature block),
/// `unchecked` (intact, signed, but no key to check it), or `broken`; and
/// whether that passes.
fn verdict(r: &crate::audit::VerifyReport, require_signature: bool) -> (&'static str, bool) {
    match (r.ok, r.signature) {
        (false, _) => ("broken", false),
        (true, "valid") => ("signed", true),
        (true, "unchecked") => ("unchecked", !require_signature),
        (true, _) => ("unsigned", !require_signature),
    }
}

fn verify_text(r: &crate::audit::VerifyReport, verdict: &str, key: Option<&str>) -> String {
    let n = r.events;
    let last = &r.last_hash;
    let no_key = |src: &str| format!("signature not checked (no key in {src})");
    match verdict {
        "broken" => format!(
            "BROKEN at line {}: {}",
            r.broken_line.unwrap_or(0),
            r.problem.as_deref().unwrap_or("")
        ),
        "signed" => format!("OK: {n} events, chain intact, signature valid; last hash {last}"),
        "unchecked" => format!(
            "INTACT, SIGNATURE NOT CHECKED: {n} events, chain intact; {}; last hash {last}",
            no_key(key.unwrap_or_default())
        ),
        _ => format!(
            "INTACT, UNSIGNED: {n} events, chain intact, unsigned: no signature block, so a cut at the end cannot be detected (export with --signed){}; last hash {last}",
            key.map(|src| format!("; {}", no_key(src))).unwrap_or_default()
        ),
    }
}

/// `audit verify --live`: the store's chain in place, against every anchor.
pub async fn verify_live(ctx: Arc<Context>, how: VerifyHow) -> Result<i32> {
    let (key, key_source) = config_key(&ctx.config, how)?;
    let anchors = anchor::open_store(&ctx.config).await?;
    let report = live::verify_live(ctx.store.as_ref(), anchors.as_ref(), key.as_ref()).await?;
    print_anchored(&report, how, None, key.is_none().then_some(&key_source))
}

/// `audit verify FILE --anchors`: an export against every anchor.
pub async fn verify_anchored(cfg_flag: Option<&Path>, file: &Path, how: VerifyHow) -> Result<i32> {
    let config = crate::jobs::load_config(&config::resolve_path(cfg_flag))?;
    let (key, key_source) = config_key(&config, how)?;
    let anchors = anchor::open_store(&config).await?;
    let report = live::verify_file(file, anchors.as_ref(), key.as_ref()).await?;
    let signature = Some(report.chain.signature);
    print_anchored(
        &report,
        how,
        signature,
        key.is_none().then_some(&key_source),
    )
}

/// `anchored` (intact, anchors match and are signed validly), `unchecked`
/// (intact, anchors match, no key to check their HMACs), `unanchored` (intact,
/// but no anchor covers any of it), `unsigned` (a file without a valid
/// signature under --require-signature), or `broken`; and whether that passes.
fn anchored_verdict(
    r: &AnchoredReport,
    file_signature: Option<&str>,
    require: bool,
) -> (&'static str, bool) {
    if !r.intact() {
        ("broken", false)
    } else if r.anchors.matched == 0 {
        ("unanchored", !require)
    } else if r.anchors.signatures != "valid" {
        ("unchecked", !require)
    } else if require && file_signature.is_some_and(|s| s != "valid") {
        ("unsigned", false)
    } else {
        ("anchored", true)
    }
}

fn print_anchored(
    r: &AnchoredReport,
    how: VerifyHow,
    file_signature: Option<&str>,
    missing_key: Option<&String>,
) -> Result<i32> {
    let (verdict, passed) = anchored_verdict(r, file_signature, how.require_signature);
    if how.json {
        let mut v = serde_json::to_value(r)?;
        v["intact"] = serde_json::json!(r.intact());
        v["ok"] = serde_json::json!(passed);
        v["verdict"] = serde_json::json!(verdict);
        v["first_bad_seq"] = serde_json::json!(r.finding.as_ref().map(|f| f.first_bad_seq));
        v["require_signature"] = serde_json::json!(how.require_signature);
        super::print_json(&v)?;
    } else {
        super::out::line(&anchored_text(r, verdict, missing_key));
    }
    Ok(if passed { 0 } else { 1 })
}

fn anchored_text(r: &AnchoredReport, verdict: &str, missing_key: Option<&String>) -> String {
    let (n, last, a) = (r.chain.events, &r.chain.last_hash, &r.anchors);
    let latest = match (a.latest_seq, &a.latest_time) {
        (Some(s), Some(t)) => format!("latest seq {s}, written {t}"),
        _ => "none".into(),
    };
    let later = if a.later > 0 {
        format!("; {} later anchors (past this file's end)", a.later)
    } else {
        String::new()
    };
    match (verdict, &r.finding) {
        ("broken", Some(f)) => format!(
            "BROKEN at seq {}: {}{}",
            f.first_bad_seq,
            f.problem,
            f.last_good_anchor
                .map(|s| format!(" (last matching anchor: seq {s})"))
                .unwrap_or_default()
        ),
        ("unanchored", _) => format!(
            "INTACT, UNANCHORED: {n} events, chain intact, but no anchor in {} covers it, so a rewrite of history by whoever owns the database would go unnoticed (schedule audit.anchor); last hash {last}",
            a.store
        ),
        ("unchecked", _) => format!(
            "INTACT, ANCHORS NOT AUTHENTICATED: {n} events, chain intact, {} anchors match ({latest}){later}; their signatures were not checked (no key in {}); last hash {last}",
            a.matched,
            missing_key.map_or("the config", |s| s.as_str())
        ),
        ("unsigned", _) => format!(
            "INTACT, UNSIGNED: {n} events, {} anchors match ({latest}), but the file has no valid signature (--require-signature); last hash {last}",
            a.matched
        ),
        _ => format!(
            "OK: {n} events, chain intact, {} anchors match ({latest}){later}, anchor signatures valid; last hash {last}",
            a.matched
        ),
    }
}

/// `audit verify NEW --extends OLD`: NEW continues OLD.
pub fn verify_extends(
    cfg_flag: Option<&Path>,
    new: &Path,
    old: &Path,
    how: VerifyHow,
) -> Result<i32> {
    let (key, _) = verify_key(cfg_flag, how)?;
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(BufReader::new)
            .map_err(|e| Error::Usage(format!("cannot open {}: {e}", p.display())))
    };
    let r = live::extends(open(new)?, open(old)?, key.as_ref())?;
    let signed = r.new.signature == "valid" && r.old.signature == "valid";
    let passed = r.extends && (signed || !how.require_signature);
    if how.json {
        let mut v = serde_json::to_value(&r)?;
        v["ok"] = serde_json::json!(passed);
        v["require_signature"] = serde_json::json!(how.require_signature);
        super::print_json(&v)?;
    } else if let Some(p) = &r.problem {
        super::out::line(&format!("DOES NOT EXTEND: {p}"));
    } else {
        super::out::line(&format!(
            "EXTENDS: {} holds all {} events of {} unchanged, then {} more; signatures: new {}, old {}",
            new.display(),
            r.old.events,
            old.display(),
            r.new.events - r.old.events,
            r.new.signature,
            r.old.signature
        ));
    }
    Ok(if passed { 0 } else { 1 })
}
