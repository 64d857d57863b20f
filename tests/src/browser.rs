//! Real browsers and a real identity provider for the page tests: Debian's chromium driven by
//! `tools/web/driver.mjs` (playwright-core), and the `oidc-provider` package run by
//! `tools/web/idp.mjs`; both installed by `scripts/tools.sh`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

/// The repository's `tools/web`, with its `node_modules` installed.
pub fn web_tools() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/web");
    assert!(
        dir.join("node_modules/playwright-core").exists() && dir.join("node_modules/oidc-provider").exists(),
        "{}/node_modules is missing: run scripts/tools.sh",
        dir.display()
    );
    dir
}

/// Node.js: `HRU_NODE_BIN`, else `.tools/venv/bin/node` as `scripts/tools.sh` installs it.
pub fn node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HRU_NODE_BIN") {
        return PathBuf::from(p);
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/node");
    assert!(bin.exists(), "{} is missing: run scripts/tools.sh", bin.display());
    bin
}

/// One headless chromium, its pages named; dropped: closed.
pub struct Browser {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    next: u64,
}

impl Browser {
    /// Start chromium (`HRU_CHROMIUM`, else `/usr/bin/chromium`) under the driver, trusting
    /// the certificates whose public keys are `pinned` (see [`spki_pin`]) as a browser trusts
    /// its CA's: no certificate warning, and cookies behave as on any trusted site.
    pub fn start(pinned: &[String]) -> Self {
        let chromium = std::env::var("HRU_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut child = Command::new(node_bin())
            .arg(web_tools().join("driver.mjs"))
            .arg(&chromium)
            .arg(format!("--ignore-certificate-errors-spki-list={}", pinned.join(",")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the browser driver");
        let input = child.stdin.take().expect("the driver's stdin");
        let output = BufReader::new(child.stdout.take().expect("the driver's stdout"));
        let mut me = Self {
            child,
            input,
            output,
            next: 1,
        };
        let ready = me.read();
        assert_eq!(
            ready["value"], "ready",
            "the driver did not start chromium ({chromium}): {ready}"
        );
        me
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.output.read_line(&mut line).expect("read the driver");
        assert!(!line.is_empty(), "the browser driver exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the driver said {line:?}: {e}"))
    }

    /// Run `op` with its arguments: its answer, or the driver's error.
    pub fn try_call(&mut self, op: &str, mut args: Value) -> Result<Value, String> {
        let id = self.next;
        self.next += 1;
        args["op"] = json!(op);
        args["id"] = json!(id);
        writeln!(self.input, "{args}").expect("write to the driver");
        let answer = self.read();
        assert_eq!(answer["id"], id, "answers come in order");
        if answer["ok"] == true {
            Ok(answer["value"].clone())
        } else {
            Err(answer["error"].as_str().unwrap_or("?").to_owned())
        }
    }

    /// Run `op`, panicking with the driver's error.
    pub fn call(&mut self, op: &str, args: Value) -> Value {
        self.try_call(op, args.clone())
            .unwrap_or_else(|e| panic!("browser {op} {args}: {e}"))
    }

    /// Evaluate the JavaScript expression `js` in page `page`.
    pub fn eval(&mut self, page: &str, js: &str) -> Value {
        self.call("eval", json!({"page": page, "js": js}))
    }

    /// Wait up to `timeout_ms` for `selector` on page `page` (visible).
    pub fn wait_for(&mut self, page: &str, selector: &str, timeout_ms: u64) -> Result<(), String> {
        self.try_call(
            "waitFor",
            json!({"page": page, "selector": selector, "timeout_ms": timeout_ms}),
        )
        .map(|_| ())
    }

    /// Save a screenshot of page `page` as `name`.png among the test artifacts.
    pub fn screenshot(&mut self, page: &str, name: &str) -> PathBuf {
        let path = artifacts().join(format!("{name}.png"));
        self.call("screenshot", json!({"page": page, "path": path}));
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.input, "{}", json!({"op": "quit", "id": 0}));
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The base64 SHA-256 of the certificate's public key (PEM file `cert`), as chromium's
/// `--ignore-certificate-errors-spki-list` takes it.
pub fn spki_pin(cert: &Path) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let pem = std::fs::read(cert).expect("read the certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("a PEM certificate");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw))
}

/// Where tests keep what a person would look at afterwards (screenshots):
/// `HRU_TEST_ARTIFACTS`, else `target/test-artifacts`.
pub fn artifacts() -> PathBuf {
    let dir = std::env::var_os("HRU_TEST_ARTIFACTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("the artifacts directory");
    dir
}

/// A person the local identity provider knows.
pub struct Account<'a> {
    /// Their login.
    pub login: &'a str,
    /// Their name.
    pub name: &'a str,
    /// Their party (the `hru_party` claim).
    pub party: &'a str,
}

/// The local OpenID Connect provider (`oidc-provider`), killed when dropped.
pub struct IdentityProvider {
    child: Child,
    /// Its issuer URL.
    pub issuer: String,
}

impl IdentityProvider {
    /// Start it on a free port for client `client_id`, the page at `page_url` (people return
    /// to its `/auth/callback`, and to its `/signed-out` after signing out), knowing
    /// `accounts`; `dir` holds its configuration.
    pub fn start(dir: &Path, client_id: &str, page_url: &str, accounts: &[Account<'_>]) -> Self {
        let port = crate::free_port();
        let config = json!({
            "port": port,
            "clients": [{
                "client_id": client_id,
                "redirect_uris": [format!("{page_url}/auth/callback")],
                "post_logout_redirect_uris": [format!("{page_url}/signed-out")],
            }],
            "accounts": accounts.iter().map(|a| (a.login.to_owned(), json!({
                "name": a.name,
                "email": format!("{}@example.org", a.login),
                "hru_party": a.party,
            }))).collect::<serde_json::Map<String, Value>>(),
        });
        let file = dir.join("idp.json");
        std::fs::write(&file, config.to_string()).expect("write the provider's config");
        let mut child = Command::new(node_bin())
            .arg(web_tools().join("idp.mjs"))
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the identity provider");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("its stdout"))
            .read_line(&mut line)
            .expect("read the provider");
        let issuer = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the identity provider said {line:?}"))
            .to_owned();
        Self { child, issuer }
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
