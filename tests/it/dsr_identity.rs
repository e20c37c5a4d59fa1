//! Identity: a request can arrive unverified and waits in `received` until
//! `dsr verify` records how and by whom the identity was checked (the UK's
//! deadline then runs from that moment); one still unverified
//! `dsr.verify_within` after receipt is rejected as `identity_unverified`.
//! The fixture is `dsr.rs`'s.

use crate::common::{run_ok, stdout_json};
use crate::dsr::setup;
use serde_json::Value;

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(false).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread")] async fn $case() { super::$case(true).await })* }
    };
}

both!(an_unverified_request_waits_for_verification_or_expires);

async fn an_unverified_request_waits_for_verification_or_expires(pg: bool) {
    let Some(s) = setup(pg, "", "").await else {
        return;
    };
    let show = |id: &Value| {
        stdout_json(&run_ok(s.lethe().args([
            "dsr",
            "show",
            &id.to_string(),
            "--json",
        ])))
    };
    let process = || stdout_json(&run_ok(s.lethe().args(["run", "dsr.process", "--json"])));
    let (code, v) = s.submit("erasure", "member@x.example", &["--unverified"]);
    assert_eq!(
        (code, v["state"].as_str()),
        (Some(0), Some("received")),
        "{v}"
    );
    let run = process();
    assert_eq!(run["result"]["completed"], serde_json::json!([]), "{run}");
    assert_eq!(
        show(&v["id"])["state"],
        "received",
        "not processed unverified"
    );
    // The DPO's report says what the request waits for, and the command that ends the wait.
    let report = stdout_json(&run_ok(s.lethe().args(["dsr", "report", "--json"])));
    let item = report["open"]
        .as_array()
        .and_then(|o| o.iter().find(|i| i["id"] == v["id"]))
        .cloned()
        .unwrap_or_default();
    let first = item["commands"][0].as_str().unwrap_or_default();
    assert!(
        first.starts_with(&format!("lethe dsr verify {}", v["id"])),
        "{item}"
    );
    // A second, verified request for the same is a duplicate that points at the first.
    let (code, dup) = s.submit("erasure", "member@x.example", &[]);
    assert_eq!(code, Some(3), "{dup}");
    let detail = dup["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("lethe dsr verify {}", v["id"])),
        "{dup}"
    );

    let id = v["id"].to_string();
    let verify = |args: &[&str]| {
        s.lethe()
            .args(["dsr", "verify", &id])
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(
        verify(&["--method", "ID card", "--by", "dpo"])
            .status
            .code(),
        Some(2)
    );
    let ok = verify(&[
        "--method",
        "id_document",
        "--by",
        "Dana (DPO office)",
        "--json",
    ]);
    let shown = stdout_json(&ok);
    assert_eq!(
        (
            shown["state"].as_str(),
            shown["verify_method"].as_str(),
            shown["verified_by"].as_str()
        ),
        (
            Some("verified"),
            Some("id_document"),
            Some("Dana (DPO office)")
        ),
        "{shown}"
    );
    assert_eq!(
        shown["due_at"], v["due_at"],
        "GDPR: the deadline runs from receipt"
    );
    assert_eq!(
        verify(&["--method", "id_document", "--by", "x"])
            .status
            .code(),
        Some(3)
    );
    let run = process();
    assert_eq!(
        run["result"]["completed"],
        serde_json::json!([v["id"]]),
        "{run}"
    );

    // UK GDPR: the deadline runs from the verification, keeping an extension
    // granted while the request waited.
    let (_, uk) = s.submit(
        "export",
        "co1@x.example",
        &["--unverified", "--jurisdiction", "uk_gdpr"],
    );
    let uk_id = uk["id"].to_string();
    let extend = [
        "dsr", "extend", &uk_id, "--days", "10", "--reason", "complex",
    ];
    run_ok(s.lethe().args(extend));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let moved = stdout_json(&run_ok(s.lethe().args([
        "dsr",
        "verify",
        &uk_id,
        "--method",
        "email_link",
        "--by",
        "dpo",
        "--json",
    ])));
    let at = |v: &Value, f: &str| {
        chrono::DateTime::parse_from_rfc3339(v[f].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let from_verification = at(&moved, "verified_at")
        .checked_add_months(chrono::Months::new(1))
        .unwrap()
        .checked_add_days(chrono::Days::new(10))
        .unwrap();
    assert_eq!(at(&moved, "due_at"), from_verification, "{moved}");
    assert_eq!(moved["extended_days"], 10);

    // Unverified past dsr.verify_within: rejected, with evidence.
    let cfg = std::fs::read_to_string(s.c.config()).unwrap();
    std::fs::write(
        s.c.config(),
        cfg.replacen("[dsr]\n", "[dsr]\nverify_within = \"1s\"\n", 1),
    )
    .unwrap();
    let (_, late) = s.submit("export", "co2@x.example", &["--unverified"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let too_late = [
        "dsr",
        "verify",
        &late["id"].to_string(),
        "--method",
        "email_link",
        "--by",
        "dpo",
    ];
    assert_eq!(
        s.lethe().args(too_late).output().unwrap().status.code(),
        Some(3)
    );
    let run = process();
    assert_eq!(
        run["result"]["identity_unverified"],
        serde_json::json!([late["id"]]),
        "{run}"
    );
    let gone = show(&late["id"]);
    assert_eq!(
        (gone["state"].as_str(), gone["reason"].as_str()),
        (Some("rejected"), Some("identity_unverified")),
        "{gone}"
    );
    let audit = String::from_utf8(run_ok(s.lethe().args(["audit", "export"])).stdout).unwrap();
    assert!(audit.contains("\"action\":\"dsr.identity_verified\""));
    assert!(audit.contains("\"reason\":\"identity_unverified\""));
}
