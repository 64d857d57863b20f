//! Generated server configs — one node and each node of a 3-node cluster, with the generated
//! authorization included — are accepted by `nats-server -t`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_broker::server::{ClusterConfig, NodeConfig, render};
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
        };
        accepted(
            dir.path(),
            &format!("n{i}.conf"),
            &render(&node(&format!("n{i}"), Some(cluster))),
        );
    }
}
