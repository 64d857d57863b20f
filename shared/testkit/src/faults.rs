//! A network that fails on command: loopback TCP proxies on the routes between a cluster's
//! servers and on the connections from services to servers, each link of which a test cuts
//! and heals. A cut link holds its traffic, both ways, as a partitioned network does: nothing
//! is forwarded, new connections hang after their handshake, the peers see silence and time
//! out by their own clocks. Healing lets the held traffic through (TCP would retransmit it).
//!
//! A route connection is known by the server that dialled it: its route INFO names it
//! (`"server_name":"n<i>"`); until that has been read the connection is forwarded, so the
//! handshake itself passes and a cut holds what follows.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// One end of a link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    /// Cluster node `i` (`server_name` `n<i>`).
    Server(usize),
    /// A service (a node, the geofence, a writer) by name.
    Service(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Server(i) => write!(f, "n{i}"),
            End::Service(s) => f.write_str(s),
        }
    }
}

/// A link, its ends in order.
fn link(a: End, b: End) -> (End, End) {
    if a <= b { (a, b) } else { (b, a) }
}

#[derive(Default)]
struct State {
    cut: BTreeSet<(End, End)>,
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Route connections whose dialling server has been read from their handshake.
    identified: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Wait while `link` is cut; false once the network is stopped.
    fn wait_open(&self, link: &Option<(End, End)>) -> bool {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return false;
            }
            match link {
                Some(l) if state.cut.contains(l) => {
                    state = self
                        .changed
                        .wait_timeout(state, Duration::from_millis(100))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                _ => return true,
            }
        }
    }
}

/// Proxies whose links can be cut; every proxy stops when it is dropped.
pub struct FaultyNet {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Default for FaultyNet {
    fn default() -> Self {
        Self::new()
    }
}

/// How a proxy knows the link a connection is on.
#[derive(Clone)]
enum Known {
    /// Every connection is on this link.
    Link(End, End),
    /// A route to server `to`: the dialling server is read from the handshake.
    RouteTo(usize),
}

impl FaultyNet {
    /// A network with no proxies and nothing cut.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                identified: AtomicUsize::new(0),
            }),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// A proxy for server `to`'s routes, forwarding to its route port `target`: its port (the
    /// one `to` advertises to its peers).
    pub fn route_proxy(&self, to: usize, target: u16) -> std::io::Result<u16> {
        self.proxy(Known::RouteTo(to), target)
    }

    /// A proxy for `service`'s connections to server `to`, forwarding to its client port
    /// `target`: its port (the one `service` is given as `to`'s URL).
    pub fn client_proxy(&self, service: &str, to: usize, target: u16) -> std::io::Result<u16> {
        self.proxy(Known::Link(End::Service(service.to_owned()), End::Server(to)), target)
    }

    /// Cut the link between `a` and `b`: its traffic is held until it is healed.
    pub fn cut(&self, a: End, b: End) {
        self.shared.lock().cut.insert(link(a, b));
        self.shared.changed.notify_all();
    }

    /// Heal every cut link.
    pub fn heal_all(&self) {
        self.shared.lock().cut.clear();
        self.shared.changed.notify_all();
    }

    /// The links cut now.
    pub fn cuts(&self) -> Vec<(End, End)> {
        self.shared.lock().cut.iter().cloned().collect()
    }

    /// How many route connections have been told apart by the server that dialled them.
    pub fn routes_identified(&self) -> usize {
        self.shared.identified.load(Ordering::SeqCst)
    }

    fn proxy(&self, known: Known, target: u16) -> std::io::Result<u16> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = self.shared.clone();
        let handle = std::thread::spawn(move || {
            let mut connections: Vec<JoinHandle<()>> = Vec::new();
            while !shared.stopped() {
                match listener.accept() {
                    Ok((client, _)) => {
                        let shared = shared.clone();
                        let known = known.clone();
                        connections.push(std::thread::spawn(move || connection(&shared, known, client, target)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
                connections.retain(|c| !c.is_finished());
            }
            for c in connections {
                let _ = c.join();
            }
        });
        self.threads.lock().unwrap_or_else(PoisonError::into_inner).push(handle);
        Ok(port)
    }
}

impl Drop for FaultyNet {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.changed.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The server a route handshake names (`"server_name":"n<i>"`), once `seen` holds it.
fn dialled_by(seen: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"server_name\":\"n";
    let at = seen.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: Vec<u8> = seen[at..].iter().copied().take_while(u8::is_ascii_digit).collect();
    if seen.get(at + digits.len()) != Some(&b'"') {
        return None;
    }
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Forward one accepted connection to `target` until either side closes or the network stops.
fn connection(shared: &Arc<Shared>, known: Known, client: TcpStream, target: u16) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let link: Arc<Mutex<Option<(End, End)>>> = Arc::new(Mutex::new(match &known {
        Known::Link(a, b) => Some(link(a.clone(), b.clone())),
        Known::RouteTo(_) => None,
    }));
    let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = {
        let (shared, link) = (shared.clone(), link.clone());
        let route_to = match known {
            Known::RouteTo(to) => Some(to),
            Known::Link(..) => None,
        };
        std::thread::spawn(move || pump(&shared, &link, client_read, server, route_to))
    };
    pump(shared, &link, server_read, client, None);
    let _ = up.join();
}

/// Copy `from` to `to`, holding while the link is cut; for a route to server `to_server`, read
/// the dialling server from what passes first.
fn pump(
    shared: &Shared,
    link_of: &Mutex<Option<(End, End)>>,
    mut from: TcpStream,
    mut to: TcpStream,
    to_server: Option<usize>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = to.set_write_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen: Vec<u8> = Vec::new();
    let mut sniffing = to_server.is_some();
    loop {
        if shared.stopped() {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        if let Some(dst) = to_server
            && sniffing
        {
            seen.extend_from_slice(&buf[..n]);
            if let Some(src) = dialled_by(&seen) {
                *link_of.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(link(End::Server(src), End::Server(dst)));
                shared.identified.fetch_add(1, Ordering::SeqCst);
                sniffing = false;
            } else if seen.len() > 16 * 1024 {
                sniffing = false; // not a route handshake: forwarded as it is
            }
        }
        let current = link_of.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if !shared.wait_open(&current) || !write_all(shared, &mut to, &buf[..n]) {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Write all of `bytes`, waiting out a slow (or stopped) reader; false if the peer is gone or
/// the network stopped.
fn write_all(shared: &Shared, to: &mut TcpStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match to.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if shared.stopped() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dialling_server_is_read_from_its_route_info() {
        let info = br#"CONNECT {"echo":true}\r\nINFO {"server_id":"NABC","server_name":"n12","version":"2.11"}"#;
        assert_eq!(dialled_by(info), Some(12));
        assert_eq!(dialled_by(br#"INFO {"server_name":"n1"#), None, "not yet whole");
        assert_eq!(dialled_by(br#"INFO {"server_name":"other"}"#), None);
    }

    #[test]
    fn a_cut_link_holds_its_traffic_until_healed() {
        let echo = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = echo.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for s in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = s.try_clone().expect("clone");
                    let mut w = s;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        let net = FaultyNet::new();
        let proxied = net.client_proxy("writer", 0, port).expect("proxy");
        let mut c = TcpStream::connect(("127.0.0.1", proxied)).expect("connect");
        c.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        let mut got = [0u8; 5];
        c.write_all(b"hello").expect("write");
        c.read_exact(&mut got).expect("echoed while open");
        assert_eq!(&got, b"hello");
        net.cut(End::Service("writer".into()), End::Server(0));
        c.write_all(b"again").expect("write");
        assert!(c.read_exact(&mut got).is_err(), "held while cut");
        net.heal_all();
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        c.read_exact(&mut got).expect("let through once healed");
        assert_eq!(&got, b"again");
    }
}
