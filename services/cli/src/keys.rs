//! `hru keys generate`: a party's secret key file and its public directory entry.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use hru_domain::PartyId;
use hru_envelope::PartySecrets;

/// The secret key file of `party` in `dir`.
pub(crate) fn secret_path(dir: &Path, party: &PartyId) -> PathBuf {
    dir.join(format!("{party}.secret"))
}

/// Load `party`'s secrets from `dir`.
pub(crate) fn load(dir: &Path, party: &PartyId) -> anyhow::Result<PartySecrets> {
    let path = secret_path(dir, party);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}; create it with `hru keys generate --party {party} --out {}`",
            path.display(),
            dir.display()
        )
    })?;
    let secrets = PartySecrets::from_toml(&text, &path.display().to_string())?;
    if &secrets.party != party {
        bail!("{} holds the keys of {}, not {party}", path.display(), secrets.party);
    }
    Ok(secrets)
}

/// Write `text` to `path` with mode 0600, atomically (a temporary file renamed into place).
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

pub(crate) fn generate(party: &str, out: &Path, controller: &str) -> anyhow::Result<ExitCode> {
    let party: PartyId = party.parse().context("--party")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = secret_path(out, &party);
    if path.exists() {
        bail!(
            "{} exists; refusing to overwrite a party's keys (rotate instead)",
            path.display()
        );
    }
    let secrets = PartySecrets::generate(party, &mut rand_core::OsRng);
    write_private(&path, &secrets.to_toml())?;
    eprintln!(
        "wrote {} (mode 0600); add this entry to directory.toml:",
        path.display()
    );
    let controller = if controller.is_empty() {
        secrets.party.as_str()
    } else {
        controller
    };
    print!("{}", secrets.directory_entry(controller));
    Ok(ExitCode::SUCCESS)
}

/// `hru keys ca`: a development deployment CA.
pub(crate) fn ca(out: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out)?;
    if out.join("ca.key").exists() {
        bail!(
            "{} exists; refusing to overwrite the deployment CA",
            out.join("ca.key").display()
        );
    }
    let ca = hru_node::tls::new_ca("HRU Backbone deployment CA")?;
    std::fs::write(out.join("ca.pem"), &ca.cert_pem)?;
    write_private(&out.join("ca.key"), &ca.key_pem)?;
    eprintln!(
        "wrote {} and {} (mode 0600)",
        out.join("ca.pem").display(),
        out.join("ca.key").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `hru keys cert`: a party's TLS certificate from the CA.
pub(crate) fn cert(ca_dir: &Path, party: &str, hosts: &[String], out: &Path) -> anyhow::Result<ExitCode> {
    let party: PartyId = party.parse().context("--party")?;
    let ca = hru_node::tls::CertAndKey {
        cert_pem: std::fs::read_to_string(ca_dir.join("ca.pem"))
            .context("reading ca.pem (create it with `hru keys ca`)")?,
        key_pem: std::fs::read_to_string(ca_dir.join("ca.key")).context("reading ca.key")?,
    };
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let issued = hru_node::tls::issue(&ca, party.as_str(), &hosts)?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(format!("{party}.pem")), &issued.cert_pem)?;
    write_private(&out.join(format!("{party}.key")), &issued.key_pem)?;
    eprintln!("wrote {party}.pem and {party}.key (mode 0600) in {}", out.display());
    Ok(ExitCode::SUCCESS)
}
