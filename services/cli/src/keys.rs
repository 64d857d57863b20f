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
    hru_envelope::create_private_dir(out).with_context(|| format!("creating {}", out.display()))?;
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

/// `hru keys ca`: a CA: an agency's own (`party`), whose certificate goes into the party's
/// directory entry as printed, or a development deployment's.
pub(crate) fn ca(out: &Path, party: Option<&str>) -> anyhow::Result<ExitCode> {
    let party: Option<PartyId> = party.map(str::parse).transpose().context("--party")?;
    hru_envelope::create_private_dir(out)?;
    if out.join("ca.key").exists() {
        bail!(
            "{} exists; refusing to overwrite the deployment CA",
            out.join("ca.key").display()
        );
    }
    let name = party.as_ref().map_or_else(
        || "HRU Backbone deployment CA".to_owned(),
        |p| format!("HRU Backbone {p} CA"),
    );
    let ca = hru_node::tls::new_ca(&name)?;
    std::fs::write(out.join("ca.pem"), &ca.cert_pem)?;
    write_private(&out.join("ca.key"), &ca.key_pem)?;
    eprintln!(
        "wrote {} and {} (mode 0600)",
        out.join("ca.pem").display(),
        out.join("ca.key").display()
    );
    if let Some(party) = party {
        eprintln!("add this line to {party}'s [[party]] block in directory.toml:");
        println!("tls_ca = \"\"\"\n{}\"\"\"", ca.cert_pem.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// Who a certificate from `hru keys cert` is for.
pub(crate) enum Holder<'a> {
    /// A party (its node): named by a `urn:hru:party:` URI.
    Party(&'a str),
    /// A nats-server of the cluster: named by its common name only.
    Server(&'a str),
}

/// `hru keys cert`: a party's or a nats-server's TLS certificate from the CA in `ca_dir`.
pub(crate) fn cert(
    ca_dir: &Path,
    holder: Holder<'_>,
    hosts: &[String],
    days: u32,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let ca = hru_node::tls::CertAndKey {
        cert_pem: std::fs::read_to_string(ca_dir.join("ca.pem"))
            .with_context(|| format!("reading {}/ca.pem (create it with `hru keys ca`)", ca_dir.display()))?,
        key_pem: std::fs::read_to_string(ca_dir.join("ca.key"))
            .with_context(|| format!("reading {}/ca.key", ca_dir.display()))?,
    };
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let valid_for = std::time::Duration::from_secs(u64::from(days) * 86_400);
    let (name, issued) = match holder {
        Holder::Party(party) => {
            let party: PartyId = party.parse().context("--party")?;
            let issued = hru_node::tls::issue(&ca, party.as_str(), &hosts, valid_for)?;
            (party.to_string(), issued)
        }
        Holder::Server(name) => {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                bail!("--server {name:?}: use a host-like name (letters, digits, '-', '.')");
            }
            if hosts.is_empty() {
                bail!("--server needs at least one --host the server is reached at");
            }
            (
                name.to_owned(),
                hru_node::tls::issue_server(&ca, name, &hosts, valid_for)?,
            )
        }
    };
    hru_envelope::create_private_dir(out)?;
    std::fs::write(out.join(format!("{name}.pem")), &issued.cert_pem)?;
    write_private(&out.join(format!("{name}.key")), &issued.key_pem)?;
    eprintln!(
        "wrote {name}.pem and {name}.key (mode 0600) in {}, valid {days} days",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `hru keys rotate`: all three keys of a party replaced (signing, X25519, NATS nkey), each
/// rotation announced on the log by a `KeyRotated` signed by the old signing key. The old
/// secrets are kept beside the new as `<party>.secret.<old key id>` (grants sealed before the
/// rotation open with them); the party's directory entry is printed in the directory's own
/// format, to replace the old one.
pub(crate) async fn rotate(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
) -> anyhow::Result<ExitCode> {
    use prost::Message as _;
    let party: PartyId = party.parse().context("--party")?;
    let directory = crate::policies::directory(policies_dir)?;
    let listed = directory
        .party(&party)
        .ok_or_else(|| anyhow::anyhow!("{party} is not in {}/directory.toml", policies_dir.display()))?
        .clone();
    let old = load(keys_dir, &party)?;
    let new = PartySecrets::generate(party.clone(), &mut rand_core::OsRng);
    // Keep the old secrets before anything is announced: a crash after the log has the
    // rotation must not lose the keys that open what came before it.
    let kept = keys_dir.join(format!("{party}.secret.{}", old.signing_key_id()));
    write_private(&kept, &old.to_toml())?;
    let mut producer = crate::producer_state::PartyProducer::open(nats, policies_dir, keys_dir, &party, "keys").await?;
    let encryption = new.encryption_public_bytes();
    let signing = new.verifying_key().to_bytes();
    let mut at_ms = 0;
    for (purpose, old_id, public) in [
        ("encryption", old.encryption_key_id(), encryption),
        ("signing", old.signing_key_id(), signing),
    ] {
        let body = hru_wire::v1::KeyRotated {
            party: party.to_string(),
            old_key_id: old_id.0.to_vec(),
            new_key_id: hru_envelope::key_id(&public).0.to_vec(),
            new_public_key: public.to_vec(),
            purpose: purpose.into(),
        };
        let (seq, recorded_at_ms) = producer
            .append_public(hru_domain::EventType::KeyRotated, body.encode_to_vec())
            .await?;
        at_ms = recorded_at_ms;
        println!(
            "{seq}\tKeyRotated\t{purpose} {old_id} -> {}",
            hru_envelope::key_id(&public)
        );
    }
    // The old nkey is dropped with the rest: it stops working when the authorization generated
    // from the new directory is loaded (`nats-server --signal reload`).
    write_private(&secret_path(keys_dir, &party), &new.to_toml())?;
    eprintln!(
        "wrote the new keys to {} and kept the old ones in {}.\nReplace {party}'s [[party]] block in directory.toml with the block below, then regenerate the broker \
         authorization (`hru policy nats-config`) and reload nats-server (`nats-server --signal reload`) so the old nkey stops working.",
        secret_path(keys_dir, &party).display(),
        kept.display()
    );
    print!("{}", rotated_entry(&party, &listed, &new, old.signing_key_id(), at_ms)?);
    Ok(ExitCode::SUCCESS)
}

/// `party`'s directory block after a rotation at `at_ms`: every signing key it had (the
/// rotated one ending then), the new one from then, and the new X25519 key and nkey.
fn rotated_entry(
    party: &PartyId,
    listed: &hru_envelope::PartyEntry,
    new: &PartySecrets,
    rotated: hru_domain::KeyId,
    at_ms: i64,
) -> anyhow::Result<String> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let time = |ms: i64| -> anyhow::Result<String> { Ok(jiff::Timestamp::from_millisecond(ms)?.to_string()) };
    let mut out = format!(
        "[[party]]\nid = \"{party}\"\ncontroller = \"{}\"\nencryption_key = \"x25519:{}\"\nnats_user = \"{}\"\n",
        listed.controller,
        b64(&new.encryption_public_bytes()),
        new.nats_user()
    );
    if let Some(ca) = &listed.tls_ca {
        out.push_str(&format!("tls_ca = \"\"\"\n{}\"\"\"\n", ca.trim_end()));
    }
    // The rotation at `at_ms` is the old key's last signature: it ends just after.
    let end = at_ms.saturating_add(1);
    for k in &listed.signing {
        let until = if k.key_id == rotated {
            Some(k.valid_until_ms.map_or(end, |u| u.min(end)))
        } else {
            k.valid_until_ms
        };
        out.push_str(&format!(
            "\n[[party.signing_key]]\nkey = \"ed25519:{}\"\n",
            b64(k.key.as_bytes())
        ));
        if let Some(from) = k.valid_from_ms {
            out.push_str(&format!("valid_from = \"{}\"\n", time(from)?));
        }
        if let Some(until) = until {
            out.push_str(&format!("valid_until = \"{}\"\n", time(until)?));
        }
    }
    out.push_str(&format!(
        "\n[[party.signing_key]]\nkey = \"ed25519:{}\"\nvalid_from = \"{}\"\n",
        b64(new.verifying_key().as_bytes()),
        time(at_ms)?
    ));
    Ok(out)
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
    let revoked_at_ms = crate::at_ms(at)?;
    if reason.trim().is_empty() {
        bail!("--reason is required: say why the key is revoked");
    }
    let body = hru_wire::v1::KeyRevoked {
        party: party.to_string(),
        key_id,
        revoked_at_ms,
        reason: reason.to_owned(),
    };
    let (seq, _) = crate::producer_state::PartyProducer::open(nats, policies_dir, keys_dir, &party, "keys")
        .await?
        .append_public(hru_domain::EventType::KeyRevoked, body.encode_to_vec())
        .await?;
    println!("{seq}\tKeyRevoked\t{key}");
    Ok(ExitCode::SUCCESS)
}
