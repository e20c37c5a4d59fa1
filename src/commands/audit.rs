use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};

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

/// Verifies a file; works without a config (then the key comes from $AUDIT_SIGNING_KEY).
/// Exit 0: chain intact (signed and valid, or unsigned / unchecked, said so);
/// 1: broken, or unsigned under `--require-signature`; 2: `--require-signature` without a key.
pub fn verify(
    cfg_flag: Option<&Path>,
    file: &Path,
    require_signature: bool,
    json: bool,
) -> Result<i32> {
    let (key, key_source) = match crate::jobs::load_config(&config::resolve_path(cfg_flag)) {
        Ok(c) => (
            c.audit.signing_key.load().map_err(Error::Usage)?,
            c.audit.signing_key.describe(),
        ),
        Err(_) if cfg_flag.is_none() => {
            let src = config::SecretSource {
                env: config::ENV_AUDIT_SIGNING_KEY.into(),
                file: None,
            };
            (src.load().map_err(Error::Usage)?, src.describe())
        }
        Err(e) => return Err(e.into()),
    };
    if require_signature && key.is_none() {
        return Err(Error::Usage(format!(
            "--require-signature needs the audit signing key in {key_source} to check the signature"
        ))
        .into());
    }
    let f = std::fs::File::open(file)
        .map_err(|e| Error::Usage(format!("cannot open {}: {e}", file.display())))?;
    let report = crate::audit::verify(BufReader::new(f), key.as_ref())?;
    let (verdict, passed) = verdict(&report, require_signature);
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["intact"] = serde_json::json!(report.ok);
        v["ok"] = serde_json::json!(passed);
        v["verdict"] = serde_json::json!(verdict);
        v["require_signature"] = serde_json::json!(require_signature);
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
