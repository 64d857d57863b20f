//! Generated server configs — one node and each node of a 3-node cluster, with the generated
//! authorization included, with and without TLS — are accepted by `nats-server -t`; on live
//! servers with TLS routes, a server without a certificate from the cluster CA cannot join as
//! a route, and a client without TLS cannot connect.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hru_broker::server::{ClusterConfig, NodeConfig, ServerTls, render};
use hru_testkit::NatsServerBinary;

fn accepted(dir: &std::path::Path, name: &str, text: &str) {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let bin = NatsServerBinary::find().unwrap();
    let out = std::process::Command::new(&bin.path)
        .arg("-t")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.contains("is valid"),
        "{name}: {said}\n{text}"
    );
}

#[test]
fn single_node_and_cluster_configs_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("auth.conf"),
        "accounts: { HRU: { jetstream: enabled, users: [ { user: \"x\", password: \"y\" } ] } }\n",
    )
    .unwrap();
    let node = |name: &str, cluster: Option<ClusterConfig>| NodeConfig {
        server_name: Some(name.into()),
        listen: "127.0.0.1:4222".into(),
        http: Some("127.0.0.1:8222".into()),
        store_dir: dir.path().join(name).display().to_string(),
        sync_always: true,
        cluster,
        authorization: Some("auth.conf".into()),
        ..Default::default()
    };
    accepted(dir.path(), "single.conf", &render(&node("single", None)));
    for i in 1..=3 {
        let routes = (1..=3)
            .filter(|j| *j != i)
            .map(|j| format!("nats-route://n{j}:6222"))
            .collect();
        let cluster = ClusterConfig {
            name: "hru".into(),
            listen: "127.0.0.1:6222".into(),
            routes,
            tls: None,
            advertise: None,
            no_advertise: false,
        };
        accepted(
            dir.path(),
            &format!("n{i}.conf"),
            &render(&node(&format!("n{i}"), Some(cluster))),
        );
    }
}

/// A CA, and a certificate from it for `localhost` and 127.0.0.1 (server and client use),
/// written into `dir` as ca.pem, `name`.pem and `name`.key.
fn certificates(dir: &Path, names: &[&str]) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "cluster CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem(), ca_key).unwrap();
    for name in names {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, *name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// A nats-server running `config`, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, name: &str, config: &NodeConfig) -> Server {
    let file = dir.join(format!("{name}.conf"));
    std::fs::write(&file, render(config)).unwrap();
    let bin = NatsServerBinary::find().unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Server(
        Command::new(&bin.path)
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The servers `GET /routez` on `http_port` reports routes to (a route is a pool of
/// connections; None while it does not answer).
fn routes(http_port: u16) -> Option<std::collections::BTreeSet<String>> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", http_port)).ok()?;
    stream.write_all(b"GET /routez HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let body = &text[text.find("\r\n\r\n")? + 4..];
    let routez = serde_json::from_str::<serde_json::Value>(body).ok()?;
    Some(
        routez["routes"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|r| r["remote_name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

#[test]
fn a_server_without_the_cluster_certificate_cannot_join_and_clients_need_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d, &["n1", "n2", "intruder"]);
    // The intruder's certificate comes from a CA of its own.
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    certificates(&other, &["intruder"]);
    let port = hru_testkit::free_port;
    let (c1, c2, c3) = (port(), port(), port());
    let (r1, r2, r3) = (port(), port(), port());
    let (h1, h2, h3) = (port(), port(), port());
    let tls = |name: &str, base: &Path| ServerTls {
        cert: base.join(format!("{name}.pem")).display().to_string(),
        key: base.join(format!("{name}.key")).display().to_string(),
        ca: base.join("ca.pem").display().to_string(),
        verify: false,
    };
    let node = |name: &str, client: u16, route: u16, http: u16, to: &[u16], tls: Option<ServerTls>| NodeConfig {
        server_name: Some(name.into()),
        listen: format!("127.0.0.1:{client}"),
        http: Some(format!("127.0.0.1:{http}")),
        store_dir: d.join(name).display().to_string(),
        sync_always: true,
        tls: tls.clone(),
        cluster: Some(ClusterConfig {
            name: "hru".into(),
            listen: format!("127.0.0.1:{route}"),
            routes: to.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect(),
            tls,
            advertise: None,
            no_advertise: false,
        }),
        ..Default::default()
    };
    let just = |names: &[&str]| Some(names.iter().map(|n| (*n).to_owned()).collect());
    // Without TLS on routes (the configuration generated before), any server that reaches the
    // route port joins the cluster.
    {
        let (c0, r0, h0) = (port(), port(), port());
        let (c5, r5, h5) = (port(), port(), port());
        // Its only configured route leads nowhere: the joiner is not invited.
        let _open = start(d, "open", &node("open", c0, r0, h0, &[port()], None));
        let _joiner = start(d, "joiner", &node("joiner", c5, r5, h5, &[r0], None));
        let deadline = Instant::now() + Duration::from_secs(20);
        while routes(h0) != just(&["joiner"]) {
            assert!(
                Instant::now() < deadline,
                "a server without TLS routes did not take the joiner: {:?}",
                routes(h0)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let n1 = node("n1", c1, r1, h1, &[r2], Some(tls("n1", d)));
    let n2 = node("n2", c2, r2, h2, &[r1], Some(tls("n2", d)));
    for (name, config) in [("n1", &n1), ("n2", &n2)] {
        accepted(d, &format!("{name}-tls.conf"), &render(config));
    }
    let _s1 = start(d, "n1", &n1);
    let _s2 = start(d, "n2", &n2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while routes(h1) != just(&["n2"]) {
        assert!(
            Instant::now() < deadline,
            "n1 and n2 never routed to each other: {:?}",
            routes(h1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Two intruders route to n1: one with no TLS at all, one with a certificate from another CA.
    let _plain = start(d, "plain", &node("plain", c3, r3, h3, &[r1], None));
    let (c4, r4, h4) = (port(), port(), port());
    let _stranger = start(
        d,
        "stranger",
        &node("stranger", c4, r4, h4, &[r1], Some(tls("intruder", &other))),
    );
    // Both intruders are up (their monitoring answers) and have had time to try their route.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (name, http) in [("plain", h3), ("stranger", h4)] {
        while routes(http).is_none() {
            assert!(
                Instant::now() < deadline,
                "{name} never started: {}",
                std::fs::read_to_string(d.join(format!("{name}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        routes(h1),
        just(&["n2"]),
        "n1 routes only to n2: {}",
        std::fs::read_to_string(d.join("n1.log")).unwrap_or_default()
    );
    assert_eq!(routes(h3), just(&[]), "the plain intruder has no route");
    assert_eq!(
        routes(h4),
        just(&[]),
        "the intruder with another CA's certificate has no route"
    );

    // Clients: without TLS refused; with the CA, connected.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Without the CA (the server's certificate is then not trusted), and so without TLS.
        let plain = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(format!("nats://127.0.0.1:{c1}"));
        assert!(
            tokio::time::timeout(Duration::from_secs(5), plain)
                .await
                .map_or(true, |r| r.is_err()),
            "a client without the CA is refused"
        );
        let client = async_nats::ConnectOptions::new()
            .add_root_certificates(d.join("ca.pem"))
            .require_tls(true)
            .connect(format!("tls://127.0.0.1:{c1}"))
            .await
            .expect("a TLS client trusting the CA connects");
        client.flush().await.unwrap();
    });
}
