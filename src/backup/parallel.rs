//! Parallel restore for large databases (`backup.verify_jobs` above 1):
//! pg_restore runs several jobs only from a file it can seek in, so the
//! backup is first downloaded, decrypted, decompressed and hash-checked into
//! an owner-only temporary file (as large as the dump: checked against the
//! free space first), which goes when the restore ends, however it ends.

use std::path::Path;
use std::process::Stdio;

use super::{child, restore_into_file, source};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::BackupRecord;

pub(super) async fn restore_into_pg(
    ctx: &Context,
    b: &BackupRecord,
    url: &str,
    jobs: u32,
) -> Result<crate::archive::Decoded> {
    let spool = tempfile::Builder::new()
        .prefix("lethe-restore-")
        .suffix(".dump")
        .tempfile()
        .map_err(|e| Error::io("creating the parallel restore's temporary file", e))?;
    let dir = spool.path().parent().unwrap_or(Path::new("/"));
    let need = u64::try_from(b.raw_bytes).unwrap_or(0);
    if let Some(free) = free_bytes(dir) {
        if free < need {
            return Err(Error::Backup(format!(
                "a parallel restore spools the decrypted dump ({need} bytes) to {}, which has {free} bytes free: \
                 point TMPDIR at a larger disk, or set backup.verify_jobs = 1 to restore from the stream",
                dir.display()
            )));
        }
    }
    let file = spool
        .reopen()
        .map_err(|e| Error::io("opening the parallel restore's temporary file", e))?;
    let decoded = restore_into_file(ctx, b, file).await?;
    let mut cmd = source::pg_command(
        &source::pg_tool("pg_restore", ctx.config.backup.pg_bin.as_deref()),
        url,
    );
    cmd.args(["--no-owner", "--no-privileges", "--exit-on-error"])
        .arg(format!("--jobs={jobs}"))
        .arg(spool.path());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Its own process group, so a stopped drill kills the --jobs workers too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| {
        Error::Backup(format!(
            "cannot run pg_restore: {e} (install the PostgreSQL client tools, or set backup.pg_bin)"
        ))
    })?;
    let stderr = source::collect_stderr(&mut child);
    // Dropped with this attempt (a timeout): pg_restore and its workers stop.
    let (_leash, tether) = child::leash_group(child);
    let status = tokio::task::spawn_blocking(move || tether.wait())
        .await
        .map_err(|e| Error::task("waiting for pg_restore", e))?
        .map_err(|e| Error::Backup(format!("pg_restore: {e}")))?;
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::Backup(format!(
            "pg_restore failed ({status}): {err}"
        )));
    }
    Ok(decoded)
}

/// Bytes free for this user on the file system holding `dir`, if known.
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string; statvfs(3) fills `s` on success only,
    // and `s` is read only then.
    let s = unsafe {
        if libc::statvfs(path.as_ptr(), s.as_mut_ptr()) != 0 {
            return None;
        }
        s.assume_init()
    };
    // The fields' widths vary by platform (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let (avail, size) = (u64::from(s.f_bavail), u64::from(s.f_frsize));
    Some(avail.saturating_mul(size))
}
