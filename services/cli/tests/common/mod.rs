//! A world for CLI tests: a real nats-server, a policies directory with one agreement and
//! freshly generated keys for its parties, and the `hru` binary run against them.

#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hru_testkit::NatsServer;
use serde_json::Value;

pub struct World {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
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
        Self { nats, dir }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["--policies".to_owned(), path(self.dir.path(), "policies")];
        full.extend(args.iter().map(|s| (*s).to_owned()));
        hru(&self.nats, &full.iter().map(String::as_str).collect::<Vec<_>>())
    }

    pub fn event(&self, name: &str, json: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, json).expect("write event");
        p.display().to_string()
    }

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

    /// Replay as `party`, one JSON object per line, only the case events.
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

    pub fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }
}

pub fn path(base: &Path, rel: &str) -> String {
    base.join(rel).display().to_string()
}

pub fn hru(nats: &NatsServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hru"))
        .args(args)
        .env("HRU_NATS_URL", nats.url())
        .output()
        .expect("runs hru")
}
