//! `hru node run` as a child process with certificates from `hru keys ca`/`cert`: a client
//! with a police certificate lists the case board; a Python grpcio client with a certificate
//! gets answers, without one or with another party's is refused, and reflection lists the
//! services; and `hru audit access --case` shows who
//! consulted the case, when and under which clause.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::process::{Command, Stdio};
use std::time::Duration;

use hru_tests::{World, free_port};
use hru_wire::v1 as pb;
use hru_wire::v1::case_service_client::CaseServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const AGREEMENT: &str = "../policies/cheshire-hru.toml";
const CASE: &str = "7d3c1a2b-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// Run the grpcio client (installed by scripts/tools.sh) against the node; its JSON answer.
fn python_client(world: &World, port: u16) -> serde_json::Value {
    let d = |rel: &str| hru_tests::path(world.dir.path(), rel);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".tools/venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/tools.sh", python.display());
    let stubs = d("python-stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let protos: Vec<String> = ["envelope", "events", "positions", "services"]
        .iter()
        .map(|p| root.join(format!("proto/hru/v1/{p}.proto")).display().to_string())
        .collect();
    let stubs_made = Command::new(&python)
        .args([
            "-m",
            "grpc_tools.protoc",
            "-I",
            &root.join("proto").display().to_string(),
        ])
        .args([format!("--python_out={stubs}"), format!("--grpc_python_out={stubs}")])
        .args(&protos)
        .output()
        .unwrap();
    assert!(
        stubs_made.status.success(),
        "protoc for Python: {}",
        String::from_utf8_lossy(&stubs_made.stderr)
    );
    let out = world.run(&[
        "keys",
        "cert",
        "--ca",
        &d("ca"),
        "--party",
        "em-vendor",
        "--out",
        &d("certs"),
    ]);
    assert!(out.status.success());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client.py");
    let run = Command::new(&python)
        .arg(script)
        .args([
            stubs,
            format!("127.0.0.1:{port}"),
            d("ca/ca.pem"),
            d("certs/police-hru.pem"),
            d("certs/police-hru.key"),
        ])
        .args([d("certs/em-vendor.pem"), d("certs/em-vendor.key")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "python client: {text}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_str(text.trim()).unwrap()
}

#[test]
fn a_node_process_serves_and_its_access_records_answer_who_saw_a_case() {
    let world = World::new(AGREEMENT, &hru_tests::CHESHIRE_PARTIES);
    let d = |rel: &str| hru_tests::path(world.dir.path(), rel);
    for args in [
        vec!["keys", "ca", "--out", &d("ca")],
        vec![
            "keys",
            "cert",
            "--ca",
            &d("ca"),
            "--party",
            "police-hru",
            "--host",
            "localhost",
            "--out",
            &d("certs"),
        ],
    ] {
        let out = world.run(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let referral = format!(
        r#"{{"caseId": "{CASE}", "referralReceived": {{"core": {{"subjectRef": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "behaviours": ["BEHAVIOUR_STALKING"], "area": "Nantwich", "receivedAtMs": "1795300000000"}}}}}}"#
    );
    assert!(
        world
            .append("police-hru", &world.event("referral.json", &referral))
            .status
            .success()
    );

    world.provision();
    let port = free_port();
    let config = format!(
        "party = \"police-hru\"\nkeys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\n\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        d("keys"),
        d("policies"),
        d("node-data"),
        d("ca/ca.pem"),
        d("certs/police-hru.pem"),
        d("certs/police-hru.key"),
    );
    std::fs::write(world.dir.path().join("node.toml"), config).unwrap();
    let mut node = Command::new(hru_tests::hru_bin())
        .args(["node", "run", "--config", &d("node.toml")])
        .env("HRU_NATS_URL", world.nats.url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let rt = hru_tests::runtime();
    let rows = rt.block_on(async {
        let ca = std::fs::read_to_string(d("ca/ca.pem")).unwrap();
        let cert = std::fs::read_to_string(d("certs/police-hru.pem")).unwrap();
        let key = std::fs::read_to_string(d("certs/police-hru.key")).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name("localhost");
        for _ in 0..100 {
            let Ok(endpoint) = Channel::from_shared(format!("https://127.0.0.1:{port}"))
                .unwrap()
                .tls_config(tls.clone())
            else {
                break;
            };
            if let Ok(channel) = endpoint.connect().await {
                let mut client = CaseServiceClient::new(channel);
                let request = hru_wire::request_as(
                    pb::ListCasesRequest {
                        view: "case-board".into(),
                        purpose: "risk-management".into(),
                    },
                    "DS Morgan",
                )
                .unwrap();
                if let Ok(r) = client.list_cases(request).await
                    && !r.get_ref().rows.is_empty()
                {
                    return r.into_inner().rows;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Vec::new()
    });
    let python = python_client(&world, port);
    node.kill().unwrap();
    node.wait().unwrap();
    assert_eq!(rows.len(), 1, "the node lists the case");
    assert_eq!(python["with_certificate"]["ok"], true, "{python}");
    assert_eq!(python["with_certificate"]["rows"], 1, "{python}");
    assert_eq!(python["without_certificate"]["ok"], false, "{python}");
    assert_eq!(
        python["with_another_partys_certificate"]["code"], "PERMISSION_DENIED",
        "{python}"
    );
    let services: Vec<&str> = python["reflection"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for want in hru_node::SERVICES.iter().copied().chain(["grpc.health.v1.Health"]) {
        assert!(services.contains(&want), "reflection lists {want}: {services:?}");
    }
    assert!(rows[0].json.contains("Nantwich"));

    let out = world.run(&["audit", "access", "--case", CASE, "--keys", &d("keys")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("DS Morgan (police-hru) CaseService/ListCases case-board — purpose risk-management, clause 10.1"),
        "{text}"
    );
}
