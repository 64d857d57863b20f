//! The compose deployment without Docker: `scripts/deploy-init.sh` generates keys, directory
//! (each node party with its own CA), broker authorization, the broker's certificates and a
//! paired victim device; a real nats-server enforces that authorization over TLS with the
//! generated certificate; the provisioner, two party nodes, the geofence and the gateway run from
//! the committed config files in `deploy/` (paths moved from the containers' to a temp dir), each
//! with its own nkey and the broker's CA; the victim's phone receives its alert with its own
//! identity.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hru_gateway::simulate::Simulator;
use hru_testkit::NatsServer;
use hru_tests::{NodeProcess, free_port, metric, request, succeeded};
use hru_wire::v1 as pb;
use pb::case_service_client::CaseServiceClient;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The victim device deploy-init pairs, and the simulated fleet's seed: tag 0 is this device's
/// perpetrator.
const DEVICE: &str = "vd-0";
const SEED: u64 = 3;

/// `hru` with the deployment's policies against `url`, trusting the broker's CA `ca`.
fn hru(url: &str, ca: &Path, policies: &Path, args: &[&str]) -> std::process::Output {
    Command::new(hru_tests::hru_bin())
        .arg("--policies")
        .arg(policies)
        .args(args)
        .env("HRU_NATS_URL", url)
        .env("HRU_NATS_CA", ca)
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
            "\"/data",
            &format!("\"{}", at(&format!("data-{}", file.replace('/', "-")))),
        )
        .replace("tls://nats-1:4222,tls://nats-2:4222,tls://nats-3:4222", url);
    for (from, port) in ports {
        text = text.replace(from, &format!("127.0.0.1:{port}"));
    }
    let out = base.join(file.replace('/', "-"));
    std::fs::write(&out, text).unwrap();
    out
}

/// Run `hru args` in the background, its output in `log`.
fn spawn(args: &[&str], url: &str, ca: &Path, log: &Path) -> std::process::Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(hru_tests::hru_bin())
        .args(args)
        .env("HRU_NATS_URL", url)
        .env("HRU_NATS_CA", ca)
        .stdout(Stdio::null())
        .stderr(out)
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
        .env("HRU_DEVICES", DEVICE)
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
            if path.is_file() {
                std::fs::copy(&path, secrets.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    // The broker as nats-1 of the generated cluster runs it: the generated authorization, and
    // clients over TLS only with nats-1's certificate from the broker's CA.
    let generated = base.join("generated/nats");
    let auth = std::fs::read_to_string(generated.join("auth.conf")).unwrap();
    let tls = format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  timeout: 5\n}}\n",
        generated.join("nats-1.pem"),
        generated.join("nats-1.key")
    );
    let nats = NatsServer::builder()
        .extra_config(&format!("{auth}\n{tls}"))
        .start()
        .unwrap();
    let url = format!("tls://localhost:{}", nats.port());
    let ca = secrets.join("nats-ca.pem");
    let policies = base.join("generated/policies");
    let hru = |args: &[&str]| hru(&url, &ca, &policies, args);

    // Anonymous clients are refused; the provisioner's nkey creates the streams and views.
    let anonymous = hru(&["log", "provision"]);
    assert!(!anonymous.status.success(), "a client without an nkey is refused");
    let keys = secrets.display().to_string();
    succeeded(&hru(&["log", "provision", "--keys", &keys]), "provision");

    // The case: the vendor fits tag 0 (its victim's phone is the paired device), police draw an
    // exclusion zone round the victim's home, each with its own nkey.
    let (tag, victim, home) = Simulator::new(SEED, 3, 1.0, 0).pairs().remove(0);
    assert_eq!(victim, DEVICE);
    let at = jiff::Timestamp::now().as_millisecond() - 60_000;
    let b64 = hru_tests::uuid_b64;
    let case = uuid::Uuid::from_u128(0xde91_0000);
    let fitted = hru_tests::tag_fitted_json(&case.to_string(), &tag, &b64(1), &victim, at);
    let zone = hru_tests::home_zone_json(&case.to_string(), &b64(2), &tag, home);
    for (party, json) in [("em-vendor", fitted), ("police-hru", zone)] {
        let file = base.join(format!("{party}.json"));
        std::fs::write(&file, json).unwrap();
        let identity = secrets.join(format!("{party}.secret")).display().to_string();
        let file = file.display().to_string();
        succeeded(
            &hru(&[
                "--identity",
                &identity,
                "append",
                "--party",
                party,
                "--keys",
                &keys,
                &file,
            ]),
            party,
        );
    }
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
        let log = base.join(format!("{party}.log"));
        let child = spawn(
            &["node", "run", "--config", &file.display().to_string()],
            &url,
            &ca,
            &log,
        );
        nodes.push((
            NodeProcess {
                party: party.to_owned(),
                port,
                child,
                log: Some(log),
                own_group: false,
            },
            metrics,
        ));
    }
    let geofence_metrics = free_port();
    let file = config("geofence.toml", base, &url, &[("0.0.0.0:9465", geofence_metrics)]);
    let geofence_log = base.join("geofence.log");
    let mut geofence = spawn(
        &["geofence", "run", "--config", &file.display().to_string()],
        &url,
        &ca,
        &geofence_log,
    );
    wait_for("the geofence to be ready", || {
        metric(geofence_metrics, "hru_geofence_ready") == 1
    });
    // Its view copies the log a moment behind: fixes evaluated before it holds the zone
    // would raise nothing.
    wait_for("the geofence to hold the tag and its zone", || {
        metric(geofence_metrics, "hru_geofence_zones") >= 1 && metric(geofence_metrics, "hru_geofence_tags") >= 1
    });
    let gateway_config = config("gateway.toml", base, &url, &[]);
    // An hour of the fleet, one fix per tag every 5 s, tag 0 driving to its victim's home.
    let gateway = hru(&[
        "gateway",
        "simulate",
        "--config",
        &gateway_config.display().to_string(),
        "--tags",
        "3",
        "--rate",
        "0.2",
        "--seconds",
        "3600",
        "--seed",
        &SEED.to_string(),
        "--approach",
        "0",
        "--fast",
    ]);
    assert!(
        gateway.status.success(),
        "the gateway publishes under its nkey: {}",
        String::from_utf8_lossy(&gateway.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(geofence_metrics, "hru_geofence_alerts_total") == 0 {
        assert!(
            Instant::now() < deadline,
            "the geofence stored no alert (failed {}; fixes {}, breaches {}); the gateway: {}; the geofence's log:\n{}",
            metric(geofence_metrics, "hru_geofence_alerts_failed_total"),
            metric(geofence_metrics, "hru_geofence_fixes_total"),
            metric(geofence_metrics, "hru_geofence_breaches_total"),
            String::from_utf8_lossy(&gateway.stderr),
            std::fs::read_to_string(&geofence_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(geofence_metrics, "hru_geofence_alerts_failed_total"), 0);

    // The victim's phone, with the identity deploy-init paired, receives it, verified.
    let received = succeeded(
        &hru(&["device", "alerts", "--device", DEVICE, "--keys", &keys]),
        "device alerts",
    );
    let alerts: Vec<serde_json::Value> = received.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    println!("the victim's phone received {alerts:?}");
    assert!(
        !alerts.is_empty() && alerts.iter().all(|a| a["kind"] == "BREACH_KIND_EXCLUSION"),
        "{alerts:?}"
    );

    // Each node answers over mutual TLS, logs the access through its own nkey and folds it
    // back from its view.
    let rt = hru_tests::runtime();
    let tls = base.join("generated/tls");
    for (node, metrics) in &nodes {
        let p = &node.party;
        let channel = rt.block_on(hru_tests::tls_channel(
            node,
            &tls.join(format!("{p}-ca.pem")),
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
    let verified = hru(&["--identity", &auditor, "audit", "verify"]);
    assert!(
        verified.status.success(),
        "audit verify as the auditor: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(!hru(&["audit", "verify"]).status.success());
}
