//! The folders of base-backup drills: each inside one private folder of this
//! user's (`$TMPDIR/lethe-drills`, 0711: the server user may pass, no one
//! else may list or write), each holding a lock (flock) for the drill's life.
//! A drill whose process died leaves its lock free: the next drill stops the
//! server it left running and removes the folder. Only this user's private
//! folder is ever swept, so no one else can plant a folder for it to act on.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::cluster::{pg_ctl, server_bin, server_user};
use crate::config::Config;
use crate::error::{Error, Result};

const LOCK: &str = "lock";

/// This user's private folder of drills, made on first use.
fn root() -> Result<PathBuf> {
    let root = std::env::temp_dir().join("lethe-drills");
    match std::fs::create_dir(&root) {
        Ok(()) => std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| Error::io("setting the drills folder's mode", e))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("creating {}", root.display()), e)),
    }
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let m = std::fs::symlink_metadata(&root)
        .map_err(|e| Error::io(format!("reading {}", root.display()), e))?;
    if !m.is_dir() || Some(m.uid()) != me || m.mode() & 0o022 != 0 {
        return Err(Error::Backup(format!(
            "{} is not this user's private folder (another owner, a link, or writable by others): remove it",
            root.display()
        )));
    }
    Ok(root)
}

/// flock(2) without waiting: whether it was taken.
fn try_lock(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor the caller owns; it only takes a lock.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A new drill folder and its lock, held until the returned file is dropped.
/// The lock is taken on a file of its own before it is named `lock`, so a
/// sweep never finds a drill's lock free while that drill runs.
pub fn create() -> Result<(tempfile::TempDir, std::fs::File)> {
    let dir = tempfile::Builder::new()
        .prefix("drill-")
        .tempdir_in(root()?)
        .map_err(|e| Error::io("creating the drill's data directory", e))?;
    // Passable (not readable) for a server_user: the data directory inside is its own.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .map_err(|e| Error::io("setting the drill folder's mode", e))?;
    let new = dir.path().join("lock.new");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&new)
        .map_err(|e| Error::io("creating a drill's lock", e))?;
    if !try_lock(&f) {
        return Err(Error::Backup(
            "a drill's new lock is held by another process".into(),
        ));
    }
    std::fs::rename(&new, dir.path().join(LOCK))
        .map_err(|e| Error::io("naming a drill's lock", e))?;
    Ok((dir, f))
}

/// Drill folders whose drill died with its process (killed, crashed): their
/// server is stopped and the folder removed. Returns their names.
pub fn sweep(cfg: &Config) -> Vec<String> {
    let user = server_user(cfg).ok().flatten();
    sweep_with(|data| pg_ctl(&server_bin(cfg, data), user.as_deref(), data))
}

/// `sweep`, stopping each orphan's server with `pg_ctl(data)`.
fn sweep_with(pg_ctl: impl Fn(&Path) -> Command) -> Vec<String> {
    let Ok(entries) =
        root().and_then(|r| std::fs::read_dir(&r).map_err(|e| Error::io("listing the drills", e)))
    else {
        return vec![];
    };
    let mut swept = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        if orphaned(&dir) {
            let _ = pg_ctl(&dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if std::fs::remove_dir_all(&dir).is_ok() {
                swept.push(e.file_name().to_string_lossy().to_string());
            }
        }
    }
    swept
}

/// A drill folder whose lock nobody holds (no lock yet: a drill starting).
fn orphaned(dir: &Path) -> bool {
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(LOCK));
    // Dropped at the end of this call: the lock is released again.
    lock.is_ok_and(|f| try_lock(&f))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_running_drill_is_never_swept_and_a_dead_one_is() {
        let (live, lock) = super::create().unwrap();
        let (dead, dead_lock) = super::create().unwrap();
        drop(dead_lock);
        let swept = super::sweep_with(|_| std::process::Command::new("true"));
        assert!(live.path().exists(), "held: kept");
        assert!(!dead.path().exists(), "free: swept {swept:?}");
        drop(lock);
    }
}
