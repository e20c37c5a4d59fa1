//! The deployment files under deploy/ parse, and say what the product needs:
//! the Kubernetes Deployment runs several replicas probed on /readyz and
//! /healthz with its config from ConfigMaps and its keys from a Secret; the
//! config they carry loads with Lethe's own loader; the compose stack has
//! PostgreSQL, an S3-compatible store and an SMTP catcher; the Dockerfile is
//! multi-stage and runs unprivileged; the systemd unit drains on stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn k8s_docs() -> Vec<Value> {
    let mut docs = Vec::new();
    for f in ["configmap.yaml", "secret.yaml", "deployment.yaml"] {
        docs.extend(yaml_docs(&root().join("deploy/k8s").join(f)));
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Writes lethe.toml and jobs/ to a folder and loads them as `lethe` would.
fn load_config(toml: &str, jobs: &BTreeMap<String, String>) -> lethe::config::Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    std::fs::write(dir.path().join("lethe.toml"), toml).unwrap();
    for (name, body) in jobs {
        std::fs::write(dir.path().join("jobs").join(name), body).unwrap();
    }
    lethe::config::Config::load(&dir.path().join("lethe.toml"))
        .unwrap_or_else(|e| panic!("config does not load: {e}"))
}

#[test]
fn every_yaml_manifest_parses() {
    let mut n = 0;
    let mut stack = vec![root().join("deploy")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let docs = yaml_docs(&p);
                assert!(!docs.is_empty(), "{} is empty", p.display());
                n += docs.len();
            }
        }
    }
    assert!(n >= 7, "all manifests were found ({n} documents)");
    for d in k8s_docs() {
        assert!(
            d["apiVersion"].is_string()
                && d["kind"].is_string()
                && d["metadata"]["name"].is_string(),
            "every Kubernetes document has apiVersion, kind and metadata.name: {d:?}"
        );
    }
}

#[test]
fn k8s_deployment_runs_replicas_probed_on_readyz_and_healthz() {
    let docs = k8s_docs();
    let dep = find(&docs, "Deployment", "lethe");
    assert!(dep["spec"]["replicas"].as_u64().unwrap() >= 2, "N replicas");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0], "serve");
    let port_name = s(&c["ports"][0]["name"]);
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(s(&c[probe]["httpGet"]["port"]), port_name);
    }
    // Selector matches the pod labels.
    assert_eq!(
        dep["spec"]["selector"]["matchLabels"],
        dep["spec"]["template"]["metadata"]["labels"]
    );
    // Secrets come from the Secret, config from the ConfigMaps, all of which exist.
    let secret = s(&c["envFrom"][0]["secretRef"]["name"]);
    let sec = find(&docs, "Secret", secret);
    for key in [
        "LETHE_DATABASE_URL",
        "AUDIT_SIGNING_KEY",
        "LETHE_PSEUDONYM_KEY",
    ] {
        assert!(sec["stringData"][key].is_string(), "Secret has {key}");
    }
    for v in pod["volumes"].as_sequence().unwrap() {
        if let Some(cm) = v["configMap"]["name"].as_str() {
            find(&docs, "ConfigMap", cm);
        }
    }
    assert_eq!(pod["initContainers"][0]["args"][0], "migrate");
    assert!(pod["securityContext"]["runAsNonRoot"].as_bool().unwrap());
    // SIGTERM drains for runner.drain_timeout; the pod must be given longer.
    let cfg = k8s_config(&docs);
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() > cfg.runner.drain_timeout.as_secs(),
        "grace period outlasts the drain"
    );
    // No plaintext secret in the ConfigMap.
    let toml = s(&find(&docs, "ConfigMap", "lethe-config")["data"]["lethe.toml"]);
    assert!(!toml.contains("CHANGE-ME") && !toml.contains("password ="));
}

fn k8s_config(docs: &[Value]) -> lethe::config::Config {
    let toml = s(&find(docs, "ConfigMap", "lethe-config")["data"]["lethe.toml"]).to_string();
    let jobs: BTreeMap<String, String> = find(docs, "ConfigMap", "lethe-jobs")["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (s(k).to_string(), s(v).to_string()))
        .collect();
    load_config(&toml, &jobs)
}

#[test]
fn k8s_configmaps_hold_a_config_and_a_job_for_every_kind() {
    let cfg = k8s_config(&k8s_docs());
    assert!(
        cfg.database.url.starts_with("postgres://"),
        "replicas share PostgreSQL"
    );
    let mut kinds: Vec<String> = cfg.jobs.iter().map(|j| j.kind.to_string()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), 12, "every job kind is scheduled: {kinds:?}");
    assert!(kinds.iter().any(|k| k == "audit.anchor"), "{kinds:?}");
}

#[test]
fn compose_stack_has_postgres_an_s3_store_an_smtp_catcher_and_lethe() {
    let dir = root().join("deploy/compose");
    let doc = &yaml_docs(&dir.join("compose.yaml"))[0];
    let services = doc["services"].as_mapping().unwrap();
    let image = |name: &str| s(&services[name]["image"]).to_string();
    assert!(image("postgres").starts_with("postgres:"));
    assert!(image("minio").starts_with("minio/minio"));
    assert!(image("mailpit").contains("mailpit"));
    let lethe = &services["lethe"];
    let dockerfile = dir
        .join(s(&lethe["build"]["context"]))
        .join(s(&lethe["build"]["dockerfile"]));
    assert!(dockerfile.is_file(), "{} exists", dockerfile.display());
    for v in lethe["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .chain(services["postgres"]["volumes"].as_sequence().unwrap())
    {
        let src = s(v).split(':').next().unwrap();
        if src.starts_with('.') {
            assert!(dir.join(src).exists(), "mounted {src} exists");
        }
    }
    // Every published port is on loopback only.
    for (_, svc) in services {
        for p in svc["ports"].as_sequence().into_iter().flatten() {
            assert!(s(p).starts_with("127.0.0.1:"), "{p:?} binds loopback");
        }
    }
    let cfg = load_config(
        &std::fs::read_to_string(dir.join("lethe.toml")).unwrap(),
        &BTreeMap::new(),
    );
    let store = cfg.object_store.as_ref().expect("object store");
    assert_eq!(store.endpoint.as_deref(), Some("http://minio:9000"));
    assert!(cfg.mail.smtp.as_ref().is_some_and(|m| m.host == "mailpit"));
}

#[test]
fn dockerfile_is_multi_stage_and_runs_unprivileged() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    // Join continuation lines, drop comments: one instruction per line.
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let known = [
        "FROM",
        "RUN",
        "COPY",
        "WORKDIR",
        "ENV",
        "USER",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
        "ARG",
    ];
    for l in &lines {
        let instr = l.split_whitespace().next().unwrap();
        assert!(known.contains(&instr), "unknown instruction: {l}");
    }
    let stages: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert!(stages.len() >= 2, "multi-stage");
    let build_stage = stages[0].split_whitespace().last().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("COPY --from={build_stage} "))),
        "the runtime copies the binary from the build stage"
    );
    let last_stage = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[last_stage..];
    let user = runtime
        .iter()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("ENTRYPOINT") && l.contains("lethe")));
    assert!(
        runtime.iter().any(|l| l.contains("postgresql-client")),
        "pg_dump for backups"
    );
    // Every path the build copies from the context exists.
    for l in lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY source {src} exists");
        }
    }
}

#[test]
fn systemd_unit_migrates_serves_and_drains_on_stop() {
    let text = std::fs::read_to_string(root().join("deploy/lethe.service")).unwrap();
    let mut section = String::new();
    let mut keys: BTreeMap<(String, String), String> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        assert!(!section.is_empty(), "{line} outside a section");
        keys.insert((section.clone(), k.to_string()), v.to_string());
    }
    let get = |s: &str, k: &str| keys.get(&(s.into(), k.into())).cloned().unwrap_or_default();
    assert!(get("Service", "ExecStart").ends_with("lethe serve --log-format json"));
    assert!(get("Service", "ExecStartPre").ends_with("lethe migrate"));
    assert_eq!(get("Service", "KillSignal"), "SIGTERM");
    assert!(get("Service", "TimeoutStopSec").parse::<u64>().unwrap() > 30);
    assert_eq!(get("Service", "User"), "lethe");
    assert_eq!(get("Install", "WantedBy"), "multi-user.target");
}
