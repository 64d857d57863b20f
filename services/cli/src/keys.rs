//! `hru keys generate`: a party's secret key file and its public directory entry.

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

/// Write `text` to `path` with mode 0600, atomically.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    hru_runtime::deployment::write_private(path, text).with_context(|| format!("writing {}", path.display()))
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

/// `hru keys rotate`: a new signing key, announced in a KeyRotated event signed by the old one.
/// The old secrets are kept beside the new as `<party>.secret.<old key id>`.
pub(crate) async fn rotate(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
) -> anyhow::Result<ExitCode> {
    use prost::Message as _;
    let party: PartyId = party.parse().context("--party")?;
    let old = load(keys_dir, &party)?;
    let new_key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let public = new_key.verifying_key().to_bytes();
    let body = hru_wire::v1::KeyRotated {
        party: party.to_string(),
        old_key_id: old.signing_key_id().0.to_vec(),
        new_key_id: hru_envelope::key_id(&public).0.to_vec(),
        new_public_key: public.to_vec(),
        purpose: "signing".into(),
    };
    let seq = crate::producer_state::PartyProducer::open(nats, policies_dir, keys_dir, &party, "keys")
        .await?
        .append_public(hru_domain::EventType::KeyRotated, body.encode_to_vec())
        .await?;
    let kept = keys_dir.join(format!("{party}.secret.{}", old.signing_key_id()));
    write_private(&kept, &old.to_toml())?;
    let mut new = PartySecrets::from_toml(&old.to_toml(), "rotated")?;
    new.signing = new_key;
    write_private(&secret_path(keys_dir, &party), &new.to_toml())?;
    let at = jiff::Timestamp::now();
    println!(
        "{seq}\tKeyRotated\t{} -> {}",
        old.signing_key_id(),
        new.signing_key_id()
    );
    eprintln!(
        "wrote the new key to {} and kept the old one in {}; in directory.toml end the old key with valid_until = \"{at}\" and add:",
        secret_path(keys_dir, &party).display(),
        kept.display()
    );
    // The directory's own format (base64, as `hru keys generate` prints it), to paste as is.
    println!(
        "[[party.signing_key]]\nkey = \"ed25519:{}\"\nvalid_from = \"{at}\"",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, public)
    );
    Ok(ExitCode::SUCCESS)
}

/// `hru keys revoke`: a KeyRevoked event for one of the party's keys, effective from `at`.
pub(crate) async fn revoke(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    key: &str,
    at: Option<&str>,
    reason: &str,
) -> anyhow::Result<ExitCode> {
    use prost::Message as _;
    let party: PartyId = party.parse().context("--party")?;
    let key_id = hex::decode(key)
        .ok()
        .filter(|b| b.len() == 8)
        .ok_or_else(|| anyhow::anyhow!("--key-id must be the 16 hex digits of a key id"))?;
    let revoked_at_ms = match at {
        Some(t) => t
            .parse::<jiff::Timestamp>()
            .map_err(|e| anyhow::anyhow!("--at must be an RFC 3339 time: {e}"))?
            .as_millisecond(),
        None => jiff::Timestamp::now().as_millisecond(),
    };
    if reason.trim().is_empty() {
        bail!("--reason is required: say why the key is revoked");
    }
    let body = hru_wire::v1::KeyRevoked {
        party: party.to_string(),
        key_id,
        revoked_at_ms,
        reason: reason.to_owned(),
    };
    let seq = crate::producer_state::PartyProducer::open(nats, policies_dir, keys_dir, &party, "keys")
        .await?
        .append_public(hru_domain::EventType::KeyRevoked, body.encode_to_vec())
        .await?;
    println!("{seq}\tKeyRevoked\t{key}");
    Ok(ExitCode::SUCCESS)
}
