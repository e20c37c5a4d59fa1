//! Files that hold personal data or secrets (keys, SQLite databases, audit
//! exports, export archives, mail) are created owner-only (0600) from their
//! first byte — never written world-readable and narrowed afterwards, which
//! leaves a window in which another local user can open them.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Makes every file and folder this process creates owner-only, including
/// those that libraries create (SQLite's -wal/-shm files, lettre's .eml
/// files). Called once at startup.
pub fn restrict_process_umask() {
    // SAFETY: umask(2) only sets this process's file-mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `path` (replacing a leftover file of the same name) with mode 0600.
pub fn create(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Writes `bytes` to `path` through an owner-only file.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    let mut f = create(path)?;
    f.write_all(bytes.as_ref())?;
    f.sync_all()
}

/// A SQLite database file about to be created by a connection: create it
/// empty and owner-only first (SQLite gives its journal files the same mode).
pub fn precreate_sqlite(path: &Path) -> std::io::Result<()> {
    let name = path.as_os_str();
    if name.is_empty() || name == ":memory:" || path.exists() {
        return Ok(());
    }
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_owner_only_even_over_a_world_readable_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&p, b"new").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let db = dir.path().join("x.db");
        precreate_sqlite(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
    }
}
