//! A world for the cross-service tests: a real nats-server, a policies directory with one agreement and
//! freshly generated keys for its parties, and the `hru` binary run against them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hru_testkit::NatsServer;
use serde_json::Value;

/// Every party of the Cheshire HRU agreement.
pub const CHESHIRE_PARTIES: [&str; 9] = [
    "police-hru",
    "police-control",
    "victim-advocacy",
    "probation",
    "cwp",
    "mersey-care",
    "em-vendor",
    "geofence",
    "evaluation",
];

/// A nats-server and a working directory (policies/, keys/, certificates, data).
pub struct World {
    /// The server.
    pub nats: NatsServer,
    /// The working directory.
    pub dir: tempfile::TempDir,
    /// The broker the world's commands and services use instead of `nats` (a cluster's URLs).
    pub broker: Option<String>,
    /// How many copies of each stream provisioning asks for (a cluster's size; 1 by default).
    pub replicas: usize,
    /// Whether the services it starts run in process groups of their own (a terminal's
    /// Ctrl-C then reaches only the test, which stops them).
    pub own_groups: bool,
}

impl World {
    /// Keys for `parties`, the agreement file `agreement` (relative to the crate) in policies/.
    pub fn new(agreement: &str, parties: &[&str]) -> Self {
        let nats = NatsServer::start().expect("nats-server starts");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("policies")).expect("mkdir");
        let mut directory = String::new();
        for p in parties {
            let out = hru(
                &nats,
                &["keys", "generate", "--party", p, "--out", &path(dir.path(), "keys")],
            );
            assert!(
                out.status.success(),
                "keys generate {p}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            directory.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        std::fs::write(dir.path().join("policies/directory.toml"), directory).expect("write directory");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(agreement);
        let name = source.file_name().expect("a file").to_owned();
        std::fs::copy(&source, dir.path().join("policies").join(name)).expect("copy the agreement");
        Self {
            nats,
            dir,
            broker: None,
            replicas: 1,
            own_groups: false,
        }
    }

    /// The same world with another version of the agreement (`agreement`, relative to the
    /// crate) beside the first; the newest version in force governs what is sealed.
    pub fn with_agreement(self, agreement: &str) -> Self {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(agreement);
        let name = source.file_name().expect("a file").to_owned();
        std::fs::copy(&source, self.dir.path().join("policies").join(name)).expect("copy the agreement");
        self
    }

    /// The same world with its commands and services on `url` (for example a cluster's
    /// comma-separated URLs) instead of its own server.
    pub fn on_broker(mut self, url: String) -> Self {
        self.broker = Some(url);
        self
    }

    /// The same world provisioning `replicas` copies of each stream (on a cluster of as many).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// The services it starts run in process groups of their own.
    pub fn in_own_process_groups(mut self) -> Self {
        self.own_groups = true;
        self
    }

    /// The broker URL(s) the world's commands and services use.
    pub fn url(&self) -> String {
        self.broker.clone().unwrap_or_else(|| self.nats.url())
    }

    /// Like [`World::new`] with keys for the provisioner and the auditor too, and a server
    /// enforcing the authorization `hru policy nats-config` generates from the agreement, so
    /// every party acts with its own nkey and nothing more.
    pub fn secured(agreement: &str, parties: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        std::fs::create_dir_all(base.join("policies")).expect("mkdir");
        let offline = |args: &[&str]| Command::new(crate::hru_bin()).args(args).output().expect("runs hru");
        let mut directory = String::new();
        for p in parties.iter().copied().chain(["provisioner", "auditor"]) {
            let out = offline(&["keys", "generate", "--party", p, "--out", &path(base, "keys")]);
            assert!(
                out.status.success(),
                "keys generate {p}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            directory.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        std::fs::write(base.join("policies/directory.toml"), directory).expect("write directory");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(agreement);
        let name = source.file_name().expect("a file").to_owned();
        std::fs::copy(&source, base.join("policies").join(name)).expect("copy the agreement");
        let auth = base.join("auth.conf");
        let out = offline(&[
            "--policies",
            &path(base, "policies"),
            "policy",
            "nats-config",
            "--out",
            &auth.display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "policy nats-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let auth = std::fs::read_to_string(&auth).expect("read the authorization");
        let nats = NatsServer::builder()
            .extra_config(&auth)
            .start()
            .expect("nats-server starts");
        Self {
            nats,
            dir,
            broker: None,
            replicas: 1,
            own_groups: false,
        }
    }

    /// Run `hru` with the world's policies and server.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["--policies".to_owned(), path(self.dir.path(), "policies")];
        full.extend(args.iter().map(|s| (*s).to_owned()));
        hru_at(&self.url(), &full.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Write an event draft as JSON to a file; its path.
    pub fn event(&self, name: &str, json: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, json).expect("write event");
        p.display().to_string()
    }

    /// `hru append` as `party`.
    pub fn append(&self, party: &str, event: &str) -> Output {
        self.run(&[
            "append",
            "--party",
            party,
            "--keys",
            &path(self.dir.path(), "keys"),
            event,
        ])
    }

    /// `hru append` as `party`, connecting with the party's own key (`--identity`), as a
    /// party does on a server enforcing the generated authorization.
    pub fn append_as(&self, party: &str, event: &str) -> Output {
        let keys = path(self.dir.path(), "keys");
        let identity = format!("{keys}/{party}.secret");
        self.run(&[
            "--identity",
            &identity,
            "append",
            "--party",
            party,
            "--keys",
            &keys,
            event,
        ])
    }

    /// Regenerate the broker authorization from the policies directory (`hru policy
    /// nats-config`) and have the running server reload it; when the reload signal was sent.
    pub fn reload_authorization(&mut self) -> std::time::Instant {
        let auth = self.dir.path().join("auth.conf");
        succeeded(
            &self.run(&["policy", "nats-config", "--out", &auth.display().to_string()]),
            "policy nats-config",
        );
        let text = std::fs::read_to_string(&auth).expect("read the authorization");
        let sent = std::time::Instant::now();
        self.nats.reload_with(&text).expect("nats-server reloads");
        sent
    }

    /// Replay as `party`, one JSON object per line, only the case events.
    /// `hru replay --format json` as `party`: the output and its JSON lines.
    pub fn replay(&self, party: &str) -> (Output, Vec<Value>) {
        let out = self.run(&[
            "replay",
            "--party",
            party,
            "--keys",
            &path(self.dir.path(), "keys"),
            "--format",
            "json",
        ]);
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
            .collect();
        (out, lines)
    }

    /// `party`'s secret key file, loaded.
    pub fn secrets(&self, party: &str) -> hru_envelope::PartySecrets {
        let path = self.keys().join(format!("{party}.secret"));
        let text = std::fs::read_to_string(&path).expect("read the secret key file");
        hru_envelope::PartySecrets::from_toml(&text, &path.display().to_string()).expect("a secret key file")
    }

    /// The keys directory.
    pub fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// Put the Cheshire agreement in force from `date` (YYYY-MM-DD) instead of 2026-01-01, so
    /// events of an earlier time are read under it (before [`World::provision`]).
    pub fn agreement_in_force_from(&self, date: &str) {
        let agreement = self.dir.path().join("policies/cheshire-hru.toml");
        let text = std::fs::read_to_string(&agreement).expect("read the agreement");
        let from = "effective_from = \"2026-01-01\"";
        assert!(text.contains(from), "the agreement is in force from 2026-01-01");
        std::fs::write(&agreement, text.replace(from, &format!("effective_from = \"{date}\"")))
            .expect("write the agreement");
    }

    /// `party` has held period keys since `month`: its chains start then, in its keys directory
    /// (where its node or geofence keeps them), and it published them on the log as of `at_ms`.
    pub async fn hold_periods_since(&self, party: &str, month: &str, at_ms: i64) -> hru_log::periods::PeriodHolder {
        use hru_log::periods::{self, PeriodHolder};
        let secrets = self.secrets(party);
        let (directory, isa) = self.deployment();
        let log = hru_log::PartyView::open(&self.url(), Some(&secrets.broker_identity()), &secrets.party)
            .await
            .expect("the party's view");
        let file = hru_runtime::deployment::periods_path(&self.keys(), &secrets.party);
        let mut holder = PeriodHolder::open(&file, &secrets.party).expect("the period file");
        holder.ensure(periods::classes(&isa), month).expect("chains start");
        let mut producer = hru_log::Producer::open(
            &self.dir.path().join(format!("{party}-keyholder")),
            hru_domain::ProducerId {
                party: secrets.party.clone(),
                instance: "keyholder".into(),
            },
            secrets.signing.clone(),
            &log,
            &directory,
        )
        .await
        .expect("the holder's producer");
        let published = periods::publish(&mut producer, &log, &isa, &holder, at_ms)
            .await
            .expect("published");
        assert!(published.is_some(), "{party} published its period keys");
        holder
    }

    /// Replace `party`'s `[[party]]` block in policies/directory.toml with `block` (what
    /// `hru keys rotate` prints), as an operator does.
    pub fn replace_party(&self, party: &str, block: &str) {
        let file = self.dir.path().join("policies/directory.toml");
        let text = std::fs::read_to_string(&file).expect("read the directory");
        let mut out = String::new();
        for chunk in text.split("[[party]]\n").filter(|c| !c.trim().is_empty()) {
            if chunk.starts_with(&format!("id = \"{party}\"\n")) {
                out.push_str(block.trim_end());
                out.push_str("\n\n");
            } else {
                out.push_str("[[party]]\n");
                out.push_str(chunk);
            }
        }
        std::fs::write(&file, out).expect("write the directory");
    }
}

/// A police referral draft for `case` (as `hru append` reads it), its area `area` and its
/// subject's identity section "Sam Example".
pub fn referral_json(case: &str, area: &str) -> String {
    format!(
        r#"{{"caseId":"{case}","referralReceived":{{"core":{{"subjectRef":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","behaviours":["BEHAVIOUR_STALKING"],"area":"{area}","receivedAtMs":"1795300000000"}},"identity":{{"subject":{{"fullName":"Sam Example"}}}}}}}}"#
    )
}

/// An id field of an event draft: base64 of the 16 bytes of the UUID `n`.
pub fn uuid_b64(n: u128) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::from_u128(n).as_bytes())
}

/// A `TagFitted` draft for `case` (as `hru append` reads it): `tag` fitted under order `order`
/// (an id, see [`uuid_b64`]), alerts going to `victim`'s phone, at `at_ms`.
pub fn tag_fitted_json(case: &str, tag: &str, order: &str, victim: &str, at_ms: i64) -> String {
    format!(
        r#"{{"caseId":"{case}","tagFitted":{{"core":{{"tagId":"{tag}","orderId":"{order}","victimDeviceId":"{victim}","atMs":"{at_ms}"}}}}}}"#
    )
}

/// A `ZoneDefined` draft for `case`: version 1 of exclusion zone `zone` (an id) for `tag`, a
/// 300 m circle with a 25 m exit buffer round the victim's home at `home` (latitude, longitude).
pub fn home_zone_json(case: &str, zone: &str, tag: &str, home: (f64, f64)) -> String {
    let (lat, lon) = home;
    format!(
        r#"{{"caseId":"{case}","zoneDefined":{{"core":{{"zoneId":"{zone}","version":1,"kind":"ZONE_KIND_EXCLUSION","tagId":"{tag}","geojson":"{{\"type\":\"Point\",\"coordinates\":[{lon},{lat}]}}","radiusM":300,"exitBufferM":25,"label":"victim's home"}}}}}}"#
    )
}

/// The stdout of a run of `hru` that must succeed (`what` names it when it did not).
pub fn succeeded(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

impl World {
    /// Start the geofence (`hru geofence run`, with the world's keys and policies, its data
    /// under geofence-data/, its metrics on `metrics_port`, its log in geofence.log); the
    /// caller kills it.
    pub fn start_geofence(&self, metrics_port: u16) -> std::process::Child {
        self.start_geofence_with(metrics_port, "")
    }

    /// Start the geofence as a child process serving metrics on `metrics_port`, with `extra`
    /// appended to its config; its output goes to `geofence.log`.
    pub fn start_geofence_with(&self, metrics_port: u16, extra: &str) -> std::process::Child {
        self.start_geofence_named("geofence", metrics_port, extra)
    }

    /// Start a geofence instance `name` (its config `<name>.toml`, its data under
    /// `<name>-data/`, its output in `<name>.log`) serving metrics on `metrics_port`, with
    /// `extra` appended to its config.
    pub fn start_geofence_named(&self, name: &str, metrics_port: u16, extra: &str) -> std::process::Child {
        self.start_geofence_on(name, metrics_port, extra, &self.url())
    }

    /// [`start_geofence_named`](Self::start_geofence_named) on the broker at `url` (a started
    /// instance of the same name and data starts again the same way).
    pub fn start_geofence_on(&self, name: &str, metrics_port: u16, extra: &str, url: &str) -> std::process::Child {
        let d = |rel: &str| path(self.dir.path(), rel);
        let config = format!("{name}.toml");
        std::fs::write(
            self.dir.path().join(&config),
            format!(
                "keys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n{extra}\n",
                d("keys"),
                d("policies"),
                d(&format!("{name}-data"))
            ),
        )
        .expect("write the geofence's config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("open the geofence's log");
        let mut command = Command::new(crate::hru_bin());
        if self.own_groups {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        command
            .args(["geofence", "run", "--config", &d(&config)])
            .env("HRU_NATS_URL", url)
            .stdout(log.try_clone().expect("the geofence's log"))
            .stderr(log)
            .spawn()
            .expect("spawn hru geofence run")
    }

    /// The subject-linkage grants on the world's log, as verified for the agreement in force
    /// (decision 020). Call it outside any runtime.
    pub fn linkage_grants(&self) -> Vec<hru_log::linkage::LinkageGrant> {
        let (directory, isa) = self.deployment();
        let linkage = isa.linkage.expect("the agreement in force has [linkage]");
        crate::runtime().block_on(async {
            let log = hru_log::EventLog::open(&self.url(), None, 1)
                .await
                .expect("open the log");
            hru_log::linkage::grants(
                hru_log::SharedLog::reader(&log),
                &directory,
                &isa.id,
                &linkage.custodian,
            )
            .await
            .expect("read the linkage grants")
        })
    }

    /// Run `hru keys linkage --party <party> --keys <the world's keys>` with `args` (`--reason
    /// TEXT` to grant, `--rekey` to re-key).
    pub fn keys_linkage(&self, party: &str, args: &[&str]) -> Output {
        let keys = path(self.dir.path(), "keys");
        let mut all = vec!["keys", "linkage", "--party", party, "--keys", &keys];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// The newest linkage key `party` can open from `grants`, as a node would take it.
    pub fn linkage_key(
        &self,
        grants: &[hru_log::linkage::LinkageGrant],
        party: &str,
    ) -> Result<hru_envelope::LinkageKey, String> {
        let (_, isa) = self.deployment();
        let linkage = isa.linkage.expect("the agreement in force has [linkage]");
        hru_log::linkage::newest_key(grants, &isa.id, &linkage.holders, &self.secrets(party))
    }

    /// The directory and the agreement in force, as the world's policies directory holds them
    /// (the newest version in force now, where it holds several).
    pub fn deployment(&self) -> (hru_envelope::Directory, hru_policy::CompiledIsa) {
        let policies = self.dir.path().join("policies");
        let text = std::fs::read_to_string(policies.join("directory.toml")).expect("read policies");
        let directory = hru_envelope::Directory::from_toml(&text, "directory.toml").expect("directory");
        let set = hru_policy::PolicySet::load_dir(&policies, Some(&directory)).expect("agreements");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let isa = set
            .iter()
            .max_by_key(|i| (i.in_force_at(now), i.version))
            .expect("an agreement")
            .clone();
        (directory, isa)
    }
}

/// Assert each path exists with exactly this permission mode (`0o700`, `0o600`).
pub fn assert_private(paths: &[(PathBuf, u32)]) {
    use std::os::unix::fs::PermissionsExt as _;
    let wrong: Vec<String> = paths
        .iter()
        .filter_map(|(path, mode)| {
            let found = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777);
            match found {
                Ok(m) if m == *mode => None,
                Ok(m) => Some(format!("{} is {m:o}, not {mode:o}", path.display())),
                Err(e) => Some(format!("{}: {e}", path.display())),
            }
        })
        .collect();
    assert!(wrong.is_empty(), "not private: {wrong:#?}");
}

/// `base/rel` as a string.
pub fn path(base: &Path, rel: &str) -> String {
    base.join(rel).display().to_string()
}

/// Run `hru` against `nats`.
pub fn hru(nats: &NatsServer, args: &[&str]) -> Output {
    hru_at(&nats.url(), args)
}

/// Run `hru` with `args` against the broker at `url`.
pub fn hru_at(url: &str, args: &[&str]) -> Output {
    Command::new(crate::hru_bin())
        .args(args)
        .env("HRU_NATS_URL", url)
        .output()
        .expect("runs hru")
}

pub use hru_testkit::{free_port, metric};

/// `hru node run` as a child process; killed when dropped.
/// A node running as its own `hru node run` process (killed on drop).
pub struct NodeProcess {
    /// Its party.
    pub party: String,
    /// Its gRPC port.
    pub port: u16,
    /// The process.
    pub child: std::process::Child,
    /// Where its standard error goes (named when it does not answer).
    pub log: Option<PathBuf>,
    /// Whether it runs in a process group of its own.
    pub own_group: bool,
}

/// `hru node run` with the config file `config` on the broker at `url`, its standard error
/// appended to `log`.
fn spawn_node(config: &Path, url: &str, log: &Path, own_group: bool) -> std::process::Child {
    let errors = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("node log");
    let mut command = Command::new(crate::hru_bin());
    if own_group {
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
    }
    command
        .args(["node", "run", "--config", &config.display().to_string()])
        .env("HRU_NATS_URL", url)
        .stdout(std::process::Stdio::null())
        .stderr(errors)
        .spawn()
        .expect("spawn hru node run")
}

impl NodeProcess {
    /// Kill the node (if running) and start it again on the same config, port and data, on the
    /// broker at `url`.
    pub fn restart(&mut self, url: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log.clone().expect("a node started by the world logs");
        let config = log.with_file_name(format!("{}.toml", self.party));
        self.child = spawn_node(&config, url, &log, self.own_group);
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl World {
    /// The deployment CA (made once) and a certificate for `party` valid for localhost.
    pub fn certificate(&self, party: &str) {
        let d = |rel: &str| path(self.dir.path(), rel);
        if !self.dir.path().join("ca/ca.pem").exists() {
            let out = self.run(&["keys", "ca", "--out", &d("ca")]);
            assert!(
                out.status.success(),
                "keys ca: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = self.run(&[
            "keys",
            "cert",
            "--ca",
            &d("ca"),
            "--party",
            party,
            "--host",
            "localhost",
            "--out",
            &d("certs"),
        ]);
        assert!(
            out.status.success(),
            "keys cert: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Create the streams and every party's view, as the provisioner does before nodes start
    /// (with its nkey when the world has its keys).
    pub fn provision(&self) {
        let keys = path(self.dir.path(), "keys");
        let replicas = self.replicas.to_string();
        let out = if self.keys().join("provisioner.secret").exists() {
            self.run(&["log", "provision", "--replicas", &replicas, "--keys", &keys])
        } else {
            self.run(&["log", "provision", "--replicas", &replicas])
        };
        assert!(
            out.status.success(),
            "log provision: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Provision (with the world's replica count and `extra` arguments), trying again for up
    /// to 30 s while a cluster is still forming (a peer not yet known).
    pub fn provision_while_forming(&self, extra: &[&str]) {
        let forming = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let replicas = self.replicas.to_string();
        let mut args = vec!["log", "provision", "--replicas", &replicas];
        args.extend_from_slice(extra);
        loop {
            let out = self.run(&args);
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < forming,
                "provision: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    /// Start `party`'s node as a child process; `extra` is appended to its config.
    pub fn start_node(&self, party: &str, extra: &str) -> NodeProcess {
        self.start_node_on(party, extra, &self.url())
    }

    /// Start `party`'s node as a child process on the broker at `url` (comma-separated URLs);
    /// `extra` is appended to its config.
    pub fn start_node_on(&self, party: &str, extra: &str, url: &str) -> NodeProcess {
        let d = |rel: &str| path(self.dir.path(), rel);
        self.certificate(party);
        let port = free_port();
        let config = format!(
            "party = \"{party}\"\nkeys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\n{extra}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            d("keys"),
            d("policies"),
            d(&format!("node-{party}")),
            d("ca/ca.pem"),
            d(&format!("certs/{party}.pem")),
            d(&format!("certs/{party}.key")),
        );
        self.provision();
        let file = self.dir.path().join(format!("{party}.toml"));
        std::fs::write(&file, config).expect("write node config");
        let log = self.dir.path().join(format!("node-{party}.log"));
        let _ = std::fs::remove_file(&log);
        NodeProcess {
            party: party.to_owned(),
            port,
            child: spawn_node(&file, url, &log, self.own_groups),
            own_group: self.own_groups,
            log: Some(log),
        }
    }

    /// A TLS channel to `node` as `party`, once the node answers.
    pub async fn channel(&self, node: &NodeProcess, party: &str) -> tonic::transport::Channel {
        let d = self.dir.path();
        tls_channel(
            node,
            &d.join("ca/ca.pem"),
            &d.join(format!("certs/{party}.pem")),
            &d.join(format!("certs/{party}.key")),
        )
        .await
    }
}

/// A TLS channel to `node` with this CA and client certificate, once the node answers.
pub async fn tls_channel(node: &NodeProcess, ca: &Path, cert: &Path, key: &Path) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let read = |p: &Path| std::fs::read_to_string(p).expect("read pem");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .identity(Identity::from_pem(read(cert), read(key)))
        .domain_name("localhost");
    for _ in 0..200 {
        let endpoint = Channel::from_shared(format!("https://127.0.0.1:{}", node.port))
            .expect("url")
            .tls_config(tls.clone())
            .expect("tls");
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let tail = node
        .log
        .as_ref()
        .and_then(|l| std::fs::read_to_string(l).ok())
        .map(|t| {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        })
        .unwrap_or_default();
    panic!(
        "{}'s node does not answer on port {} after 20 s; its log ends:\n{tail}",
        node.party, node.port
    );
}

/// A request naming the person acting.
pub fn request<T>(message: T, person: &str) -> tonic::Request<T> {
    hru_wire::request_as(message, person).expect("an ASCII person")
}

/// `CaseService/RecordEvent` of `event` on `case` at its `version`, as `person` for `purpose`,
/// occurring at `occurred_ms` (the node's now when `None`): the case's new version.
pub async fn record_event(
    channel: &tonic::transport::Channel,
    case: uuid::Uuid,
    version: u64,
    occurred_ms: Option<i64>,
    purpose: &str,
    person: &str,
    event: hru_wire::v1::event_draft::Event,
) -> Result<u64, tonic::Status> {
    let occurred_at = occurred_ms
        .map(|ms| {
            jiff::Timestamp::from_millisecond(ms)
                .expect("a time jiff can hold")
                .to_string()
        })
        .unwrap_or_default();
    hru_wire::v1::case_service_client::CaseServiceClient::new(channel.clone())
        .record_event(request(
            hru_wire::v1::RecordEventRequest {
                draft: Some(hru_wire::v1::EventDraft {
                    case_id: case.to_string(),
                    occurred_at,
                    event: Some(event),
                }),
                expected_version: version,
                purpose: purpose.into(),
            },
            person,
        ))
        .await
        .map(|r| r.into_inner().sequence)
}
