//! Dev-only test support: the local nats-server processes of `hru-local-nats` under the names
//! the tests use, free loopback ports, reading a served metric, and a network whose links a
//! test cuts ([`faults`]). Only ever a dev-dependency (a layout test checks it).

pub mod faults;

pub use hru_local_nats::{
    ClusterPorts, LocalNatsError as TestkitError, MIN_VERSION, NatsCluster, NatsServer, NatsServerBinary,
    NatsServerBuilder, OwnDisk, node_name, running_as_root,
};

/// A free loopback TCP port.
#[allow(clippy::expect_used)] // test support: no port is a broken machine
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The value of metric `name` served on `GET /metrics` at loopback `port` (0 while nothing
/// answers or the metric is absent).
pub fn metric(port: u16, name: &str) -> u64 {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    // The server keeps connections alive unless told otherwise.
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
