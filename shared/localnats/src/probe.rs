//! Small probes used while waiting for a server: the ports file, `/healthz`, and the log tail.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Ports a running server reported in its `<exe>_<pid>.ports` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ports {
    /// Client port.
    pub client: u16,
    /// HTTP monitoring port.
    pub monitoring: u16,
}

/// Reads the ports file of `pid` in `dir`, if it exists and parses yet.
pub(crate) fn read_ports(dir: &Path, pid: u32) -> Option<Ports> {
    let suffix = format!("_{pid}.ports");
    let file = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(&suffix))
        })?;
    parse_ports(&std::fs::read(file).ok()?)
}

/// Parses `{"nats":["nats://127.0.0.1:P"],"monitoring":["http://127.0.0.1:M"]}`.
fn parse_ports(raw: &[u8]) -> Option<Ports> {
    let json: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let port = |key: &str| -> Option<u16> {
        let url = json.get(key)?.get(0)?.as_str()?;
        url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
    };
    Some(Ports {
        client: port("nats")?,
        monitoring: port("monitoring")?,
    })
}

/// GETs `http://127.0.0.1:<port><path>` with HTTP/1.0; returns (status, body).
pub(crate) fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The last `lines` lines of a log file (or a note that it could not be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(raw) => {
            let text = String::from_utf8_lossy(&raw);
            // The server logs every failed /healthz poll; those lines would bury the real cause.
            let all: Vec<&str> = text
                .lines()
                .filter(|line| !line.contains("Healthcheck failed"))
                .collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(could not read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ports_file_nats_server_writes() {
        let raw = br#"{"nats":["nats://127.0.0.1:46741"],"monitoring":["http://127.0.0.1:45647"]}"#;
        assert_eq!(
            parse_ports(raw),
            Some(Ports {
                client: 46741,
                monitoring: 45647
            })
        );
        assert_eq!(parse_ports(br#"{"nats":["nats://127.0.0.1:1"]}"#), None);
        assert_eq!(parse_ports(b"{\"nats\":[\"nats://127.0"), None);
    }
}
