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
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let n = crate::audit::export(ctx.store.as_ref(), &mut sink, key.as_ref()).await?;
    drop(sink);
    if let Some(p) = out {
        std::fs::rename(tmp_path(p), p).with_context(|| format!("writing {}", p.display()))?;
        eprintln!(
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
pub fn verify(cfg_flag: Option<&Path>, file: &Path, json: bool) -> Result<i32> {
    let key = match Config::load(&config::resolve_path(cfg_flag)) {
        Ok(c) => c.audit.signing_key.load().map_err(Error::Usage)?,
        Err(_) if cfg_flag.is_none() => config::SecretSource {
            env: config::ENV_AUDIT_SIGNING_KEY.into(),
            file: None,
        }
        .load()
        .map_err(Error::Usage)?,
        Err(e) => return Err(e.into()),
    };
    let f = std::fs::File::open(file)
        .map_err(|e| Error::Usage(format!("cannot open {}: {e}", file.display())))?;
    let report = crate::audit::verify(BufReader::new(f), key.as_ref())?;
    if json {
        super::print_json(&report)?;
    } else if report.ok {
        println!(
            "OK: {} events, chain intact, signature {}; last hash {}",
            report.events, report.signature, report.last_hash
        );
    } else {
        println!(
            "BROKEN at line {}: {}",
            report.broken_line.unwrap_or(0),
            report.problem.as_deref().unwrap_or("")
        );
    }
    Ok(if report.ok { 0 } else { 1 })
}
