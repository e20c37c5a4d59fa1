//! Property-based fuzzing (proptest) of everything that reads operator or
//! file input: lethe.toml with its data map, job files, retention periods and
//! durations, and the audit-verify reader. Inputs are arbitrary text and
//! mutations of valid files (lines dropped, duplicated, swapped, values
//! replaced with hostile tokens, truncation, flipped bytes). The property:
//! no panic, ever — every input ends in `Ok` or a clean error — and a
//! tampered audit file never verifies.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;

const VALID_CONFIG: &str = r#"
[database]
url = "sqlite://app.db"
[store]
url = "sqlite://lethe.db"
[runner]
workers = 2
lease = "60s"
retry_base = "30s"
[http]
listen = "127.0.0.1:8080"
[mail]
from = "Lethe <lethe@example.com>"
transport = "file"
dir = "mail"
[mail.recipients]
dpo = ["dpo@example.com"]
ops = ["ops@example.com"]
[object_store]
url = "file://objects"
[backup]
recipients = ["age1wm43f9u272cjdgmj332nee4ke347xuw5ffy0xmsdn23mr5u8pezslfg6pv"]
keep = { last = 3, daily = 7 }
[dsr]
default_deadline = "30d"
[keys]
provider = "local"
keyring_file = "keyring.json"
[breach]
reminders = ["48h", "6h"]
[app]
subjects = { table = "users", id = "id", email = "email" }
orgs = { table = "orgs", id = "id", closed_at = "closed_at" }
memberships = { table = "memberships", org = "org_id", subject = "user_id", role = "role", owner_roles = ["owner"] }
[[data_map]]
table = "users"
class = "account"
subject = "id"
erasure = "anonymize"
anonymize = { email = "hmac", name = "fixed:Deleted user", ip = "null" }
export = true
[[data_map]]
table = "api_request_logs"
class = "api_logs"
timestamp = "created_at"
org = "org_id"
subject = "user_id"
retention = ["90d", "org_closed+1y"]
erasure = "delete"
[[data_map]]
table = "invoices"
class = "billing"
timestamp = "issued_at"
org = "org_id"
subject = "user_id"
retention = "7y"
erasure = "retain"
legal_basis = "tax law"
"#;

const VALID_JOB: &str = r#"kind = "retention.purge"
schedule = "0 15 2 * * *"
timezone = "Europe/Berlin"
timeout = "2h"
max_attempts = 3
catch_up = "latest"
[params]
batch_size = 5000
"#;

/// Values that break naive parsers.
const HOSTILE: &[&str] = &[
    "\"\"",
    "\"-1d\"",
    "\"99999999999999999999d\"",
    "\"18446744073709551616s\"",
    "\"1e400\"",
    "\"org_closed+\"",
    "\"org_closed+99999999y\"",
    "\"0d\"",
    "\"💥\"",
    "\"\\u0000\"",
    "-9223372036854775808",
    "18446744073709551615",
    "nan",
    "inf",
    "[]",
    "[[]]",
    "{}",
    "{ a = { b = { c = 1 } } }",
    "\"* * * * * * * *\"",
    "\"61 61 25 32 13 8\"",
    "\"postgres://u:pw@h/db\"",
    "\"s3://\"",
    "\"file://\"",
    "\"x\"",
    "true",
    "\"fixed:\"",
    "\"hmac\"",
    "\"AAAA\"",
];

#[derive(Debug, Clone)]
enum Edit {
    Drop(usize),
    Duplicate(usize),
    Swap(usize, usize),
    ReplaceValue(usize, usize),
    Insert(usize, String),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Drop),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::ReplaceValue(a, b)),
        (any::<usize>(), "[ -~]{0,40}").prop_map(|(a, s)| Edit::Insert(a, s)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::Drop(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::Duplicate(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::Swap(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            Edit::ReplaceValue(i, v) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                if let Some((k, _)) = l.split_once('=') {
                    *l = format!("{k}= {}", HOSTILE[v % HOSTILE.len()]);
                }
            }
            Edit::Insert(i, s) => lines.insert(i % n, s.clone()),
            Edit::Truncate(i) => {
                let joined = lines.join("\n");
                let mut cut = i % (joined.len() + 1);
                while !joined.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines = joined[..cut].lines().map(str::to_string).collect();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

/// 1,000 cases per property in the suite; `LETHE_FUZZ_CASES=100000` for a long run.
fn fuzz_config() -> ProptestConfig {
    let cases = std::env::var("LETHE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A folder with an empty jobs/ for the config loader to look at.
fn config_path() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("jobs")).unwrap();
        let p = d.path().join("lethe.toml");
        (d, p)
    })
    .1
}

fn load(text: &str) {
    // Ok or a clean error; the error must render (it names file and line).
    if let Err(e) = lethe::config::Config::from_text(config_path(), text) {
        let _ = e.to_string();
    }
}

#[test]
fn the_unmutated_fixtures_are_valid() {
    lethe::config::Config::from_text(config_path(), VALID_CONFIG).unwrap();
    lethe::config::job_from_text(Path::new("jobs/purge.toml"), VALID_JOB).unwrap();
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn config_loader_never_panics_on_arbitrary_text(text in any::<String>()) {
        load(&text);
    }

    #[test]
    fn config_loader_never_panics_on_mutated_configs(edits in prop::collection::vec(edit(), 1..6)) {
        load(&apply(VALID_CONFIG, &edits));
    }

    #[test]
    fn job_loader_never_panics(edits in prop::collection::vec(edit(), 0..6), text in any::<String>()) {
        let path = Path::new("jobs/purge.toml");
        let _ = lethe::config::job_from_text(path, &apply(VALID_JOB, &edits));
        let _ = lethe::config::job_from_text(path, &text);
    }

    #[test]
    fn retention_and_duration_parsers_never_panic(
        text in prop_oneof![
            any::<String>(),
            "(org_closed\\+)?-?[0-9]{0,25}(d|w|mo|y|h|m|s|ms|µs)?",
        ],
        days in -400_000i64..400_000,
    ) {
        let at = chrono::Utc::now() + chrono::Duration::days(days);
        if let Ok(Some(rule)) = lethe::retention::RetentionRule::parse(&text) {
            let _ = rule.period().before(at);
            let _ = rule.period().after(at);
            let _ = rule.to_string();
        }
        let _ = lethe::retention::Period::parse(&text);
        let _ = lethe::config::parse_duration(&text);
    }
}

/// A real export of a chain of 12 events, signed with `key`.
fn valid_export(key: &lethe::config::Secret) -> &'static [u8] {
    static EXPORT: OnceLock<Vec<u8>> = OnceLock::new();
    EXPORT.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("s.db").display());
            let store = lethe::store::connect(&url, 2).await.unwrap();
            store.migrate().await.unwrap();
            for i in 0..12 {
                lethe::audit::record(
                    store.as_ref(),
                    "fuzz",
                    "test.event",
                    &format!("thing:{i}"),
                    serde_json::json!({"n": i, "text": "ünïcode \"quoted\""}),
                )
                .await
                .unwrap();
            }
            let mut out = Vec::new();
            lethe::audit::export(store.as_ref(), &mut out, Some(key))
                .await
                .unwrap();
            out
        })
    })
}

fn key() -> lethe::config::Secret {
    lethe::config::Secret::new("fuzz-signing-key")
}

#[test]
fn the_unmutated_export_verifies() {
    let k = key();
    let r = lethe::audit::verify(valid_export(&k), Some(&k)).unwrap();
    assert!(r.ok && r.events == 12, "{r:?}");
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn audit_verify_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let k = key();
        let _ = lethe::audit::verify(&bytes[..], Some(&k));
        let _ = lethe::audit::verify(&bytes[..], None);
    }

    #[test]
    fn a_tampered_audit_file_never_verifies(
        at in any::<usize>(),
        bit in 0u8..8,
        cut in any::<usize>(),
        mode in 0u8..3,
    ) {
        let k = key();
        let good = valid_export(&k);
        let mut bad = good.to_vec();
        match mode {
            // Flip one bit anywhere.
            0 => { let i = at % bad.len(); bad[i] ^= 1 << bit; }
            // Cut the file short (inside the chain or its signature line).
            1 => bad.truncate(cut % bad.len()),
            // Drop one whole line.
            _ => {
                let lines: Vec<&[u8]> = good.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
                let drop = at % lines.len();
                bad = lines.iter().enumerate().filter(|(i, _)| *i != drop)
                    .flat_map(|(_, l)| l.iter().copied().chain([b'\n'])).collect();
            }
        }
        if let Ok(r) = lethe::audit::verify(&bad[..], Some(&k)) {
            // Every byte but the final newline is covered by a hash or the HMAC.
            let trim = |b: &[u8]| b.strip_suffix(b"\n").unwrap_or(b).to_vec();
            let only_trailing = trim(&bad) == trim(good)
                || (mode == 0 && at % good.len() == good.len() - 1);
            prop_assert!(
                !r.ok || only_trailing,
                "tampering went unnoticed: {r:?}\n{}",
                String::from_utf8_lossy(&bad)
            );
        }
    }
}
