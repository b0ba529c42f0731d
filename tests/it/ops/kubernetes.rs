//! `deploy/kubernetes/`: every manifest through kubernetes-validate, the settings that
//! matter checked, and the configuration each Deployment gives the connector accepted
//! by `check`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use crate::common::harness::*;
use crate::common::podman::{IMAGE_ENV, USER};
use crate::common::skip::skip;
use serde_json::Value;

/// kubernetes-validate, from the venv the test script makes.
struct Validator {
    tool: PathBuf,
    /// The venv's Python (PyYAML comes with kubernetes-validate).
    python: PathBuf,
}

fn kubernetes_validate() -> Option<Validator> {
    let venv = repo().join(".cache/kubernetes-validate/venv/bin");
    let tool = venv.join("kubernetes-validate");
    let python = venv.join("python3");
    (tool.is_file() && python.is_file()).then_some(Validator { tool, python })
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every manifest passes `kubernetes-validate --strict` (a broken one does not), the
/// Deployments are single, recreated, hardened and probed, and the configuration each
/// gives the connector passes `check`.
#[test]
fn kubernetes_manifests_validate_and_configure_the_connector() {
    let Some(Validator { tool, python }) = kubernetes_validate() else {
        return skip(
            "kubernetes-validate is not in .cache/kubernetes-validate/venv (tests/run.sh installs it)",
        );
    };
    let files = manifests();
    assert!(files.len() >= 4, "{files:?}");
    let out = Command::new(&tool)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            stdout(&out).contains(&format!("{name} passed")),
            "{name} was not validated:\n{}",
            text(&out)
        );
    }
    // And it does reject a broken one.
    let broken = scratch("k8s").join("broken.yaml");
    let deployment = std::fs::read_to_string(repo().join("deploy/kubernetes/deployment.yaml"))
        .unwrap()
        .replacen("replicas: 1 ", "replicas: one ", 1);
    assert!(deployment.contains("replicas: one "));
    std::fs::write(&broken, deployment).unwrap();
    let out = Command::new(&tool)
        .arg("--strict")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));

    let mut docs: Vec<(String, Value)> = Vec::new();
    for f in &files {
        let out = Command::new(&python)
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            ])
            .arg(f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        for d in serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap() {
            docs.push((name.clone(), d));
        }
    }
    let of_kind = |kind: &str| -> Vec<&(String, Value)> {
        docs.iter().filter(|(_, d)| d["kind"] == kind).collect()
    };
    let secrets = of_kind("Secret");
    assert_eq!(secrets.len(), 1);
    let secret = &secrets[0].1;
    let claims: BTreeSet<&str> = of_kind("PersistentVolumeClaim")
        .iter()
        .map(|(_, d)| d["metadata"]["name"].as_str().unwrap())
        .collect();
    let accounts: BTreeSet<&str> = of_kind("ServiceAccount")
        .iter()
        .map(|(_, d)| d["metadata"]["name"].as_str().unwrap())
        .collect();
    let deployments = of_kind("Deployment");
    assert!(deployments.len() >= 3, "one per storage kind");
    let mut tags = BTreeSet::new();
    for (file, d) in deployments {
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1, "{file}");
        assert_eq!(spec["strategy"]["type"], "Recreate", "{file}");
        let pod = &spec["template"]["spec"];
        let sc = &pod["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{file}");
        assert_eq!(sc["runAsUser"], USER, "{file}");
        assert_eq!(sc["runAsGroup"], USER, "{file}");
        if let Some(sa) = pod["serviceAccountName"].as_str() {
            assert!(accounts.contains(sa), "{file}: no ServiceAccount {sa}");
        }
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{file}");
        let ct = &containers[0];
        let csc = &ct["securityContext"];
        assert_eq!(csc["readOnlyRootFilesystem"], true, "{file}");
        assert_eq!(csc["allowPrivilegeEscalation"], false, "{file}");
        assert_eq!(
            csc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{file}"
        );
        assert_eq!(
            ct["ports"][0]["containerPort"], 9464,
            "{file}: the image's SP_METRICS_ADDR port"
        );
        let port_name = ct["ports"][0]["name"].clone();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(ct[probe]["httpGet"]["path"], path, "{file} {probe}");
            assert_eq!(ct[probe]["httpGet"]["port"], port_name, "{file} {probe}");
        }
        let res = &ct["resources"];
        for (kind, field) in [
            ("requests", "memory"),
            ("requests", "cpu"),
            ("limits", "memory"),
        ] {
            assert!(
                res[kind][field].is_string(),
                "{file}: resources.{kind}.{field}"
            );
        }
        let mi = |v: &Value| {
            v.as_str()
                .and_then(|s| s.strip_suffix("Mi"))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{file}: {v} is not NNMi"))
        };
        assert!(mi(&res["limits"]["memory"]) > mi(&res["requests"]["memory"]));
        let secret_name = &ct["envFrom"][0]["secretRef"]["name"];
        assert_eq!(*secret_name, secret["metadata"]["name"], "{file}");

        // The configuration the connector gets: the image's defaults, the container's
        // env and the Secret; `check` must accept it.
        let mut env: BTreeMap<String, String> = IMAGE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for e in ct["env"].as_array().unwrap() {
            env.insert(
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            );
        }
        for (k, v) in secret["stringData"].as_object().unwrap() {
            env.insert(k.clone(), v.as_str().unwrap().into());
        }
        let tag = env.get("SP_TASK_SYNC_TAG").cloned().unwrap_or_default();
        assert!(
            tags.insert(tag.clone()),
            "{file}: two Deployments on tag {tag:?}"
        );
        let out = run(&env, &["check"]);
        assert!(out.status.success(), "{file}: {}", text(&out));
        let provider = env["SP_TASK_SYNC_STORAGE_PROVIDER"].clone();
        let mounts = ct["volumeMounts"].as_array().cloned().unwrap_or_default();
        if provider == "local" {
            // The local store writes /data: a mounted claim, writable by the user.
            assert_eq!(mounts.len(), 1, "{file}");
            assert_eq!(mounts[0]["mountPath"], env["SP_TASK_SYNC_SAVE_TO"].as_str());
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mounts[0]["name"])
                .unwrap();
            let claim = volume["persistentVolumeClaim"]["claimName"]
                .as_str()
                .unwrap();
            assert!(claims.contains(claim), "{file}: no claim {claim}");
            assert_eq!(sc["fsGroup"], USER, "{file}: the volume must be writable");
        }
    }
}
