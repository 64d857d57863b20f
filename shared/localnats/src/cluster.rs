//! A JetStream cluster of `nats-server` nodes on loopback, for replication and failover tests.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::probe;
use crate::server::{ClusterSpec, NatsServer, READY_TIMEOUT};
use crate::{CutReport, LocalNatsError, NatsServerBinary};

/// Cluster name used in every generated config.
const CLUSTER_NAME: &str = "hru-test";
/// Whole-cluster start attempts (a pre-picked free port can be taken before the node binds it).
const START_ATTEMPTS: usize = 3;

/// `n` JetStream nodes (`n0`, `n1`, ...) routed to each other, each with its own store; all killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes (3 for R3) and waits until every node's `/healthz` is 200 (meta leader elected).
    pub fn start(n: usize) -> Result<Self, LocalNatsError> {
        Self::start_with(n, true)
    }

    /// Starts `n` nodes; `sync_always` false leaves the server's default sync interval.
    pub fn start_with(n: usize, sync_always: bool) -> Result<Self, LocalNatsError> {
        if n == 0 {
            return Err(LocalNatsError::Invalid("a cluster needs at least one node".into()));
        }
        let bin = NatsServerBinary::find()?;
        let mut attempt = 1;
        loop {
            match Self::try_start(&bin, n, sync_always) {
                // Exited during startup is how a port taken between picking and binding shows up.
                Err(LocalNatsError::Exited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                other => return other,
            }
        }
    }

    fn try_start(bin: &NatsServerBinary, n: usize, sync_always: bool) -> Result<Self, LocalNatsError> {
        let ports = ClusterPorts::pick(n)?;
        Self::start_on(bin, &ports, None, sync_always, None, false)
    }

    /// Starts `ports.client.len()` nodes on `ports`, peers reaching node `i`'s routes at
    /// `reach[i]` (a loopback port forwarding to `ports.route[i]`, such as a fault-injecting
    /// proxy), which the node advertises; clients are told of no server but the one they
    /// dial. With `disk` set, each node's store is on its own disk of that many bytes (a tmpfs:
    /// needs root). Each node runs in a process group of its own, so that a Ctrl-C meant for
    /// the test leaves them to the test to heal and stop. Waits until every node is healthy.
    pub fn start_reached(
        ports: &ClusterPorts,
        reach: &[u16],
        sync_always: bool,
        disk: Option<u64>,
    ) -> Result<Self, LocalNatsError> {
        if ports.client.is_empty() || reach.len() != ports.client.len() || ports.route.len() != ports.client.len() {
            return Err(LocalNatsError::Invalid(
                "a cluster needs at least one node, and one client, route and reached port per node".into(),
            ));
        }
        Self::start_on(&NatsServerBinary::find()?, ports, Some(reach), sync_always, disk, true)
    }

    fn start_on(
        bin: &NatsServerBinary,
        ports: &ClusterPorts,
        reach: Option<&[u16]>,
        sync_always: bool,
        disk: Option<u64>,
        own_groups: bool,
    ) -> Result<Self, LocalNatsError> {
        let (client_ports, route_ports) = (&ports.client, &ports.route);
        let n = client_ports.len();
        let dialled: Vec<u16> = reach.map_or_else(|| route_ports.clone(), <[u16]>::to_vec);
        let mut nodes = Vec::with_capacity(n);
        for (i, (&client, &route)) in client_ports.iter().zip(route_ports).enumerate() {
            let spec = ClusterSpec {
                name: CLUSTER_NAME.to_owned(),
                listen: route,
                routes: (0..n).filter(|&j| j != i).map(|j| dialled[j]).collect(),
                reached_at: reach.map(|r| r[i]),
            };
            let mut node = NatsServer::new(bin.path.clone(), sync_always, Some(node_name(i)), client, Some(spec))?;
            if let Some(bytes) = disk {
                node.on_own_disk(bytes)?;
            }
            if own_groups {
                node.in_own_group();
            }
            nodes.push(node);
        }
        // Spawn all before waiting: no node is healthy until a quorum has elected a meta leader.
        for node in &mut nodes {
            node.spawn()?;
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for node in &mut nodes {
            node.wait_ready(deadline)?;
        }
        Ok(Self { nodes })
    }

    /// Client URLs of all nodes, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// All nodes, in order.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Node `i` (panics if out of range, like indexing).
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Index of the JetStream meta leader as seen by the first running node's `/jsz`, if one is known.
    pub fn meta_leader(&self) -> Option<usize> {
        let leader = self.nodes.iter().find_map(|node| {
            let (status, body) = probe::http_get(node.monitoring_port()?, "/jsz").ok()?;
            if status != 200 {
                return None;
            }
            let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
            Some(jsz.get("meta_cluster")?.get("leader")?.as_str()?.to_owned())
        })?;
        (0..self.nodes.len()).find(|&i| node_name(i) == leader)
    }

    /// Index of the JetStream meta leader as node `i` sees it, if it answers and knows one.
    pub fn meta_leader_seen_by(&self, i: usize) -> Option<usize> {
        let (status, body) = probe::http_get(self.nodes.get(i)?.monitoring_port()?, "/jsz").ok()?;
        if status != 200 {
            return None;
        }
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        let leader = jsz.get("meta_cluster")?.get("leader")?.as_str()?.to_owned();
        (0..self.nodes.len()).find(|&j| node_name(j) == leader)
    }

    /// Each node's own copy of `stream` as its `/jsz` reports it: (messages, first sequence,
    /// last sequence), or `None` for a node that does not answer or holds no copy.
    pub fn stream_copies(&self, stream: &str) -> Vec<Option<(u64, u64, u64)>> {
        self.nodes
            .iter()
            .map(|node| {
                let (status, body) =
                    probe::http_get(node.monitoring_port()?, "/jsz?accounts=true&streams=true").ok()?;
                if status != 200 {
                    return None;
                }
                let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
                jsz.get("account_details")?.as_array()?.iter().find_map(|account| {
                    let detail = account
                        .get("stream_detail")?
                        .as_array()?
                        .iter()
                        .find(|s| s.get("name").and_then(serde_json::Value::as_str) == Some(stream))?;
                    let state = detail.get("state")?;
                    let n = |k: &str| state.get(k).and_then(serde_json::Value::as_u64);
                    Some((n("messages")?, n("first_seq")?, n("last_seq")?))
                })
            })
            .collect()
    }

    /// SIGKILLs node `i` (panics if out of range).
    pub fn kill(&mut self, i: usize) -> Result<(), LocalNatsError> {
        self.nodes[i].kill()
    }

    /// Restarts node `i` on its same ports and store and waits until it is healthy (panics if out of range).
    ///
    /// Healthy means the node reached a meta leader; if the killed node led a stream, that stream
    /// may still be electing a new leader (4-9 s) and requests about it go unanswered meanwhile.
    pub fn restart(&mut self, i: usize) -> Result<(), LocalNatsError> {
        self.nodes[i].restart()
    }

    /// Restarts the nodes `which` together on their ports and stores (what a quorum's restart
    /// needs, since no node is healthy until a meta leader is elected) and waits up to `within`
    /// until each is healthy. One not healthy by then is left running, as an operator leaves a
    /// recovering server, and the error names the first (panics if one is out of range).
    pub fn restart_together(&mut self, which: &[usize], within: Duration) -> Result<(), LocalNatsError> {
        for &i in which {
            self.nodes[i].kill()?;
        }
        for &i in which {
            self.nodes[i].spawn()?;
        }
        let deadline = Instant::now() + within;
        let mut first = Ok(());
        for &i in which {
            if let Err(e) = self.nodes[i].poll_ready(deadline)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Cuts the power of the nodes `which` at once: each is SIGKILLed and reaped, then each
    /// own disk loses what was not fsynced. Left down; what each disk lost, in order. Only
    /// nodes started on their own disks can lose power (panics if one is out of range).
    pub fn cut_power(&mut self, which: &[usize]) -> Result<Vec<CutReport>, LocalNatsError> {
        if let Some(&i) = which.iter().find(|&&i| self.nodes[i].disk().is_none()) {
            return Err(LocalNatsError::Invalid(format!(
                "{} has no disk of its own to cut the power of; start the cluster with one",
                node_name(i)
            )));
        }
        for &i in which {
            self.nodes[i].kill()?;
        }
        which
            .iter()
            .map(|&i| {
                self.nodes[i]
                    .disk()
                    .map_or(Ok(CutReport::default()), crate::OwnDisk::cut_power)
            })
            .collect()
    }
}

/// `server_name` of node `i`.
pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// The loopback ports of a cluster's nodes, picked free before it starts.
#[derive(Debug, Clone)]
pub struct ClusterPorts {
    /// Each node's client port.
    pub client: Vec<u16>,
    /// Each node's route port.
    pub route: Vec<u16>,
}

impl ClusterPorts {
    /// Free client and route ports for `n` nodes.
    pub fn pick(n: usize) -> Result<Self, LocalNatsError> {
        let mut ports = free_ports(2 * n)?;
        let route = ports.split_off(n);
        Ok(Self { client: ports, route })
    }
}

/// `count` distinct free loopback ports: bind them all at once, read them, release them.
fn free_ports(count: usize) -> Result<Vec<u16>, LocalNatsError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(LocalNatsError::io("binding 127.0.0.1:0 to pick free ports"))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(LocalNatsError::io("reading a picked port"))
}
