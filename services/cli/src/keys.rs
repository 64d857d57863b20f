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
