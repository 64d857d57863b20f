//! What a 3-node JetStream cluster keeps on disk of a message once it has expired or been
//! erased: every file under every replica's store directory (message blocks, indexes and the
//! stream's Raft log) is searched for the message's bytes. Retention's crypto-shredding depends
//! on the answer (decision 010).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use hru_testkit::NatsCluster;

/// Every file under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

/// Where on the cluster's disks `marker` still is: (replica, path below its store directory).
fn where_is(cluster: &NatsCluster, marker: &str) -> Places {
    let mut at = Vec::new();
    for (i, node) in cluster.nodes().iter().enumerate() {
        for path in files_holding(node.store_dir(), marker.as_bytes()) {
            let below = path.strip_prefix(node.store_dir()).unwrap_or(&path);
            at.push((i, below.display().to_string()));
        }
    }
    at
}

fn payload(marker: &str) -> bytes::Bytes {
    // A grant-sized message: the marker, then sealed-key-like filler.
    let mut p = marker.as_bytes().to_vec();
    p.resize(200, b'.');
    p.into()
}

/// Files on the cluster's disks: (replica, path below its store directory).
type Places = Vec<(usize, String)>;

/// Where `marker` is on the cluster's disks, split into the stream's message blocks and the
/// rest (the stream's Raft log under `$SYS/_js_`).
fn split(cluster: &NatsCluster, marker: &str) -> (Places, Places) {
    where_is(cluster, marker)
        .into_iter()
        .partition(|(_, path)| path.contains("/streams/"))
}

async fn until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < within, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

/// Measured on nats-server 2.15.1, R3 file store (decision 010):
/// - a message expired by max age stays, bytes and all, in its message block on every replica
///   for as long as a younger message in the same block lives; the block file is removed once
///   every message in it has expired;
/// - a message deleted with the server's erase (`$JS.API.STREAM.MSG.DELETE`, `no_erase`
///   false) is overwritten in its block on every replica at once;
/// - both stay in the stream's Raft log on every replica until the log is compacted after a
///   snapshot (every 2–3 minutes): `HRU_ERASURE_WATCH_S=240` watches that long and prints when
///   they go.
#[test]
fn expired_and_erased_messages_on_every_replicas_disk() {
    let watch = std::env::var("HRU_ERASURE_WATCH_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let cluster = NatsCluster::start(3).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(cluster.urls()[0].clone()).await.unwrap();
        let js = jetstream::new(client);
        let config = |name: &str, max_age: Duration| stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{}.>", name.to_lowercase())],
            storage: stream::StorageType::File,
            num_replicas: 3,
            max_age,
            ..Default::default()
        };

        // Expiry by max age: an older message expires while a younger one in the same block
        // is still live, then the younger expires too.
        js.create_stream(config("AGED", Duration::from_secs(3))).await.unwrap();
        js.publish("aged.old", payload("OLD-GRANT-MARKER"))
            .await
            .unwrap()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        js.publish("aged.young", payload("YOUNG-GRANT-MARKER"))
            .await
            .unwrap()
            .await
            .unwrap();
        let aged = js.get_stream("AGED").await.unwrap();
        let messages = async |s: &jetstream::stream::Stream| s.get_info().await.unwrap().state.messages;
        until("the older message expires", Duration::from_secs(10), async || {
            messages(&aged).await == 1
        })
        .await;
        let (blocks, _) = split(&cluster, "OLD-GRANT-MARKER");
        assert_eq!(
            blocks
                .iter()
                .map(|(i, _)| *i)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            3,
            "expired, yet still in its block on every replica beside a live message: {blocks:?}"
        );
        until("the younger message expires", Duration::from_secs(10), async || {
            messages(&aged).await == 0
        })
        .await;
        let removed = until("the emptied block is removed", Duration::from_secs(10), async || {
            split(&cluster, "OLD-GRANT-MARKER").0.is_empty() && split(&cluster, "YOUNG-GRANT-MARKER").0.is_empty()
        })
        .await;
        println!("max age: the block went {removed:?} after its last message expired");

        // Erasure: one message deleted with the server's erase, its neighbour kept.
        js.create_stream(config("ERASED", Duration::ZERO)).await.unwrap();
        let ack = js
            .publish("erased.one", payload("ERASED-GRANT-MARKER"))
            .await
            .unwrap()
            .await
            .unwrap();
        js.publish("erased.two", payload("KEPT-GRANT-MARKER"))
            .await
            .unwrap()
            .await
            .unwrap();
        let erased = js.get_stream("ERASED").await.unwrap();
        assert!(erased.delete_message(ack.sequence).await.unwrap());
        let overwritten = until(
            "the erased message is overwritten on every replica",
            Duration::from_secs(5),
            async || split(&cluster, "ERASED-GRANT-MARKER").0.is_empty(),
        )
        .await;
        let (kept, _) = split(&cluster, "KEPT-GRANT-MARKER");
        assert_eq!(kept.len(), 3, "its neighbour is untouched on every replica: {kept:?}");
        println!("erase: overwritten on every replica within {overwritten:?}");

        // The Raft log still holds both on every replica until it is compacted.
        for marker in ["OLD-GRANT-MARKER", "ERASED-GRANT-MARKER"] {
            let (_, raft) = split(&cluster, marker);
            println!("{marker} in the Raft log: {raft:?}");
        }
        if let Some(watch) = watch {
            let start = Instant::now();
            let mut gone = std::collections::BTreeMap::new();
            while start.elapsed() < watch && gone.len() < 2 {
                for marker in ["OLD-GRANT-MARKER", "ERASED-GRANT-MARKER"] {
                    if !gone.contains_key(marker) && where_is(&cluster, marker).is_empty() {
                        gone.insert(marker, start.elapsed());
                        println!(
                            "{marker}: gone from every file of every replica after {:?}",
                            start.elapsed()
                        );
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            for marker in ["OLD-GRANT-MARKER", "ERASED-GRANT-MARKER"] {
                if !gone.contains_key(marker) {
                    println!("{marker}: still at {:?} after {watch:?}", where_is(&cluster, marker));
                }
            }
        }
    });
}
