//! Merkle proofs against the anchors (issue 15 item 3): `lethe audit prove SEQ`
//! gives an inclusion proof of one event in an anchored tree, `--consistency
//! OLD NEW` one anchored tree as a prefix of another; `tests/auditor/proof.py`
//! (shown whole in the README, nothing of Lethe imported) checks both on real
//! proofs, and rejects altered ones. A rewritten history yields no proof;
//! bad input gets an error saying what, where and how to fix it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::audit_anchors::{Rig, KEY};
use crate::common::server_env;

const PROOF_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/auditor/proof.py");

/// `lethe audit prove ARGS`: exit code, stdout (JSON when asked) and stderr.
fn prove(rig: &Rig, args: &[&str]) -> (i32, Value, String) {
    let out = rig
        .cmd()
        .args(["audit", "prove"])
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(
        !stdout.contains(KEY) && !stderr.contains(KEY),
        "the key never reaches output"
    );
    let v = serde_json::from_str(&stdout).unwrap_or(Value::String(stdout));
    (out.status.code().unwrap_or(-1), v, stderr)
}

fn proved(rig: &Rig, args: &[&str]) -> Value {
    let (code, v, err) = prove(rig, args);
    assert_eq!(code, 0, "{args:?}: {v} {err}");
    v
}

/// proof.py on `proof` (with the key): its exit code and verdict.
fn auditor(rig: &Rig, proof: &Value, name: &str) -> Option<(i32, Value)> {
    let python = server_env("LETHE_TEST_PYTHON")?;
    let file: PathBuf = rig.c.path().join(name);
    std::fs::write(&file, serde_json::to_vec(proof).unwrap()).unwrap();
    let out = Command::new(python)
        .arg(PROOF_PY)
        .arg(&file)
        .arg(KEY)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Some((out.status.code().unwrap_or(-1), v))
}

fn assert_auditor_accepts(rig: &Rig, proof: &Value) {
    if let Some((code, v)) = auditor(rig, proof, "proof.json") {
        assert_eq!((code, &v["ok"]), (0, &true.into()), "{v} for {proof}");
    }
}

fn assert_auditor_rejects(rig: &Rig, proof: &Value) {
    if let Some((code, v)) = auditor(rig, proof, "altered.json") {
        assert_eq!(code, 1, "an altered proof fails: {v}");
    }
}

/// The README shows proof.py whole: the script an auditor copies is the one tested.
#[test]
fn the_readme_shows_the_proof_script_and_its_vectors() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let script = std::fs::read_to_string(PROOF_PY).unwrap();
    assert!(readme.contains(script.trim_end()), "README shows proof.py");
    for quoted in [
        "lethe-anchor-v2",
        "08b426a4c43ffe2bf68967cdd1f33b70389ef6de2be3d2f7bb05414a99155a13",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        "837dbb152e9b079010717e84e865da4ebc0fa198a806d59d31bf15accef22d0e",
    ] {
        assert!(readme.contains(quoted), "the README gives {quoted}");
    }
}

async fn inclusion_proofs_check_out(rig: Rig) {
    let anchored = rig.build();
    let newest = *anchored.last().unwrap();
    for seq in 1..=newest {
        let p = proved(&rig, &[&seq.to_string(), "--json"]);
        assert_eq!((&p["seq"], &p["tree_size"]), (&seq.into(), &newest.into()));
        assert_eq!(p["anchor"]["signature"], "valid", "{p}");
        assert_eq!(p["event"]["seq"], seq, "{p}");
    }
    let p = proved(&rig, &["2", "--anchor", &anchored[0].to_string(), "--json"]);
    assert_eq!(p["tree_size"], anchored[0], "{p}");
    assert_auditor_accepts(&rig, &p);
    let p = proved(&rig, &[&anchored[1].to_string(), "--json"]);
    assert_auditor_accepts(&rig, &p);

    let mut altered = p.clone();
    let h = altered["path"][0].as_str().unwrap().to_string();
    altered["path"][0] =
        format!("{}{}", if h.starts_with('0') { "1" } else { "0" }, &h[1..]).into();
    assert_auditor_rejects(&rig, &altered);
    let mut altered = p.clone();
    altered["event"]["details"]["reason"] = "other".into();
    assert_auditor_rejects(&rig, &altered);

    let (code, text, _) = prove(&rig, &["1"]);
    assert_eq!(code, 0);
    let text = text.as_str().unwrap();
    assert!(text.starts_with("INCLUDED: event seq 1 "), "{text}");
    assert!(text.contains("HMAC valid"), "{text}");
}

async fn consistency_proofs_check_out(rig: Rig) {
    let a = rig.build();
    for (old, new) in [(a[0], a[2]), (a[0], a[1]), (a[1], a[2]), (a[1], a[1])] {
        let p = proved(
            &rig,
            &[
                "--consistency",
                &old.to_string(),
                &new.to_string(),
                "--json",
            ],
        );
        assert_eq!((&p["old_size"], &p["new_size"]), (&old.into(), &new.into()));
        assert_auditor_accepts(&rig, &p);
    }
    let p = proved(
        &rig,
        &[
            "--consistency",
            &a[0].to_string(),
            &a[2].to_string(),
            "--json",
        ],
    );
    let mut altered = p.clone();
    altered["old_anchor"]["root"] = p["new_root"].clone();
    assert_auditor_rejects(&rig, &altered);
    let (code, text, _) = prove(
        &rig,
        &["--consistency", &a[0].to_string(), &a[2].to_string()],
    );
    assert_eq!(code, 0);
    assert!(text.as_str().unwrap().starts_with("CONSISTENT: "), "{text}");
}

/// A history rewritten under the anchors yields an error, not a proof.
async fn a_rewritten_history_yields_no_proof(rig: Rig) {
    let a = rig.build();
    rig.delete_and_recompute(2).await;
    let (code, _, err) = prove(&rig, &["1", "--json"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no longer matches anchor"), "{err}");
    let (code, _, err) = prove(
        &rig,
        &["--consistency", &a[0].to_string(), &a[2].to_string()],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("audit verify --live"), "{err}");
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inclusion_proofs_check_out() {
        super::inclusion_proofs_check_out(Rig::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consistency_proofs_check_out() {
        super::consistency_proofs_check_out(Rig::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rewritten_history_yields_no_proof() {
        super::a_rewritten_history_yields_no_proof(Rig::sqlite()).await;
    }
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inclusion_proofs_check_out() {
        if let Some(rig) = Rig::postgres().await {
            super::inclusion_proofs_check_out(rig).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consistency_proofs_check_out() {
        if let Some(rig) = Rig::postgres().await {
            super::consistency_proofs_check_out(rig).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rewritten_history_yields_no_proof() {
        if let Some(rig) = Rig::postgres().await {
            super::a_rewritten_history_yields_no_proof(rig).await;
        }
    }
}

fn anchor_file(rig: &Rig, seq: i64) -> PathBuf {
    rig.c.path().join("anchors").join(format!("{seq:020}.json"))
}

/// Replaces a (read-only) folder anchor, as the folder's owner could.
fn overwrite(rig: &Rig, seq: i64, bytes: &[u8]) {
    let f = anchor_file(rig, seq);
    let mut perms = std::fs::metadata(&f).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&f, perms).unwrap();
    std::fs::write(&f, bytes).unwrap();
}

fn stored(rig: &Rig, seq: i64) -> lethe::audit::anchor::Anchor {
    serde_json::from_slice(&std::fs::read(anchor_file(rig, seq)).unwrap()).unwrap()
}

/// Unknown or unanchored seqs, a wrong anchor, reversed consistency, no
/// anchors at all: exit 2 saying what and how to fix; a malformed anchor: exit 1.
#[test]
fn bad_input_gets_a_clear_error() {
    let rig = Rig::sqlite();
    rig.event(1);
    let (code, _, err) = prove(&rig, &["1"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no anchors in") && err.contains("lethe run audit.anchor"),
        "{err}"
    );

    let a = rig.build();
    let beyond = (a[2] + 5).to_string();
    let (code, _, err) = prove(&rig, &[&beyond]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("seq {beyond} is beyond anchor {:020}.json", a[2]))
            && err.contains("lethe run audit.anchor"),
        "{err}"
    );
    let (code, _, err) = prove(&rig, &["0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("numbered from 1"), "{err}");
    let (code, _, err) = prove(&rig, &["1", "--anchor", &(a[0] + 1).to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("no anchor for seq {}", a[0] + 1))
            && err.contains(&format!("the newest is seq {}", a[2])),
        "{err}"
    );
    let (code, _, err) = prove(
        &rig,
        &["--consistency", &a[2].to_string(), &a[0].to_string()],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("OLD ≤ NEW"), "{err}");

    // A format-1 anchor (written before roots) stays valid evidence but has no root.
    let key = lethe::config::Secret::new(KEY.to_string());
    let mut v1 = stored(&rig, a[0]);
    (v1.lethe_anchor, v1.tree_size, v1.root) = (1, None, None);
    v1.hmac = v1.sign(&key);
    overwrite(&rig, a[0], &serde_json::to_vec(&v1).unwrap());
    let (code, v) = rig.live();
    assert_eq!((code, &v["anchors"]["matched"]), (0, &3.into()), "{v}");
    let (code, _, err) = prove(&rig, &["1", "--anchor", &a[0].to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is format 1") && err.contains("name a later anchor"),
        "{err}"
    );

    let mut newest = stored(&rig, a[2]);
    (newest.lethe_anchor, newest.tree_size, newest.root) = (1, None, None);
    newest.hmac = newest.sign(&key);
    overwrite(&rig, a[2], &serde_json::to_vec(&newest).unwrap());
    let (code, _, err) = prove(&rig, &["1"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("it is the newest") && err.contains("lethe run audit.anchor"),
        "{err}"
    );

    overwrite(&rig, a[1], b"{\"seq\": 1}");
    let (code, _, err) = prove(&rig, &["1", "--anchor", &a[1].to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a Lethe anchor"), "{err}");
}

/// An anchor carrying another root (validly signed: the key leaked) is
/// caught by `verify --live`, which recomputes the root of every anchored prefix.
#[test]
fn an_anchored_root_that_does_not_match_is_caught_by_verify_live() {
    let rig = Rig::sqlite();
    let a = rig.build();
    let key = lethe::config::Secret::new(KEY.to_string());
    let mut wrong = stored(&rig, a[1]);
    wrong.root = Some("ab".repeat(32));
    wrong.hmac = wrong.sign(&key);
    overwrite(&rig, a[1], &serde_json::to_vec(&wrong).unwrap());
    let (code, v) = rig.live();
    assert_eq!((code, &v["first_bad_seq"]), (1, &a[1].into()), "{v}");
    assert!(
        v["finding"]["problem"]
            .as_str()
            .unwrap()
            .contains("Merkle root that is not the root of events"),
        "{v}"
    );
}
