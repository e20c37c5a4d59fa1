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
export_recipients = ["age142683d78tk6pggyk8rr0wceta8z7qxvcvhrzzf0czhzsgghqeyyqllshwd"]
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
    let spec = lethe::config::job_from_text(Path::new("jobs/purge.toml"), VALID_JOB).unwrap();
    lethe::jobs::registry().check_job(&spec).unwrap();
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
        let registry = lethe::jobs::registry();
        for text in [apply(VALID_JOB, &edits), text] {
            // The registry checks kind and params after load: it must not panic either.
            if let Ok(spec) = lethe::config::job_from_text(path, &text) {
                let _ = registry.check_job(&spec);
            }
        }
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
                !(r.ok && r.signature == "valid") || only_trailing,
                "tampering went unnoticed: {r:?}\n{}",
                String::from_utf8_lossy(&bad)
            );
            // Intact but unsigned (what `--require-signature` refuses) is only
            // ever a file cut at the end: every other change breaks the chain.
            if r.ok && r.signature != "valid" {
                prop_assert_eq!(r.signature, "absent");
                prop_assert!(
                    good.starts_with(&trim(&bad)),
                    "an altered file passed as intact-unsigned: {:?}\n{}",
                    r,
                    String::from_utf8_lossy(&bad)
                );
            }
        }
    }
}

/// Every duration setting, as (section, key); `breach.reminders` is a list.
const DURATION_KEYS: &[(&str, &str)] = &[
    ("runner", "poll_interval"),
    ("runner", "lease"),
    ("runner", "retry_base"),
    ("runner", "retry_max"),
    ("runner", "drain_timeout"),
    ("http", "queue_timeout"),
    ("mail", "retry_base"),
    ("dsr", "default_deadline"),
    ("dsr", "at_risk"),
    ("dsr", "export_link_ttl"),
    ("dsr", "report_period"),
    ("keys", "dek_rotation"),
    ("keys", "kek_rotation"),
    ("keys", "shred_after"),
    ("backup", "rpo"),
    ("breach", "reminders"),
];

/// Every count setting, as (section, key).
const COUNT_KEYS: &[(&str, &str)] = &[
    ("database", "max_connections"),
    ("store", "max_connections"),
    ("runner", "workers"),
    ("http", "max_concurrency"),
    ("mail", "max_attempts"),
    ("mail", "batch_size"),
    ("keys", "concurrency"),
    ("keys", "deletion_window_days"),
    ("object_store", "upload_concurrency"),
    ("backup", "zstd_threads"),
    ("backup", "zstd_level"),
    ("backup", "part_size_mib"),
];

/// Hostile and boundary durations: huge, at and just past the 100-year limit, zero.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,22}(ms|s|m|h|d|w)",
        (
            any::<u64>(),
            prop::sample::select(vec!["ms", "s", "m", "h", "d", "w"])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        prop::sample::select(vec![
            "99999999999w",
            "36500d",
            "36501d",
            "5214w",
            "5215w",
            "876000h",
            "876001h",
            "3153600000s",
            "3153600001s",
            "3153600000000ms",
            "3153600000001ms",
            "0s",
            "0ms",
            "1ms",
            "7d",
            "604801s",
        ])
        .prop_map(str::to_string),
    ]
}

/// `VALID_CONFIG` with `section.key = value` set (replacing any line of that key).
fn with_setting(section: &str, key: &str, value: &str) -> String {
    let mut out = Vec::new();
    let mut current = "";
    for line in VALID_CONFIG.lines() {
        if line.starts_with('[') {
            current = line;
        }
        if current == format!("[{section}]") && line.starts_with(&format!("{key} =")) {
            continue;
        }
        out.push(line.to_string());
        if line == format!("[{section}]") {
            out.push(format!("{key} = {value}"));
        }
    }
    assert!(
        out.iter().any(|l| l == &format!("[{section}]")),
        "VALID_CONFIG has no [{section}]"
    );
    out.join("\n")
}

/// Every duration a loaded config holds.
fn durations(c: &lethe::config::Config) -> Vec<std::time::Duration> {
    let mut d = vec![
        c.runner.poll_interval,
        c.runner.lease,
        c.runner.retry_base,
        c.runner.retry_max,
        c.runner.drain_timeout,
        c.http.queue_timeout,
        c.mail.retry_base,
        c.dsr.default_deadline,
        c.dsr.at_risk,
        c.dsr.export_link_ttl,
        c.dsr.report_period,
        c.keys.dek_rotation,
        c.keys.kek_rotation,
        c.keys.shred_after,
        c.backup.rpo,
    ];
    d.extend(c.breach.reminders.iter().copied());
    d.extend(c.jobs.iter().map(|j| j.timeout));
    d
}

/// What the jobs do with durations: timestamps a few durations away from now.
fn assert_usable(d: std::time::Duration) -> Result<(), TestCaseError> {
    let now = chrono::Utc::now();
    let c = chrono::Duration::from_std(d);
    prop_assert!(c.is_ok(), "{d:?} does not fit chrono");
    let c = c.unwrap();
    for k in 1..=3 {
        prop_assert!(
            now.checked_add_signed(c * k).is_some(),
            "now + {k}×{d:?} overflows"
        );
        prop_assert!(
            now.checked_sub_signed(c * k).is_some(),
            "now - {k}×{d:?} overflows"
        );
    }
    prop_assert!(chrono::Duration::try_seconds(d.as_secs() as i64).is_some());
    Ok(())
}

/// A refused setting is a config error naming file:line:col and the allowed range.
fn assert_clean_refusal(e: &lethe::Error, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.exit_code(), 2, "{}: {}", what, e);
    let lethe::Error::Config {
        line,
        column,
        message,
        ..
    } = e
    else {
        return Err(TestCaseError::fail(format!(
            "{what}: not a config error: {e}"
        )));
    };
    prop_assert!(
        line.is_some() && column.is_some(),
        "{}: no line:col: {}",
        what,
        e
    );
    prop_assert!(!message.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// Any duration in any duration setting: the config is refused at load
    /// (exit 2, file:line:col, the range), or every duration it holds is
    /// usable in timestamp arithmetic without overflow.
    #[test]
    fn every_duration_setting_is_refused_or_usable(
        at in 0..DURATION_KEYS.len(),
        text in duration_text(),
    ) {
        let (section, key) = DURATION_KEYS[at];
        let value = if key == "reminders" { format!("[\"48h\", \"{text}\"]") } else { format!("\"{text}\"") };
        let cfg = with_setting(section, key, &value);
        match lethe::config::Config::from_text(config_path(), &cfg) {
            Ok(c) => {
                for d in durations(&c) {
                    assert_usable(d)?;
                }
                prop_assert!(c.runner.poll_interval > std::time::Duration::ZERO);
                prop_assert!(c.runner.lease >= std::time::Duration::from_secs(1));
            }
            Err(e) => {
                assert_clean_refusal(&e, &format!("{section}.{key} = {value}"))?;
                let m = e.to_string();
                prop_assert!(m.contains(" to ") || m.contains("between"), "no range in: {}", m);
            }
        }
    }

    /// A job's timeout: refused at load with file:line:col, or usable.
    #[test]
    fn every_job_timeout_is_refused_or_usable(text in duration_text()) {
        let job = VALID_JOB.replace("timeout = \"2h\"", &format!("timeout = \"{text}\""));
        match lethe::config::job_from_text(Path::new("jobs/purge.toml"), &job) {
            Ok(j) => assert_usable(j.timeout)?,
            Err(e) => assert_clean_refusal(&e, &text)?,
        }
    }

    /// Any integer in any count setting: refused at load with file:line:col, or
    /// a value of at least 1 (a zero pool, worker count or batch would hang).
    #[test]
    fn every_count_setting_is_refused_or_positive(
        at in 0..COUNT_KEYS.len(),
        n in prop_oneof![
            any::<i64>(),
            -2i64..70,
            prop::sample::select(vec![0i64, 1, 64, 65, 1000, 1001, 100_000, 100_001, u32::MAX as i64, i64::MAX]),
        ],
    ) {
        let (section, key) = COUNT_KEYS[at];
        let cfg = with_setting(section, key, &n.to_string());
        match lethe::config::Config::from_text(config_path(), &cfg) {
            Ok(c) => {
                prop_assert!(n >= 1, "{section}.{key} = {n} loaded");
                prop_assert!(c.store.max_connections >= 1 && c.database.max_connections >= 1);
                prop_assert!(c.runner.workers >= 1 && c.http.max_concurrency >= 1);
                prop_assert!(c.mail.max_attempts >= 1 && c.mail.batch_size >= 1);
                prop_assert!(c.keys.concurrency >= 1 && c.backup.zstd_threads >= 1);
            }
            Err(e) => assert_clean_refusal(&e, &format!("{section}.{key} = {n}"))?,
        }
    }
}
