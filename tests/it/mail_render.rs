//! Every mail the product sends, rendered as its reader sees it: parsed with
//! Python's `email` package and drawn by headless Chromium at 600 px by
//! `tests/mail/render.py`, one PNG per template kept under the test's output
//! folder. Asserted on the rendering: no SVG, script or fetched resource,
//! nothing wider than 600 px, no broken image, and the SLA chart's bars drawn
//! at the lengths the report's numbers give.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{lethe, run_ok, server_env, stdout_json};
use lethe::dsr::{BUCKET_COLORS, TREND_COLOR};
use lethe::mail::{BAR_HEIGHT_PX, BAR_MAX_PX};

/// Each template, by a phrase of its subject.
const TEMPLATES: [(&str, &str); 9] = [
    ("sla-report", "DSR SLA report"),
    ("breach-opened", "] BREACH "),
    ("breach-reminder", "] breach "),
    ("breach-escalation", "OVERDUE: breach"),
    ("export-ready", "data export ready"),
    ("backup-verify-failed", "FAILED verification"),
    ("rpo-alert", "RPO breached"),
    ("job-dead", "is dead after"),
    ("demo-started", "demo started"),
];

fn render(python: &str, chromium: &str, emls: &[PathBuf], out: &Path) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mail/render.py");
    let colors: Vec<&str> = BUCKET_COLORS
        .iter()
        .chain([&TREND_COLOR])
        .map(|c| &c[1..])
        .collect();
    let output = Command::new(python)
        .arg(script)
        .arg("--out")
        .arg(out)
        .args(["--chromium", chromium, "--colors", &colors.join(",")])
        .args(emls)
        .output()
        .expect("run tests/mail/render.py");
    assert!(
        output.status.success(),
        "render.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout_json(&output)["messages"].as_array().unwrap().clone()
}

/// The bars of `color` in the screenshot (not the 4 px tone marks at row edges).
fn bar_widths(m: &Value, color: &str) -> Vec<u64> {
    m["bars"][&color[1..]]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| {
            b["x"].as_u64().unwrap() > 100
                && b["height"]
                    .as_u64()
                    .unwrap()
                    .abs_diff(u64::from(BAR_HEIGHT_PX))
                    <= 1
        })
        .map(|b| b["width"].as_u64().unwrap())
        .collect()
}

fn expected_widths(values: &[f64]) -> Vec<u64> {
    let max = values.iter().copied().fold(0.0, f64::max);
    values
        .iter()
        .filter(|v| **v > 0.0)
        .map(|v| ((v / max * f64::from(BAR_MAX_PX)).round() as u64).max(2))
        .collect()
}

fn close(got: &[u64], want: &[u64]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.abs_diff(*w) <= 1)
}

/// The demo's mails plus the ones only trouble sends: a breach past its
/// deadline, a corrupted backup (verification fails, the job dies, the RPO is breached).
fn mail_everything(dir: &Path) -> Value {
    let demo = stdout_json(&run_ok(lethe().args(["demo", "--json", "--dir"]).arg(dir)));
    let at = |args: &[&str]| {
        let mut c = lethe();
        c.current_dir(dir).args(args);
        c
    };
    let detected = (chrono::Utc::now() - chrono::Duration::hours(80)).to_rfc3339();
    run_ok(&mut at(&[
        "breach",
        "open",
        "--title",
        "Laptop with support exports stolen",
        "--detected-at",
        &detected,
        "--subjects",
        "12",
    ]));
    run_ok(&mut at(&["run", "breach.tick"]));
    let backups = stdout_json(&run_ok(&mut at(&["backup", "list", "--json"])));
    let object = dir
        .join("objects")
        .join(backups["backups"][0]["object"].as_str().unwrap());
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&object, bytes).unwrap();
    // One attempt, so the run is dead at once and ops are told.
    let job = dir.join("jobs/backup.verify.toml");
    let spec = std::fs::read_to_string(&job).unwrap();
    assert!(spec.contains("max_attempts = 2"), "{spec}");
    std::fs::write(&job, spec.replace("max_attempts = 2", "max_attempts = 1")).unwrap();
    let verify = at(&["run", "backup.verify"]).output().unwrap();
    assert!(
        !verify.status.success(),
        "a corrupted backup must fail verification"
    );
    run_ok(&mut at(&["run", "backup.rpo_check"]));
    run_ok(&mut at(&["run", "mail.flush"]));
    demo
}

fn sla_result(demo: &Value) -> &Value {
    let runs = demo["runs"].as_array().unwrap();
    &runs.iter().find(|r| r["kind"] == "dsr.sla_report").unwrap()["result"]
}

fn assert_sla_report(m: &Value, demo: &Value) {
    let r = sla_result(demo);
    // The chart: one bar per non-empty bucket, at its length.
    let buckets = ["overdue", "0-2", "3-6", "7-13", "14+"];
    let counts: Vec<f64> = buckets
        .iter()
        .map(|b| r["open_by_days_left"][b].as_f64().unwrap())
        .collect();
    let mut want = expected_widths(&counts).into_iter();
    for ((bucket, n), color) in buckets.iter().zip(&counts).zip(BUCKET_COLORS) {
        let want: Vec<u64> = if *n > 0.0 {
            want.next().into_iter().collect()
        } else {
            vec![]
        };
        let got = bar_widths(m, color);
        assert!(
            close(&got, &want),
            "bucket {bucket}: {n} requests, bars {got:?}, want {want:?}"
        );
    }
    let medians: Vec<f64> = r["weekly"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["median_days_to_close"].as_f64().unwrap_or(0.0))
        .collect();
    assert_eq!(medians.len(), 12);
    let trend = bar_widths(m, TREND_COLOR);
    assert!(
        close(&trend, &expected_widths(&medians)),
        "trend bars {trend:?} for medians {medians:?}"
    );

    // Overdue first, with what to run; at-risk ones with their extend command.
    let overdue = r["overdue"][0]["id"].as_i64().unwrap();
    let text = m["text_plain"].as_str().unwrap();
    // The backups' promise beside the deadlines, from the demo's own backup.
    assert_eq!(r["backups"]["measured_from"], "backups", "{r}");
    assert!(text.contains("Achieved RPO"), "{text}");
    let action = text.split("Needs action now").nth(1).unwrap();
    let first = action.lines().find(|l| l.contains(" #")).unwrap();
    assert!(
        first.starts_with("!!") && first.contains(&format!("#{overdue} ")),
        "{first}"
    );
    assert!(action.contains(&format!("$ lethe dsr show {overdue}")));
    let extendable = r["at_risk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["extendable_days"].is_u64())
        .unwrap();
    assert!(
        action.contains(&format!(
            "$ lethe dsr extend {} --days {}",
            extendable["id"], extendable["extendable_days"]
        )),
        "{action}"
    );
    assert!(text.contains("Times are in Europe/Berlin, with UTC alongside."));

    // The CSV: one row per request, RFC 4180, no address anywhere.
    let csv = &m["attachments"][0]["csv"];
    let requests = demo["dsr_history"]["requests"].as_u64().unwrap()
        + demo["dsr"].as_array().unwrap().len() as u64;
    assert_eq!(
        (
            csv["rows"].as_u64(),
            csv["ragged_rows"].as_u64(),
            csv["cells_with_at"].as_u64()
        ),
        (Some(requests), Some(0), Some(0)),
        "{csv}"
    );
}

#[test]
fn every_mail_renders_in_a_browser_as_designed() {
    let (Some(python), Some(chromium)) = (
        server_env("LETHE_TEST_PYTHON"),
        server_env("LETHE_TEST_CHROMIUM"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let demo = mail_everything(&dir);
    let emls: Vec<PathBuf> = std::fs::read_dir(dir.join("mail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    let out = tmp.path().join("rendered");
    let messages = render(&python, &chromium, &emls, &out);
    assert_eq!(messages.len(), emls.len());
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mail-render");
    std::fs::create_dir_all(&keep).unwrap();
    for (template, phrase) in TEMPLATES {
        let m = messages
            .iter()
            .find(|m| m["subject"].as_str().unwrap().contains(phrase))
            .unwrap_or_else(|| panic!("no {template} mail among {} messages", messages.len()));
        let what = format!("{template}: {}", m["subject"]);
        assert_eq!(m["html_problems"], Value::Array(vec![]), "{what}");
        assert_eq!(m["defects"], Value::Array(vec![]), "{what}");
        assert!(
            m["has_text_plain"] == true
                && m["has_text_html"] == true
                && m["has_date"] == true
                && m["has_message_id"] == true,
            "{what}"
        );
        assert_eq!(
            (m["fits_600"].as_bool(), m["broken_images"].as_u64()),
            (Some(true), Some(0)),
            "{what}: width {}",
            m["scroll_width"]
        );
        std::fs::copy(
            m["png"].as_str().unwrap(),
            keep.join(format!("{template}.png")),
        )
        .unwrap();
    }
    let sla = messages
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("DSR SLA report"))
        .unwrap();
    assert_sla_report(sla, &demo);
}
