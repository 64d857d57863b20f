//! `hru device`: a victim's alert device, paired with its own broker identity, receiving its
//! alerts from its own stream in order, each once, with its receipt recorded on the broker.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hru_domain::DeviceId;
use hru_envelope::DeviceSecret;
use serde_json::json;

/// The secret file of `device` in `dir`.
fn secret_path(dir: &Path, device: &DeviceId) -> PathBuf {
    dir.join(format!("device.{device}.secret"))
}

/// Where the device remembers the last alert it received (its stream sequence).
fn cursor_path(dir: &Path, device: &DeviceId) -> PathBuf {
    dir.join(format!("device.{device}.cursor"))
}

/// `hru device pair`: a new identity for the device, its secret file and its directory entry.
pub(crate) fn pair(device: &str, out: &Path) -> anyhow::Result<ExitCode> {
    let device: DeviceId = device.parse().context("--device")?;
    hru_envelope::create_private_dir(out).with_context(|| format!("creating {}", out.display()))?;
    let path = secret_path(out, &device);
    if path.exists() {
        bail!(
            "{} exists; refusing to overwrite a device's identity (unpair it first: remove its [[device]] entry)",
            path.display()
        );
    }
    let secret = DeviceSecret::generate(device, &mut rand_core::OsRng);
    crate::keys::write_private(&path, &secret.to_toml())?;
    eprintln!(
        "wrote {} (mode 0600): install it on the device. Add the entry below to directory.toml, then \
         regenerate the broker authorization (`hru policy nats-config`, reload nats-server) and run \
         `hru log provision` to create the device's stream.",
        path.display()
    );
    print!("{}", secret.directory_entry());
    Ok(ExitCode::SUCCESS)
}

/// `hru device alerts`: receive what the device has not received yet.
pub(crate) async fn alerts(
    url: &str,
    policies_dir: &Path,
    device: &str,
    keys_dir: &Path,
    wait_s: u64,
) -> anyhow::Result<ExitCode> {
    let device: DeviceId = device.parse().context("--device")?;
    let directory = crate::policies::directory(policies_dir)?;
    let path = secret_path(keys_dir, &device);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}; pair the device with `hru device pair --device {device} --out {}`",
            path.display(),
            keys_dir.display()
        )
    })?;
    let secret = DeviceSecret::from_toml(&text, &path.display().to_string())?;
    let cursor_file = cursor_path(keys_dir, &device);
    let mut cursor: u64 = match std::fs::read_to_string(&cursor_file) {
        Ok(t) => t.trim().parse().with_context(|| {
            format!(
                "{}: not a stream sequence; remove it to receive everything again",
                cursor_file.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("reading {}", cursor_file.display())),
    };
    let stream = hru_log::DeviceAlerts::open(url, &secret.nats_seed, device.as_str()).await?;
    let deadline = Instant::now() + Duration::from_secs(wait_s);
    let mut received = 0u64;
    loop {
        for entry in stream.after(cursor).await? {
            let shown = match hru_geofence::service::verify_alert(&entry.payload, &directory) {
                Ok(alert) => {
                    let kind = hru_wire::v1::BreachKind::try_from(alert.kind)
                        .map_or_else(|_| alert.kind.to_string(), |k| k.as_str_name().to_owned());
                    let breach = uuid::Uuid::from_slice(&alert.breach_id)
                        .map(|u| u.to_string())
                        .unwrap_or_default();
                    json!({"sequence": entry.sequence, "breach_id": breach, "kind": kind,
                           "distance_m": alert.distance_m, "at_ms": alert.at_ms})
                }
                // Shown as refused, never as an alert: the device does not act on it.
                Err(e) => json!({"sequence": entry.sequence, "refused": e.to_string()}),
            };
            println!("{shown}");
            let receipt =
                json!({"alert_sequence": entry.sequence, "received_at_ms": jiff::Timestamp::now().as_millisecond()});
            stream
                .receipt(&format!("receipt:{}", entry.sequence), receipt.to_string().into())
                .await?;
            // Remembered only once the receipt is stored: a crash before shows it again.
            crate::keys::write_private(&cursor_file, &entry.sequence.to_string())?;
            cursor = entry.sequence;
            received += 1;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{received} alerts received for device {device}");
    Ok(ExitCode::SUCCESS)
}
