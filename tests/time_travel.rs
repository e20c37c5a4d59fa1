//! `lethe serve` under a fake, accelerated clock (libfaketime, installed by
//! `scripts/test-servers`): schedules across DST changes, run end to end
//! through the enqueuer, and reminders that must go out once however many
//! ticks pass. The store is SQLite, whose clock is the process's (a
//! PostgreSQL store would read the server's real clock).

mod common;

use std::time::Duration;

use common::{faked, run_ok, stdout_json, ConfigDir, Reaped};
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
    let mut serve: Reaped = common::spawn_serve(cmd, &c.path().join("serve.log"), &["dst"]);
    std::thread::sleep(Duration::from_secs(real_secs));
    common::signal(&serve, libc::SIGTERM);
    common::wait_exit(&mut serve, 30);
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
    let Some(lib) = common::server_env("LETHE_TEST_LIBFAKETIME") else {
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
    let Some(lib) = common::server_env("LETHE_TEST_LIBFAKETIME") else {
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
    let Some(lib) = common::server_env("LETHE_TEST_LIBFAKETIME") else {
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
            let subject = e["details"]["subject"].as_str()?.to_string();
            subject
                .contains("(T-")
                .then(|| (e["at"].as_str().unwrap_or("").to_string(), subject))
        })
        .collect();
    assert_eq!(reminders.len(), parties.len() * 2, "{reminders:#?}");
    for (at, subject) in &reminders {
        assert!(subject.contains("(T-48h)"), "{subject}");
        assert!(
            at.as_str() >= "2026-06-02T00:00:00" && at.as_str() < "2026-06-02T00:02:00",
            "reminder queued at {at}, not in the minute after the mark"
        );
    }
    for party in &parties {
        assert_eq!(
            reminders
                .iter()
                .filter(|(_, s)| s.contains(&format!("notify {party} ")))
                .count(),
            2,
            "{party}: one reminder to ops and one to the DPO"
        );
    }
}
