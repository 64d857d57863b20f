//! One `nats-server` process with JetStream: its temp dir, config, log, lifecycle and readiness.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::probe::{self, Ports};
use crate::{LocalNatsError, NatsServerBinary};

/// How long a start or restart may take before it fails with [`LocalNatsError::NotReady`].
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`NatsServer::stop`] waits for a graceful exit before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness polls.
const POLL: Duration = Duration::from_millis(20);
/// Health endpoint polled for readiness: 200 only once JetStream (and, clustered, the meta leader) is healthy.
const HEALTHZ: &str = "/healthz";
/// Log lines included in errors.
const TAIL_LINES: usize = 40;

/// Cluster membership of one node: its route port and the route ports of its peers.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSpec {
    /// Cluster name shared by all nodes.
    pub name: String,
    /// This node's route listen port.
    pub listen: u16,
    /// The ports the other nodes' routes are reached at.
    pub routes: Vec<u16>,
    /// The port peers reach this node's routes at, when not `listen` (a forwarding proxy); the
    /// node then advertises it, and tells clients of no other server.
    pub reached_at: Option<u16>,
}

/// Configures a single-node server before starting it.
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    sync_always: bool,
    extra_config: String,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        Self {
            sync_always: true,
            extra_config: String::new(),
        }
    }
}

impl NatsServerBuilder {
    /// `true` (default): `sync_interval: always`, so an acknowledged publish is on disk; `false`: server default.
    pub fn sync_always(mut self, always: bool) -> Self {
        self.sync_always = always;
        self
    }

    /// Appends raw nats-server configuration (accounts, authorization) to the generated config.
    pub fn extra_config(mut self, config: &str) -> Self {
        self.extra_config.push_str(config);
        self.extra_config.push('\n');
        self
    }

    /// Finds the binary, starts the server on a random loopback port and waits until JetStream is healthy.
    pub fn start(self) -> Result<NatsServer, LocalNatsError> {
        let bin = NatsServerBinary::find()?;
        let mut server = NatsServer::new(bin.path, self.sync_always, None, 0, None)?;
        server.extra_config = self.extra_config;
        server.spawn()?;
        server.wait_ready(Instant::now() + READY_TIMEOUT)?;
        Ok(server)
    }
}

/// A running (or killed, restartable) `nats-server` with JetStream on 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    sync_always: bool,
    server_name: Option<String>,
    cluster: Option<ClusterSpec>,
    /// Client port; 0 until the first start reported it.
    port: u16,
    /// Monitoring port of the current process, if it has reported one.
    monitoring: Option<u16>,
    child: Option<Child>,
    store_dir: PathBuf,
    log_path: PathBuf,
    config_path: PathBuf,
    /// Raw configuration appended to the generated one.
    extra_config: String,
    /// The store's own disk, when it has one (unmounted on drop, before `dir` is removed).
    disk: Option<crate::OwnDisk>,
    /// Whether the process runs in a process group of its own (a terminal's Ctrl-C does not
    /// reach it; whoever started it stops it).
    own_group: bool,
    /// Owns config, log, ports files and store; removed on drop, after the process is gone.
    dir: TempDir,
}

impl NatsServer {
    /// Starts a single node with `sync_interval: always`; same as `NatsServer::builder().start()`.
    pub fn start() -> Result<Self, LocalNatsError> {
        Self::builder().start()
    }

    /// A builder for a single node with non-default settings.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// Prepares (does not start) a server in a fresh temp dir; `port` 0 means pick one at first start.
    pub(crate) fn new(
        bin: PathBuf,
        sync_always: bool,
        server_name: Option<String>,
        port: u16,
        cluster: Option<ClusterSpec>,
    ) -> Result<Self, LocalNatsError> {
        let dir = tempfile::Builder::new()
            .prefix("hru-nats-")
            .tempdir()
            .map_err(LocalNatsError::io("creating the server temp dir"))?;
        Ok(Self {
            bin,
            sync_always,
            server_name,
            cluster,
            port,
            monitoring: None,
            child: None,
            store_dir: dir.path().join("js"),
            log_path: dir.path().join("nats-server.log"),
            config_path: dir.path().join("nats-server.conf"),
            extra_config: String::new(),
            disk: None,
            own_group: false,
            dir,
        })
    }

    /// Run the process in a process group of its own, from its next start.
    pub(crate) fn in_own_group(&mut self) {
        self.own_group = true;
    }

    /// Put the store on its own disk of `bytes` (a tmpfs; needs root) before the first start.
    pub(crate) fn on_own_disk(&mut self, bytes: u64) -> Result<(), LocalNatsError> {
        self.disk = Some(crate::OwnDisk::mount(&self.store_dir, bytes)?);
        Ok(())
    }

    /// The store's own disk, if it was started on one.
    pub fn disk(&self) -> Option<&crate::OwnDisk> {
        self.disk.as_ref()
    }

    /// Client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Client port; stays the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// HTTP monitoring URL of the current process (it changes on restart), or `None` while not running.
    pub fn monitoring_url(&self) -> Option<String> {
        self.monitoring_port().map(|port| format!("http://127.0.0.1:{port}"))
    }

    /// Monitoring port of the current process, while running.
    pub(crate) fn monitoring_port(&self) -> Option<u16> {
        self.monitoring.filter(|_| self.child.is_some())
    }

    /// JetStream `store_dir` (nats-server keeps its data under `<store_dir>/jetstream`).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Server log (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Pid of the running process, or `None` after [`kill`](Self::kill) or [`stop`](Self::stop).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether `/healthz` answers 200 right now.
    pub fn is_healthy(&self) -> bool {
        self.monitoring_port()
            .and_then(|port| probe::http_get(port, HEALTHZ).ok())
            .is_some_and(|(status, _)| status == 200)
    }

    /// The last lines of the server log, for assertion messages.
    pub fn log_tail(&self) -> String {
        probe::log_tail(&self.log_path, TAIL_LINES)
    }

    /// Kills the process with SIGKILL (a crash: nothing is flushed) and reaps it; no-op if not running.
    pub fn kill(&mut self) -> Result<(), LocalNatsError> {
        if let Some(mut child) = self.child.take() {
            self.monitoring = None;
            child.kill().map_err(LocalNatsError::io("killing nats-server"))?;
            child.wait().map_err(LocalNatsError::io("reaping nats-server"))?;
        }
        Ok(())
    }

    /// Shuts down gracefully (SIGTERM via `nats-server --signal term=PID`), killing after 10 s; no-op if not running.
    pub fn stop(&mut self) -> Result<(), LocalNatsError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let signalled = self.signal("term", pid)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while signalled.success() && Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child
                    .try_wait()
                    .map_err(LocalNatsError::io("waiting for nats-server"))?
                    .is_some()
            {
                self.child = None;
                self.monitoring = None;
                return Ok(());
            }
            sleep(POLL);
        }
        self.kill()
    }

    /// `nats-server --signal <what>=<pid>`: how the server is told to stop or reload.
    fn signal(&self, what: &str, pid: u32) -> Result<std::process::ExitStatus, LocalNatsError> {
        Command::new(&self.bin)
            .arg("--signal")
            .arg(format!("{what}={pid}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| LocalNatsError::Spawn {
                bin: self.bin.clone(),
                source,
            })
    }

    /// Replaces the extra configuration (a regenerated authorization, say) and has the running
    /// server reload its config file (`nats-server --signal reload=PID`): no restart, and
    /// clients whose credentials the new config no longer lists are disconnected.
    pub fn reload_with(&mut self, extra: &str) -> Result<(), LocalNatsError> {
        self.extra_config = format!("{extra}\n");
        std::fs::write(&self.config_path, self.config()).map_err(LocalNatsError::io("writing nats-server.conf"))?;
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let status = self.signal("reload", pid)?;
        if !status.success() {
            return Err(LocalNatsError::io("signalling nats-server to reload")(
                std::io::Error::other(format!("nats-server --signal reload={pid} exited with {status}")),
            ));
        }
        Ok(())
    }

    /// Starts again on the same client port and store dir (SIGKILLs first if still running) and waits until healthy.
    pub fn restart(&mut self) -> Result<(), LocalNatsError> {
        self.kill()?;
        self.spawn()?;
        self.wait_ready(Instant::now() + READY_TIMEOUT)
    }

    /// The config for the next run: fixed client port once known, random monitoring port.
    fn config(&self) -> String {
        let listen = if self.port == 0 {
            "127.0.0.1:-1".to_owned()
        } else {
            format!("127.0.0.1:{}", self.port)
        };
        hru_broker::server::render(&hru_broker::server::NodeConfig {
            server_name: self.server_name.clone(),
            listen,
            http: Some("127.0.0.1:-1".to_owned()),
            ports_file_dir: Some(self.dir.path().display().to_string()),
            store_dir: self.store_dir.display().to_string(),
            sync_always: self.sync_always,
            cluster: self.cluster.as_ref().map(|c| hru_broker::server::ClusterConfig {
                name: c.name.clone(),
                listen: format!("127.0.0.1:{}", c.listen),
                routes: c
                    .routes
                    .iter()
                    .map(|port| format!("nats-route://127.0.0.1:{port}"))
                    .collect(),
                tls: None,
                advertise: c.reached_at.map(|port| format!("127.0.0.1:{port}")),
                no_advertise: c.reached_at.is_some(),
            }),
            authorization: None,
            tls: None,
            extra: self.extra_config.clone(),
        })
    }

    /// Writes the config and spawns the process with stdout and stderr appended to the log.
    pub(crate) fn spawn(&mut self) -> Result<(), LocalNatsError> {
        std::fs::write(&self.config_path, self.config()).map_err(LocalNatsError::io("writing nats-server.conf"))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(LocalNatsError::io("opening the nats-server log"))?;
        let log_err = log
            .try_clone()
            .map_err(LocalNatsError::io("opening the nats-server log"))?;
        let mut command = Command::new(&self.bin);
        if self.own_group {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let child = command
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| LocalNatsError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        self.child = Some(child);
        self.monitoring = None;
        Ok(())
    }

    /// Polls the ports file, then `/healthz`, until 200; on failure kills the process and reports the log tail.
    pub(crate) fn wait_ready(&mut self, deadline: Instant) -> Result<(), LocalNatsError> {
        let result = self.poll_ready(deadline);
        if result.is_err() {
            // Best effort: the error being returned matters more than a failed kill.
            let _ = self.kill();
        }
        result
    }

    /// Polls the ports file, then `/healthz`, until 200; on failure leaves the process running.
    pub(crate) fn poll_ready(&mut self, deadline: Instant) -> Result<(), LocalNatsError> {
        let mut last = String::from("no answer yet");
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(LocalNatsError::Invalid("wait_ready without a process".into()));
            };
            let pid = child.id();
            if let Some(status) = child
                .try_wait()
                .map_err(LocalNatsError::io("waiting for nats-server"))?
            {
                self.child = None;
                return Err(LocalNatsError::Exited {
                    pid,
                    status,
                    log_tail: self.log_tail(),
                });
            }
            if self.monitoring.is_none() {
                match probe::read_ports(self.dir.path(), pid) {
                    Some(Ports { client, monitoring }) => {
                        self.port = client;
                        self.monitoring = Some(monitoring);
                    }
                    None => last = format!("no ports file for pid {pid} yet"),
                }
            }
            if let Some(port) = self.monitoring {
                match probe::http_get(port, HEALTHZ) {
                    Ok((200, _)) => return Ok(()),
                    Ok((status, body)) => last = format!("HTTP {status} {body}"),
                    Err(err) => last = err.to_string(),
                }
            }
            if Instant::now() >= deadline {
                let url = match self.monitoring {
                    Some(port) => format!("http://127.0.0.1:{port}{HEALTHZ}"),
                    None => format!("ports file in {}", self.dir.path().display()),
                };
                return Err(LocalNatsError::NotReady {
                    url,
                    last,
                    log_tail: self.log_tail(),
                });
            }
            sleep(POLL);
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Kill before the TempDir field is dropped, so the store is not removed under a live server.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.disk.take();
    }
}
