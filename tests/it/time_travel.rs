//! `lethe serve` under a fake, accelerated clock (libfaketime, installed by
//! `scripts/test-servers`): schedules across DST changes, run end to end
//! through the enqueuer, and reminders that must go out once however many
//! ticks pass. The store is SQLite, whose clock is the process's (a
//! PostgreSQL store would read the server's real clock).

use std::process::Command;
use std::time::Duration;

use crate::common::{faked, run_ok, stdout_json, ConfigDir, Reaped};
use serde_json::Value;

/// A config whose one job `dst` runs at `schedule` in `zone`.
fn dst_config(schedule: &str, zone: &str) -> ConfigDir {
    // Poll and lease in fake time: at x600 a 30 s poll is 50 ms of real time.
    // catch_up = "skip": the previous day's fire, missed before start, is not run.
    let c = ConfigDir::new(
        None,
        "poll_interval = \"30s\"\nlease = \"2h\"\ncatch_up = \"skip\"",
        "",
    );
    c.job(
        "dst",
        &format!("kind = \"runner.prune\"\nschedule = \"{schedule}\"\ntimezone = \"{zone}\"\n"),
    );
    run_ok(c.lethe().arg("migrate"));
    c
}

/// Runs `serve` from `start` at `speed` for `real_secs`, then stops it.
fn serve_for(c: &ConfigDir, lib: &str, start: &str, speed: u32, real_secs: u64) {
    let cmd = faked(c.lethe(), lib, start, speed);
    let mut serve: Reaped = crate::common::spawn_serve(cmd, &c.path().join("serve.log"), &["dst"]);
    std::thread::sleep(Duration::from_secs(real_secs));
    crate::common::signal(&serve, libc::SIGTERM);
    crate::common::wait_exit(&mut serve, 30);
}

fn scheduled(c: &ConfigDir) -> Vec<String> {
    let h = stdout_json(&run_ok(
        c.lethe()
            .args(["jobs", "history", "--json", "--job", "dst"]),
    ));
    let mut fires: Vec<String> = h["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scheduled_for"].as_str().unwrap().to_string())
        .collect();
    fires.sort();
    fires
}

/// What `jobs list` announces as the next fire, asked at `at`.
fn announced(c: &ConfigDir, lib: &str, at: &str) -> Value {
    let list = stdout_json(&run_ok(
        faked(c.lethe(), lib, at, 1).args(["jobs", "list", "--json"]),
    ));
    list["jobs"][0]["next_fire"].clone()
}

/// 02:30 local does not exist on a spring-forward night: the fire happens at
/// the next valid instant (03:00 local), and `serve` enqueues exactly the
/// instant `jobs list` announced — not one second before it.
fn spring_forward(zone: &str, start: &str, expect: &str) {
    let Some(lib) = crate::common::server_env("LETHE_TEST_LIBFAKETIME") else {
        return;
    };
    let c = dst_config("0 30 2 * * *", zone);
    assert_eq!(announced(&c, &lib, start), expect, "{zone}");
    serve_for(&c, &lib, start, 10, 5);
    assert_eq!(scheduled(&c), vec![expect.to_string()], "{zone}");
}

#[test]
fn spring_forward_in_berlin_fires_at_the_announced_instant_through_serve() {
    spring_forward(
        "Europe/Berlin",
        "2026-03-29 00:59:40",
        "2026-03-29T01:00:00Z",
    );
}

#[test]
fn spring_forward_in_new_york_fires_at_the_announced_instant_through_serve() {
    spring_forward(
        "America/New_York",
        "2026-03-08 06:59:40",
        "2026-03-08T07:00:00Z",
    );
}

/// A fall-back night repeats an hour: a job at a local time in it fires
/// once, at the first occurrence, although `serve` runs through both.
fn fall_back(zone: &str, schedule: &str, start: &str, expect: &str) {
    let Some(lib) = crate::common::server_env("LETHE_TEST_LIBFAKETIME") else {
        return;
    };
    let c = dst_config(schedule, zone);
    assert_eq!(announced(&c, &lib, start), expect, "{zone}");
    // x600 for 8 s: 80 minutes of fake time, through both passes of the hour.
    serve_for(&c, &lib, start, 600, 8);
    assert_eq!(scheduled(&c), vec![expect.to_string()], "{zone}");
}

#[test]
fn fall_back_in_berlin_fires_a_repeated_local_time_once_through_serve() {
    fall_back(
        "Europe/Berlin",
        "0 30 2 * * *",
        "2026-10-25 00:29:00",
        "2026-10-25T00:30:00Z",
    );
}

#[test]
fn fall_back_in_new_york_fires_a_repeated_local_time_once_through_serve() {
    fall_back(
        "America/New_York",
        "0 30 1 * * *",
        "2026-11-01 05:29:00",
        "2026-11-01T05:30:00Z",
    );
}

/// A breach detected at midnight: its 72 h deadlines' T-48h mark is the next
/// midnight. `serve` runs `breach.tick` every (fake) minute from 23:55 for an
/// hour: no reminder before the mark, then one per party and recipient role
/// within the minute after it, and no repeat on the ~60 ticks that follow.
#[test]
fn breach_reminders_go_out_at_their_mark_once_through_serve() {
    let Some(lib) = crate::common::server_env("LETHE_TEST_LIBFAKETIME") else {
        return;
    };
    let c = ConfigDir::new(
        None,
        "poll_interval = \"10s\"\nlease = \"2h\"\ncatch_up = \"skip\"",
        "",
    );
    c.job(
        "dst",
        "kind = \"breach.tick\"\nschedule = \"0 * * * * *\"\n",
    );
    run_ok(c.lethe().arg("migrate"));
    let opened = stdout_json(&run_ok(
        faked(c.lethe(), &lib, "2026-06-01 00:30:00", 1).args([
            "breach",
            "open",
            "--title",
            "laptop lost",
            "--detected-at",
            "2026-06-01T00:00:00Z",
            "--jurisdiction",
            "gdpr",
            "--json",
        ]),
    ));
    let parties: Vec<String> = opened["parties"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["due_at"] == "2026-06-04T00:00:00Z")
        .map(|p| p["party"].as_str().unwrap().to_string())
        .collect();
    assert!(!parties.is_empty(), "{opened}");
    serve_for(&c, &lib, "2026-06-01 23:55:00", 600, 7);

    let audit = String::from_utf8(run_ok(c.lethe().args(["audit", "export"])).stdout).unwrap();
    let reminders: Vec<(String, String)> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["action"] == "mail.queued")
        .filter_map(|e| {
            // The dedupe key names the mark: breach:ID:PARTY:T-48h:ROLE.
            let key = e["details"]["dedupe_key"].as_str()?.to_string();
            key.contains(":T-")
                .then(|| (e["at"].as_str().unwrap_or("").to_string(), key))
        })
        .collect();
    assert_eq!(reminders.len(), parties.len() * 2, "{reminders:#?}");
    for (at, key) in &reminders {
        assert!(key.contains(":T-48h:"), "{key}");
        assert!(
            at.as_str() >= "2026-06-02T00:00:00" && at.as_str() < "2026-06-02T00:02:00",
            "reminder queued at {at}, not in the minute after the mark"
        );
    }
    for party in &parties {
        assert_eq!(
            reminders
                .iter()
                .filter(|(_, key)| key.contains(&format!(":{party}:")))
                .count(),
            2,
            "{party}: one reminder to ops and one to the DPO"
        );
    }
}

/// The shipped backup catalog (create hourly at :00, verify at :20, RPO check
/// every 10 minutes) with `rpo = "1h"`, run by `serve` under a fake clock.
struct Backups {
    c: ConfigDir,
    lib: String,
}

impl Backups {
    fn new(lib: String) -> Backups {
        let identity = age::x25519::Identity::generate();
        let c = ConfigDir::full(
            None,
            None,
            "poll_interval = \"30s\"\nlease = \"2h\"",
            "",
            &format!(
                "[object_store]\nurl = \"file://objects\"\n[backup]\nrpo = \"1h\"\nrecipients = [\"{}\"]\nidentity_file = \"age.txt\"\n",
                identity.to_public()
            ),
        );
        {
            use age::secrecy::ExposeSecret;
            std::fs::write(
                c.path().join("age.txt"),
                identity.to_string().expose_secret(),
            )
            .unwrap();
        }
        let app = c.path().join("app.db");
        let status = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import sqlite3; c = sqlite3.connect({:?}); c.execute('CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)'); \
                 c.executemany('INSERT INTO notes (body) VALUES (?)', [('n',)] * 50); c.commit()",
                app.display().to_string()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
        for kind in ["backup.create", "backup.verify", "backup.rpo_check"] {
            let body = std::fs::read_to_string(shipped.join(format!("{kind}.toml"))).unwrap();
            c.job(kind, &body);
        }
        run_ok(c.lethe().arg("migrate"));
        Backups { c, lib }
    }

    fn run_at(&self, at: &str, job: &str) {
        run_ok(faked(self.c.lethe(), &self.lib, at, 1).args(["run", job]));
    }

    fn serve(&self, start: &str, only: &[&str], real_secs: u64) {
        // x300: a real second is five fake minutes (slack for a loaded CI machine).
        let cmd = faked(self.c.lethe(), &self.lib, start, 300);
        let mut serve = crate::common::spawn_serve(cmd, &self.c.path().join("serve.log"), only);
        std::thread::sleep(Duration::from_secs(real_secs));
        crate::common::signal(&serve, libc::SIGTERM);
        crate::common::wait_exit(&mut serve, 30);
    }

    /// (fake time queued, subject) of every ops mail about backups.
    fn alerts(&self) -> Vec<(String, String)> {
        let audit =
            String::from_utf8(run_ok(self.c.lethe().args(["audit", "export"])).stdout).unwrap();
        audit
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["action"] == "mail.queued")
            .map(|e| {
                (
                    e["at"].as_str().unwrap_or("").to_string(),
                    e["details"]["subject"].as_str().unwrap_or("").to_string(),
                )
            })
            .filter(|(_, s)| s.contains("RPO") || s.contains("verified"))
            .collect()
    }

    fn newest_backup_created(&self) -> String {
        let list = stdout_json(&run_ok(self.c.lethe().args(["backup", "list", "--json"])));
        list["backups"][0]["created_at"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Two simulated hours of a healthy system send no alert (verification lags
/// creation by 20 minutes, which is not an RPO breach); with backups stopped,
/// exactly one alert comes at the first check past the RPO; a new backup
/// brings exactly one recovery notice.
#[test]
fn rpo_alarm_is_silent_when_healthy_once_when_breached_and_says_when_it_recovers() {
    let Some(lib) = crate::common::server_env("LETHE_TEST_LIBFAKETIME") else {
        return;
    };
    let b = Backups::new(lib);
    b.run_at("2026-06-01 00:05:00", "backup.create");
    b.run_at("2026-06-01 00:06:00", "backup.verify");
    // 00:57 → about 03:05.
    b.serve(
        "2026-06-01 00:57:00",
        &["backup.create", "backup.verify", "backup.rpo_check"],
        26,
    );
    assert_eq!(b.alerts(), vec![], "a healthy system raised an alarm");
    let list = stdout_json(&run_ok(b.c.lethe().args(["backup", "list", "--json"])));
    assert!(list["backups"].as_array().unwrap().len() >= 3, "{list}");

    // Backups stop: only the check runs, from 03:09 to about 04:44.
    let last = b.newest_backup_created();
    b.serve("2026-06-01 03:09:00", &["backup.rpo_check"], 19);
    let alerts = b.alerts();
    let breached: Vec<&(String, String)> = alerts
        .iter()
        .filter(|a| a.1.contains("RPO breached"))
        .collect();
    assert_eq!(breached.len(), 1, "{alerts:#?}");
    // The first check (every 10 minutes) after the newest backup's age passed
    // 1 h: not before that moment, and no later than one check period after it.
    let created = chrono::DateTime::parse_from_rfc3339(&last).unwrap();
    let due = (created + chrono::Duration::hours(1)).with_timezone(&chrono::Utc);
    let at = chrono::NaiveDateTime::parse_from_str(&breached[0].0[..19], "%Y-%m-%dT%H:%M:%S")
        .unwrap()
        .and_utc();
    assert!(
        at >= due && at < due + chrono::Duration::minutes(11),
        "alert at {at}; the RPO passed at {due}"
    );

    // A backup again: one recovery notice, however many checks follow.
    b.run_at("2026-06-01 04:50:00", "backup.create");
    b.serve("2026-06-01 04:55:00", &["backup.rpo_check"], 6);
    let alerts = b.alerts();
    let recovered = alerts
        .iter()
        .filter(|a| a.1.contains("RPO met again"))
        .count();
    assert_eq!(recovered, 1, "{alerts:#?}");
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a.1.contains("RPO breached"))
            .count(),
        1
    );
}
