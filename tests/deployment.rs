//! The compose deployment without Docker: `scripts/deploy-init.sh` generates keys, directory,
//! broker authorization and certificates; a real nats-server enforces that authorization; the
//! provisioner, two party nodes, the geofence and the gateway run from the committed config files
//! in `deploy/` (paths moved from the containers' to a temp dir), each with its own nkey.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hru_testkit::NatsServer;
use hru_tests::{NodeProcess, free_port, metric, request};
use hru_wire::v1 as pb;
use pb::case_service_client::CaseServiceClient;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `hru` with the deployment's policies against `url`.
fn hru(url: &str, policies: &Path, args: &[&str]) -> std::process::Output {
    Command::new(hru_tests::hru_bin())
        .arg("--policies")
        .arg(policies)
        .args(args)
        .env("HRU_NATS_URL", url)
        .output()
        .unwrap()
}

/// A config file of `deploy/` with the container paths moved under `base`.
fn config(file: &str, base: &Path, url: &str, ports: &[(&str, u16)]) -> PathBuf {
    let mut text = std::fs::read_to_string(root().join("deploy").join(file)).unwrap();
    let at = |rel: &str| base.join(rel).display().to_string();
    text = text
        .replace("/run/secrets", &at("run-secrets"))
        .replace("/etc/hru/policies", &at("generated/policies"))
        .replace(
            "\"/data\"",
            &format!("{:?}", at(&format!("data-{}", file.replace('/', "-")))),
        )
        .replace("nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222", url);
    for (from, port) in ports {
        text = text.replace(from, &format!("127.0.0.1:{port}"));
    }
    let out = base.join(file.replace('/', "-"));
    std::fs::write(&out, text).unwrap();
    out
}

fn spawn(args: &[&str], url: &str) -> std::process::Child {
    Command::new(hru_tests::hru_bin())
        .args(args)
        .env("HRU_NATS_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_compose_topology_runs_under_the_generated_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let init = Command::new("bash")
        .arg(root().join("scripts/deploy-init.sh"))
        .arg(base.join("generated"))
        .env("HRU_BIN", hru_tests::hru_bin())
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "deploy-init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    // What compose mounts at /run/secrets.
    let secrets = base.join("run-secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    for from in ["keys", "tls"] {
        for entry in std::fs::read_dir(base.join("generated").join(from)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, secrets.join(path.file_name().unwrap())).unwrap();
        }
    }
    let auth = std::fs::read_to_string(base.join("generated/nats/auth.conf")).unwrap();
    let nats = NatsServer::builder().extra_config(&auth).start().unwrap();
    let url = nats.url();
    let policies = base.join("generated/policies");

    // Anonymous clients are refused; the provisioner's nkey creates the streams and views.
    let anonymous = hru(&url, &policies, &["log", "provision"]);
    assert!(!anonymous.status.success(), "a client without an nkey is refused");
    let provisioned = hru(
        &url,
        &policies,
        &["log", "provision", "--keys", &secrets.display().to_string()],
    );
    assert!(
        provisioned.status.success(),
        "provision: {}",
        String::from_utf8_lossy(&provisioned.stderr)
    );

    // Two nodes, the geofence and the gateway, from the committed configs.
    let mut nodes = Vec::new();
    for party in ["police-hru", "probation"] {
        let (port, metrics) = (free_port(), free_port());
        let file = config(
            &format!("nodes/{party}.toml"),
            base,
            &url,
            &[("0.0.0.0:7443", port), ("0.0.0.0:9464", metrics)],
        );
        let child = spawn(&["node", "run", "--config", &file.display().to_string()], &url);
        nodes.push((
            NodeProcess {
                party: party.to_owned(),
                port,
                child,
            },
            metrics,
        ));
    }
    let geofence_metrics = free_port();
    let file = config("geofence.toml", base, &url, &[("0.0.0.0:9465", geofence_metrics)]);
    let mut geofence = spawn(&["geofence", "run", "--config", &file.display().to_string()], &url);
    wait_for("the geofence to be ready", || {
        metric(geofence_metrics, "hru_geofence_ready") == 1
    });
    let gateway_config = config("gateway.toml", base, &url, &[]);
    let gateway = hru(
        &url,
        &policies,
        &[
            "gateway",
            "simulate",
            "--config",
            &gateway_config.display().to_string(),
            "--tags",
            "3",
            "--rate",
            "5",
            "--seconds",
            "2",
            "--fast",
        ],
    );
    assert!(
        gateway.status.success(),
        "the gateway publishes under its nkey: {}",
        String::from_utf8_lossy(&gateway.stderr)
    );
    wait_for("the geofence to evaluate the gateway's fixes", || {
        metric(geofence_metrics, "hru_geofence_fixes_total") > 0
    });

    // Each node answers over mutual TLS, logs the access through its own nkey and folds it
    // back from its view.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tls = base.join("generated/tls");
    for (node, metrics) in &nodes {
        let p = &node.party;
        let channel = rt.block_on(hru_tests::tls_channel(
            node,
            &tls.join("ca.pem"),
            &tls.join(format!("{p}.pem")),
            &tls.join(format!("{p}.key")),
        ));
        let view = if p == "police-hru" {
            "case-board"
        } else {
            "probation-caseload"
        };
        let purpose = if p == "police-hru" {
            "risk-management"
        } else {
            "offender-management"
        };
        rt.block_on(CaseServiceClient::new(channel).list_cases(request(
            pb::ListCasesRequest {
                view: view.into(),
                purpose: purpose.into(),
            },
            "officer-1",
        )))
        .unwrap_or_else(|s| panic!("{p}: {}", s.message()));
        wait_for("the access record to be folded", || {
            metric(*metrics, "hru_node_folded_through") > 0
        });
    }
    let _ = geofence.kill();
    let _ = geofence.wait();

    // The auditor verifies the whole log with its own nkey; without one the server refuses.
    let auditor = base.join("generated/keys/auditor.secret").display().to_string();
    let verified = hru(&url, &policies, &["--identity", &auditor, "audit", "verify"]);
    assert!(
        verified.status.success(),
        "audit verify as the auditor: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(!hru(&url, &policies, &["audit", "verify"]).status.success());
}
