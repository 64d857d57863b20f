//! Power cuts on a 3-server cluster, each server's store on a disk that loses every write not
//! fsynced: what the backbone's `sync_interval: always` is for. An R3 stream takes acknowledged
//! publishes, the power of one, two or all three servers is cut at once, they restart together,
//! and the stream is counted.
//!
//! With `always`, every acknowledged publish is there after every cut. With the server's default
//! (data fsynced every two minutes), a cut of the whole cluster loses acknowledged publishes:
//! the evidence for keeping `always`. Needs root (a tmpfs and a FUSE mount per server, and
//! `/dev/fuse`); skips with a message when not root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use hru_testkit::{ClusterPorts, NatsCluster, TestkitError};

/// Each server's own disk: the streams here are small.
const DISK_BYTES: u64 = 1 << 30;
/// Acknowledged publishes before the cut.
const PUBLISHES: u64 = 300;
/// How long the restarted servers are given to become healthy.
const RESTART_WITHIN: Duration = Duration::from_secs(30);
/// How long the restarted cluster is given to answer for the stream.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// What one cut showed.
#[derive(Debug)]
struct Cut {
    acknowledged: u64,
    /// Unsynced bytes the cut took from the servers' disks.
    lost_bytes: u64,
    /// Whether the servers were healthy within the kit's wait after restarting.
    healthy: bool,
    /// What the restarted cluster says of the stream.
    kept: Kept,
}

/// What a restarted cluster says of the stream.
#[derive(Debug, PartialEq, Eq)]
enum Kept {
    /// It holds this many messages.
    Messages(u64),
    /// It does not exist: the cluster forgot it was created.
    Gone,
    /// No answer within [`ANSWER_WITHIN`].
    NoAnswer,
}

/// Start a cluster (`None` when not root: its disks may not be mounted), publish, cut `cut`
/// servers' power, restart them together and count.
fn power_cut(sync_always: bool, cut: usize) -> Option<Cut> {
    let ports = ClusterPorts::pick(3).unwrap();
    let mut cluster = match NatsCluster::start_reached(&ports, &ports.route.clone(), sync_always, Some(DISK_BYTES)) {
        Ok(cluster) => cluster,
        Err(e @ TestkitError::NoOwnDisk { .. }) if !hru_testkit::running_as_root() => {
            eprintln!("skipped (not root): {e}");
            return None;
        }
        Err(e) => panic!("the cluster starts: {e}"),
    };
    let urls = cluster.urls();
    let rt = hru_tests::runtime();
    let acknowledged = rt.block_on(async {
        let js = jetstream(&urls).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "CUT".into(),
            subjects: vec!["cut.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("an R3 stream");
        let mut acknowledged = 0;
        for i in 0..PUBLISHES {
            let ack = js
                .publish(format!("cut.{i}"), vec![7u8; 512].into())
                .await
                .expect("publish");
            if ack.await.is_ok() {
                acknowledged += 1;
            }
        }
        acknowledged
    });
    let which: Vec<usize> = (0..cut).collect();
    let lost_bytes = cluster
        .cut_power(&which)
        .expect("cut the power")
        .iter()
        .map(|c| c.bytes)
        .sum();
    let healthy = cluster.restart_together(&which, RESTART_WITHIN).is_ok();
    let kept = rt.block_on(async {
        use async_nats::jetstream::context::GetStreamErrorKind;
        let deadline = Instant::now() + ANSWER_WITHIN;
        while Instant::now() < deadline {
            let asked = tokio::time::timeout(Duration::from_secs(5), async {
                jetstream(&urls).await.get_stream("CUT").await
            });
            match asked.await {
                Ok(Ok(mut stream)) => {
                    if let Ok(info) = stream.info().await {
                        return Kept::Messages(info.state.messages);
                    }
                }
                Ok(Err(e))
                    if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                        if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
                {
                    return Kept::Gone;
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Kept::NoAnswer
    });
    Some(Cut {
        acknowledged,
        lost_bytes,
        healthy,
        kept,
    })
}

async fn jetstream(urls: &[String]) -> async_nats::jetstream::Context {
    let servers: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
    let nats = async_nats::connect(servers).await.expect("connect");
    async_nats::jetstream::new(nats)
}

/// With `always`, a power cut of one, two or all three servers keeps every acknowledged
/// publish, and the cluster comes back.
#[test]
fn with_sync_always_every_acknowledged_publish_survives_any_power_cut() {
    for cut in 1..=3 {
        let Some(result) = power_cut(true, cut) else { return };
        eprintln!("always, {cut} cut: {result:?}");
        assert_eq!(result.acknowledged, PUBLISHES, "{result:?}");
        assert!(result.lost_bytes > 0, "the cut took nothing back: {result:?}");
        assert!(result.healthy, "{cut} servers' power cut: {result:?}");
        assert_eq!(
            result.kept,
            Kept::Messages(result.acknowledged),
            "{cut} servers' power cut: {result:?}"
        );
    }
}

/// With the server's default sync, a power cut of the whole cluster takes back the writes of
/// the last moments: acknowledged publishes are lost (here the stream itself is forgotten, its
/// creation having been as unsynced as its messages).
#[test]
fn with_the_default_sync_a_whole_cluster_power_cut_loses_acknowledged_publishes() {
    // One and two servers' cuts, for the record: a majority still holding a copy may hand it on.
    for cut in 1..=2 {
        let Some(result) = power_cut(false, cut) else { return };
        eprintln!("default, {cut} cut: {result:?}");
    }
    let Some(result) = power_cut(false, 3) else { return };
    eprintln!("default, 3 cut: {result:?}");
    assert!(result.lost_bytes > 0, "the cut took nothing back: {result:?}");
    assert!(result.healthy, "the cluster restarts: {result:?}");
    assert!(
        matches!(result.kept, Kept::Gone) || matches!(result.kept, Kept::Messages(kept) if kept < result.acknowledged),
        "every acknowledged publish survived a whole-cluster power cut with the default sync: {result:?}"
    );
}
