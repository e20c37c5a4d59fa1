//! The audit chain across a hash-rule change: events hashed under rule 1
//! (before RFC 8785) and rule 2 after it verify as one chain, and the rule
//! an exported line names cannot be flipped unnoticed.

use serde_json::Value;
use sqlx::Connection;

use crate::common::{run_ok, stdout_json, ConfigDir};
use lethe::chain::{event_hash, genesis_hash, truncate_micros, HashRule};

/// Appends `n` rule-1 events straight into the store, as a build from before
/// rule 2 wrote them (the migration gives such rows `hash_rule = 1`).
async fn write_rule_one_events(store: &std::path::Path, n: i64) {
    let url = format!("sqlite://{}", store.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut conn)
            .await
            .unwrap();
    let (first, mut prev) = last.map_or((1, genesis_hash()), |(s, h)| (s + 1, h));
    for seq in first..first + n {
        let at = truncate_micros(chrono::Utc::now());
        let details = HashRule::SortedJson.canonical(&serde_json::json!({"n": seq, "b": [1, 2]}));
        let hash = event_hash(&prev, seq, at, "cli:old", "old.event", "t", &details);
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor, action, target, details, prev_hash, hash, hash_rule)
             VALUES ($1, $2, 'cli:old', 'old.event', 't', $3, $4, $5, 1)",
        )
        .bind(seq)
        .bind(at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .bind(&details)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut conn)
        .await
        .unwrap();
        prev = hash;
    }
}

fn verify(c: &ConfigDir, file: &std::path::Path) -> Value {
    stdout_json(
        &c.lethe()
            .args(["audit", "verify", "--json"])
            .arg(file)
            .output()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_spanning_both_rules_verifies_and_a_flipped_rule_is_caught() {
    let c = ConfigDir::new(None, "", "");
    c.job(
        "prune",
        "kind = \"runner.prune\"\nschedule = \"0 0 3 * * *\"\n",
    );
    run_ok(c.lethe().arg("migrate"));
    write_rule_one_events(&c.path().join("lethe.db"), 3).await;
    run_ok(c.lethe().args(["run", "prune"]));
    let file = c.path().join("audit.jsonl");
    run_ok(c.lethe().args(["audit", "export", "--out"]).arg(&file));

    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let old: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i]["actor"] == "cli:old")
        .collect();
    assert_eq!(old.len(), 3, "{text}");
    for (i, l) in lines.iter().enumerate() {
        let want = if old.contains(&i) { None } else { Some(2) };
        assert_eq!(
            l.get("rule").and_then(Value::as_i64),
            want,
            "line {}: {l}",
            i + 1
        );
    }
    let (first_old, first_new) = (old[0], old[2] + 1);
    assert!(
        first_old > 0 && first_new < lines.len(),
        "rule 2 events before and after: {text}"
    );
    let v = verify(&c, &file);
    assert_eq!(
        (v["ok"].as_bool(), v["events"].as_u64()),
        (Some(true), Some(lines.len() as u64)),
        "{v}"
    );

    // Claiming rule 2 for a rule-1 line, or rule 1 for a rule-2 line: the hash no longer matches.
    for (i, rule) in [
        (first_old, Value::from(2)),
        (first_new, Value::from(1)),
        (first_new, Value::from(7)),
    ] {
        let mut altered = lines.clone();
        altered[i]["rule"] = rule.clone();
        let bad = c.path().join("altered.jsonl");
        let body: Vec<String> = altered.iter().map(Value::to_string).collect();
        std::fs::write(&bad, body.join("\n") + "\n").unwrap();
        let v = verify(&c, &bad);
        assert_eq!(
            (v["ok"].as_bool(), v["broken_line"].as_u64()),
            (Some(false), Some(i as u64 + 1)),
            "rule {rule} on line {}: {v}",
            i + 1
        );
    }
}
