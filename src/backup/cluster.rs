//! A PostgreSQL server Lethe starts from a physical base backup (a restore
//! drill, a point-in-time restore). The tar is unpacked into a 0700 data
//! directory; recovery settings go at the end of `postgresql.auto.conf`
//! between markers, and come out again when Lethe stops the server, leaving
//! the operator's own configuration as the backup had it. While Lethe runs
//! it, the server listens on no TCP port, only on a socket in a private
//! folder with a `pg_hba.conf` of its own, and never archives: a drill must
//! not write into the archive it reads. PostgreSQL refuses to run as root, so
//! where Lethe is root the server runs as `backup.server_user`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::Connection;

use super::source;
use crate::config::Config;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::BackupRecord;

const BEGIN: &str = "# lethe restore: begin (removed when Lethe stops this server)";
const END: &str = "# lethe restore: end";
/// The socket's port number (no TCP port is opened).
const PORT: u16 = 5432;

/// Where recovery stops.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Every archived WAL file replayed.
    Latest,
    Time(DateTime<Utc>),
    Lsn(u64),
}

/// A restored data directory and, while Lethe runs it, its server.
pub struct Restored {
    pub data: PathBuf,
    socket_dir: tempfile::TempDir,
    user: Option<String>,
    bin: PathBuf,
    running: bool,
}

/// Paths that go into a server setting and a shell command unquoted.
fn plain_path(p: &Path, what: &str) -> Result<String> {
    let s = p.to_string_lossy().to_string();
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        return Err(Error::Usage(format!(
            "{what} `{s}` has characters a restore_command cannot carry safely; use a path of letters, digits and / . _ - +"
        )));
    }
    Ok(s)
}

impl Restored {
    /// Unpacks backup `b` into `data` (absent or empty) and configures its recovery.
    pub async fn unpack(
        ctx: &Context,
        b: &BackupRecord,
        data: &Path,
        target: Target,
    ) -> Result<Restored> {
        let cfg = &ctx.config;
        let user = server_user(cfg)?;
        let restore_command = restore_command(cfg)?;
        let socket_dir = tempfile::Builder::new()
            .prefix("lethe-pg-")
            .tempdir_in("/tmp")
            .map_err(|e| Error::io("creating the restored server's socket folder", e))?;
        let sock = plain_path(socket_dir.path(), "the socket folder")?;
        untar(ctx, b, data).await?;
        let restored = Restored {
            data: data.to_path_buf(),
            socket_dir,
            user,
            bin: server_bin(cfg, data),
            running: false,
        };
        // The other recovery targets emptied (one left in the backup's own
        // postgresql.auto.conf would stop replay early), and before the one
        // set: PostgreSQL refuses a second target even while it empties it.
        let chosen = match target {
            Target::Latest => None,
            Target::Time(t) => Some((
                "recovery_target_time",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            )),
            Target::Lsn(l) => Some(("recovery_target_lsn", super::physical::format_lsn(l))),
        };
        let mut targets = String::new();
        for name in [
            "recovery_target",
            "recovery_target_name",
            "recovery_target_xid",
            "recovery_target_time",
            "recovery_target_lsn",
        ] {
            if chosen.as_ref().is_none_or(|(c, _)| *c != name) {
                targets.push_str(&format!("{name} = ''\n"));
            }
        }
        if let Some((name, value)) = &chosen {
            targets.push_str(&format!("{name} = '{value}'\n"));
        }
        // No hot standby: production's max_connections & co. need not be
        // matched, and replay never pauses on a parameter change; nothing
        // replicates in or out; no TCP, no archiving.
        let settings = format!(
            "{BEGIN}\nlisten_addresses = ''\nport = {PORT}\nunix_socket_directories = '{sock}'\n\
             hba_file = '{sock}/pg_hba.conf'\nident_file = '{sock}/pg_ident.conf'\n\
             archive_mode = off\nhot_standby = off\nprimary_conninfo = ''\nprimary_slot_name = ''\n\
             max_logical_replication_workers = 0\nrecovery_min_apply_delay = 0\nssl = off\n\
             logging_collector = off\nlog_destination = 'stderr'\nexternal_pid_file = ''\n\
             restore_command = '{restore_command}'\nrecovery_target_action = 'promote'\n\
             archive_cleanup_command = ''\nrecovery_end_command = ''\n\
             recovery_target_timeline = 'latest'\n{targets}{END}\n"
        );
        restored.configure(&settings)?;
        Ok(restored)
    }

    fn configure(&self, settings: &str) -> Result<()> {
        let io = |what: &str| {
            let what = format!("{what} in {}", self.data.display());
            move |e| Error::io(what, e)
        };
        // A cluster configured from /etc (Debian) has no postgresql.conf in its backup.
        let conf = self.data.join("postgresql.conf");
        if !conf.exists() {
            std::fs::write(&conf, "").map_err(io("writing postgresql.conf"))?;
        }
        let auto = self.data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(settings);
        std::fs::write(&auto, text).map_err(io("writing postgresql.auto.conf"))?;
        std::fs::write(self.data.join("recovery.signal"), "")
            .map_err(io("writing recovery.signal"))?;
        let sock = self.socket_dir.path();
        std::fs::write(sock.join("pg_hba.conf"), "local all all trust\n")
            .map_err(io("writing pg_hba.conf"))?;
        std::fs::write(sock.join("pg_ident.conf"), "").map_err(io("writing pg_ident.conf"))?;
        set_mode(&self.data, 0o700)?;
        set_mode(sock, 0o700)?;
        if let Some(u) = &self.user {
            for dir in [&self.data, sock] {
                run(Command::new("chown").arg("-R").arg(u).arg(dir), "chown")?;
            }
        }
        Ok(())
    }

    fn pg_ctl(&self) -> Command {
        pg_ctl(&self.bin, self.user.as_deref(), &self.data)
    }

    /// The folder of the server's socket (its host for clients).
    pub fn socket_dir(&self) -> &Path {
        self.socket_dir.path()
    }

    /// The user and port clients name (the socket's).
    pub fn port(&self) -> u16 {
        PORT
    }

    fn log(&self) -> PathBuf {
        self.socket_dir.path().join("server.log")
    }

    /// The server's log, its last lines (what to show when it stopped).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(12)..].join("\n");
        source::without_row_values(&tail)
    }

    /// `url`'s user and database on this server's socket (no password: the
    /// socket is private and trusted).
    pub fn url_for(&self, url: &str) -> Result<String> {
        let mut u = url::Url::parse(url).map_err(|e| Error::Usage(format!("database.url: {e}")))?;
        let _ = u.set_password(None);
        let _ = u.set_host(Some("localhost"));
        let _ = u.set_port(None);
        let sock = self.socket_dir.path().to_string_lossy().to_string();
        u.set_query(Some(&format!("host={sock}&port={PORT}")));
        Ok(u.to_string())
    }

    /// Starts the server and waits until recovery has ended and it is promoted.
    pub async fn recover(&mut self, app_url: &str) -> Result<()> {
        let mut start = self.pg_ctl();
        start.arg("-l").arg(self.log()).args(["-W", "start"]);
        run(&mut start, "pg_ctl start")?;
        self.running = true;
        let url = self.url_for(app_url)?;
        let (started, mut said, mut seen) = (Instant::now(), Instant::now(), false);
        loop {
            match sqlx::PgConnection::connect(&url).await {
                Ok(mut c) => {
                    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                        .fetch_one(&mut c)
                        .await?;
                    let _ = c.close().await;
                    if !in_recovery {
                        return Ok(());
                    }
                }
                // The server answered with a refusal other than "not yet" (57P03):
                // no such role or database; waiting longer changes nothing.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() != Some("57P03") => {
                    return Err(Error::Backup(format!(
                        "the restored server refused database.url's role or database: {}",
                        e.message()
                    )));
                }
                Err(_) => {}
            }
            // `pg_ctl start -W` returns before the server has written its pid
            // file: not running yet is not dead, unless it said why or took too long.
            let alive = self.alive();
            seen |= alive;
            let said_why = || {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                log.contains("FATAL:") || log.contains("PANIC:")
            };
            if !alive && (seen || said_why() || started.elapsed() > Duration::from_secs(30)) {
                self.running = false;
                return Err(Error::Backup(format!(
                    "the restored server stopped before recovery ended: {}{}",
                    self.log_tail(),
                    if self
                        .log_tail()
                        .contains("before configured recovery target was reached")
                    {
                        "\n(the archive holds nothing after the target yet: wait for the next archived \
                         WAL file, or run SELECT pg_switch_wal() on the server; or choose an earlier target)"
                    } else {
                        ""
                    }
                )));
            }
            if said.elapsed() > Duration::from_secs(30) {
                tracing::info!(data = %self.data.display(), "restore: still replaying WAL");
                said = Instant::now();
            }
            // Each refused attempt is two lines in the server's log.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn alive(&self) -> bool {
        // pg_ctl status: 0 running, 3 not running.
        self.pg_ctl()
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the server cleanly (a checkpoint) and takes Lethe's settings out again.
    pub fn stop(&mut self) -> Result<()> {
        if self.running {
            run(
                self.pg_ctl()
                    .args(["-m", "fast", "-w", "-t", "600", "stop"]),
                "pg_ctl stop",
            )?;
            self.running = false;
        }
        let auto = self.data.join("postgresql.auto.conf");
        let text = std::fs::read_to_string(&auto)
            .map_err(|e| Error::io("reading postgresql.auto.conf", e))?;
        std::fs::write(&auto, without_block(&text))
            .map_err(|e| Error::io("writing postgresql.auto.conf", e))?;
        self.history_ready()
    }

    /// The new timeline's history file, written while archiving was off, is
    /// marked for archiving: once the server archives again, the archive
    /// learns of the branch (else a later restore would follow the old one).
    fn history_ready(&self) -> Result<()> {
        let wal = self.data.join("pg_wal");
        let Ok(entries) = std::fs::read_dir(&wal) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.ends_with(".history") {
                continue;
            }
            let status = wal.join("archive_status");
            if !status.join(format!("{name}.done")).exists() {
                std::fs::write(status.join(format!("{name}.ready")), "")
                    .map_err(|e| Error::io("marking the timeline history for archiving", e))?;
            }
        }
        Ok(())
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .pg_ctl()
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// `lethe wal fetch` as the restored server runs it: this binary (or
/// `backup.lethe_bin`) with this config, both by absolute path.
fn restore_command(cfg: &Config) -> Result<String> {
    let lethe = match &cfg.backup.lethe_bin {
        Some(p) => p.clone(),
        None => {
            let exe =
                std::env::current_exe().map_err(|e| Error::io("finding the lethe binary", e))?;
            if exe.to_string_lossy().ends_with(" (deleted)") {
                return Err(Error::Usage(
                    "the lethe binary was replaced while this process runs: restart it, or set \
                     backup.lethe_bin to the one restore_command should run"
                        .into(),
                ));
            }
            exe
        }
    };
    Ok(format!(
        "{} --config {} wal fetch %f %p",
        plain_path(&lethe, "the lethe binary")?,
        plain_path(
            &cfg.path.canonicalize().unwrap_or(cfg.path.clone()),
            "the config"
        )?
    ))
}

/// The folder of `pg_ctl`: `backup.pg_bin`, else Debian's folder for the
/// restored cluster's major version (`PG_VERSION`), else the newest there.
pub(super) fn server_bin(cfg: &Config, data: &Path) -> PathBuf {
    if cfg.backup.pg_bin.is_none() {
        let version = std::fs::read_to_string(data.join("PG_VERSION")).unwrap_or_default();
        let version = version.trim();
        let dir = Path::new("/usr/lib/postgresql").join(version).join("bin");
        let digits = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit());
        if digits && dir.join("pg_ctl").exists() {
            return dir;
        }
    }
    source::pg_tool("pg_ctl", cfg.backup.pg_bin.as_deref())
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `pg_ctl -D data`, as `user` where given.
pub(super) fn pg_ctl(bin: &Path, user: Option<&str>, data: &Path) -> Command {
    let exe = bin.join("pg_ctl");
    let mut c = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    c.arg("-D").arg(data);
    c
}

/// `text` without Lethe's block (the lines from BEGIN to END).
fn without_block(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line == BEGIN {
            inside = true;
        } else if inside && line == END {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// PostgreSQL refuses root: then the server runs as `backup.server_user`.
pub(super) fn server_user(cfg: &Config) -> Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    match (&cfg.backup.server_user, root) {
        (Some(u), true) => Ok(Some(u.clone())),
        (None, true) => Err(Error::Usage(
            "Lethe runs as root, and PostgreSQL refuses to: set backup.server_user to the system \
             user that runs the restored server (usually postgres)"
                .into(),
        )),
        (_, false) => Ok(None),
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting the mode of {}", p.display()), e))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Backup(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Backup(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Streams the base backup's tar into `data` through `tar`, its hash checked.
async fn untar(ctx: &Context, b: &BackupRecord, data: &Path) -> Result<()> {
    std::fs::create_dir_all(data)
        .map_err(|e| Error::io(format!("creating {}", data.display()), e))?;
    let mut cmd = Command::new("tar");
    cmd.args(["--extract", "--file=-", "--no-same-owner", "--directory"])
        .arg(data);
    super::pipe_into(ctx, b, cmd, "tar (unpacking the base backup)").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lethes_own_lines_come_out_again() {
        let text = format!("# Do not edit\nwork_mem = '8MB'\n{BEGIN}\nport = 5432\n{END}\nx = 1\n");
        assert_eq!(
            without_block(&text),
            "# Do not edit\nwork_mem = '8MB'\nx = 1\n"
        );
    }

    #[test]
    fn a_path_a_shell_would_split_is_refused() {
        assert!(plain_path(Path::new("/usr/local/bin/lethe"), "x").is_ok());
        for bad in ["/tmp/a b", "/tmp/it's", "/tmp/$(x)", ""] {
            assert!(plain_path(Path::new(bad), "x").is_err(), "{bad}");
        }
    }
}
