//! Starts real nats-server processes through the harness and talks raw NATS protocol to them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hru_local_nats::{NatsCluster, NatsServer};

/// A bare NATS protocol connection: enough to read INFO and make JetStream API requests.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    info: String,
    next_sid: u32,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).expect("read INFO");
        let mut writer = stream;
        writer
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            .unwrap();
        Raw {
            reader,
            writer,
            info,
            next_sid: 1,
        }
    }

    /// Publishes `payload` to `subject` with a reply inbox and returns the first reply.
    fn request(&mut self, subject: &str, payload: &str) -> String {
        let sid = self.next_sid;
        self.next_sid += 1;
        let inbox = format!("_INBOX.harness.{sid}");
        write!(
            self.writer,
            "SUB {inbox} {sid}\r\nPUB {subject} {inbox} {}\r\n{payload}\r\n",
            payload.len()
        )
        .unwrap();
        loop {
            let mut line = String::new();
            if let Err(err) = self.reader.read_line(&mut line) {
                panic!("no reply to {subject}: {err}");
            }
            let line = line.trim_end();
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n").unwrap();
            } else if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest.rsplit(' ').next().unwrap().parse().unwrap();
                let mut body = vec![0; len + 2];
                self.reader.read_exact(&mut body).unwrap();
                body.truncate(len);
                return String::from_utf8(body).unwrap();
            } else {
                assert!(!line.starts_with("-ERR"), "server error: {line}");
            }
        }
    }
}

#[test]
fn single_server_announces_jetstream_in_info() {
    let server = NatsServer::start().unwrap();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    let raw = Raw::connect(server.port());
    assert!(raw.info.starts_with("INFO {"), "{}", raw.info);
    assert!(raw.info.contains("\"jetstream\":true"), "{}", raw.info);
    assert!(server.is_healthy());
    assert!(server.pid().is_some());
    assert!(server.log_path().is_file());
}

#[test]
fn killed_server_restarts_on_same_port_with_acknowledged_data() {
    let mut server = NatsServer::start().unwrap();
    let port = server.port();
    let first_pid = server.pid().unwrap();
    let mut raw = Raw::connect(port);
    let created = raw.request(
        "$JS.API.STREAM.CREATE.T",
        r#"{"name":"T","subjects":["t.>"],"storage":"file","num_replicas":1}"#,
    );
    assert!(!created.contains("\"error\""), "{created}");
    let ack = raw.request("t.a", "hello");
    assert!(ack.contains("\"seq\":1"), "{ack}");
    drop(raw);

    server.kill().unwrap();
    assert_eq!(server.pid(), None);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port still open after SIGKILL"
    );

    server.restart().unwrap();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(first_pid));
    let mut raw = Raw::connect(port);
    assert!(raw.info.contains("\"jetstream\":true"), "{}", raw.info);
    let info = raw.request("$JS.API.STREAM.INFO.T", "");
    assert!(info.contains("\"messages\":1"), "{info}\n{}", server.log_tail());
}

#[test]
fn stopped_server_restarts() {
    let mut server = NatsServer::builder().sync_always(false).start().unwrap();
    let port = server.port();
    server.stop().unwrap();
    assert_eq!(server.pid(), None);
    assert!(!server.is_healthy());
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    assert!(server.is_healthy());
}

#[test]
fn dropping_a_server_kills_it_and_removes_its_store() {
    let server = NatsServer::start().unwrap();
    let port = server.port();
    let store = server.store_dir().to_path_buf();
    assert!(store.is_dir());
    drop(server);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!store.exists());
}

#[test]
fn three_node_cluster_is_healthy_and_replicates() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    for (i, node) in cluster.nodes().iter().enumerate() {
        assert!(node.is_healthy(), "node {i} not healthy:\n{}", node.log_tail());
        let raw = Raw::connect(node.port());
        assert!(raw.info.contains("\"jetstream\":true"), "{}", raw.info);
        assert!(raw.info.contains("\"cluster\":\"hru-test\""), "{}", raw.info);
        assert!(
            raw.info.contains(&format!("\"server_name\":\"{}\"", node_name(i))),
            "{}",
            raw.info
        );
    }

    // JetStream answers API requests only once the cluster has elected a meta leader; on a busy
    // machine that can take seconds after every node reports healthy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cluster.meta_leader().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no meta leader elected within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // R3 is refused by a non-clustered server, so this proves a real JetStream cluster.
    let mut raw = Raw::connect(cluster.node(0).port());
    let created = raw.request(
        "$JS.API.STREAM.CREATE.R",
        r#"{"name":"R","subjects":["r.>"],"storage":"file","num_replicas":3}"#,
    );
    assert!(!created.contains("\"error\""), "{created}");

    // Crash and restart a node that leads neither the meta group nor stream R: killing a leader
    // costs a 4-9 s election, during which requests about R simply go unanswered.
    let meta_leader = cluster.meta_leader().expect("meta leader");
    let stream_leader = stream_leader(&mut raw, "R");
    drop(raw);
    let victim = (0..3)
        .find(|&i| i != meta_leader && node_name(i) != stream_leader)
        .unwrap();
    let port = cluster.node(victim).port();
    cluster.kill(victim).unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    cluster.restart(victim).unwrap();
    assert_eq!(cluster.node(victim).port(), port);
    assert!(cluster.node(victim).is_healthy());
    assert_eq!(cluster.urls(), urls);
    let mut raw = Raw::connect(port);
    let info = raw.request("$JS.API.STREAM.INFO.R", "");
    assert!(info.contains("\"num_replicas\":3"), "{info}");
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// Asks for stream info until the stream reports a leader (it is elected just after creation).
fn stream_leader(raw: &mut Raw, stream: &str) -> String {
    for _ in 0..100 {
        let info = raw.request(&format!("$JS.API.STREAM.INFO.{stream}"), "");
        let json: serde_json::Value = serde_json::from_str(&info).unwrap();
        if let Some(leader) = json["cluster"]["leader"].as_str() {
            return leader.to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("stream {stream} has no leader");
}
