//! `hru bench`: our rates beside the raw building blocks, measured in the same run.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ed25519_dalek::Signer as _;
use hru_domain::{CaseId, EventType, PlainSection, ProducerId};
use hru_envelope::fixture::Cast;
use hru_envelope::{KeyRing, Sealer, StaticAudiences, verify};
use serde_json::json;

use crate::Format;

/// Run `op` repeatedly for about `seconds`; returns operations per second.
fn rate(seconds: f64, mut op: impl FnMut(u64)) -> f64 {
    for i in 0..64 {
        op(i);
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            op(n);
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A 1 KiB event: two 512-byte sections.
fn sections() -> Vec<PlainSection> {
    vec![
        PlainSection {
            name: "core",
            bytes: vec![0x5a; 512],
        },
        PlainSection {
            name: "narrative",
            bytes: vec![0xa5; 512],
        },
    ]
}

pub(crate) fn seal(seconds: f64, format: Format) -> anyhow::Result<ExitCode> {
    let cast = Cast::new(7);
    let four = [&cast.police, &cast.probation, &cast.cwp, &cast.mersey_care].map(|p| p.party.clone());
    let policy = StaticAudiences::new("bench", 1)
        .share(EventType::ReferralReceived, "core", &four)
        .share(EventType::ReferralReceived, "narrative", &four);
    let producer = ProducerId {
        party: cast.police.party.clone(),
        instance: "bench".into(),
    };
    let mut sealer = Sealer::new(producer, cast.police.signing.clone());
    let now = jiff::Timestamp::now().as_millisecond();
    let case = CaseId::random();
    // A userspace CSPRNG seeded from the OS, as the services use: no syscall per nonce.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();

    let digest = [7u8; 32];
    let signature = cast.police.signing.sign(&digest);
    let public = cast.police.signing.verifying_key();
    let raw_sign = rate(seconds, |_| {
        black_box(cast.police.signing.sign(black_box(&digest)));
    });
    let raw_verify = rate(seconds, |_| {
        black_box(public.verify_strict(black_box(&digest), &signature)).ok();
    });

    // Warm the epochs, then keep a pool of sealed events for the open measurement.
    let mut ring = KeyRing::new(&cast.probation);
    let mut pool = Vec::new();
    for _ in 0..256 {
        for e in sealer.seal_event(
            case,
            EventType::ReferralReceived,
            sections(),
            now,
            now,
            &policy,
            &cast.directory,
            &mut rng,
        )? {
            let v = verify(&e.bytes, &cast.directory)?;
            if v.header.event_type == EventType::KeyGranted {
                ring.ingest_grant(&v)?;
            } else {
                pool.push(e.bytes);
            }
        }
    }
    let mut failed = None;
    let seal_rate = rate(seconds, |_| {
        match sealer.seal_event(
            case,
            EventType::ReferralReceived,
            sections(),
            now,
            now,
            &policy,
            &cast.directory,
            &mut rng,
        ) {
            Ok(e) => {
                black_box(e);
            }
            Err(e) => failed = Some(e),
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let mut opened_ok = true;
    let open_rate = rate(seconds, |i| {
        let bytes = &pool[i as usize % pool.len()];
        match verify(bytes, &cast.directory) {
            Ok(v) => opened_ok &= ring.open(&v).sections.iter().all(|s| s.plaintext.is_ok()),
            Err(_) => opened_ok = false,
        }
    });
    anyhow::ensure!(opened_ok, "an event of the pool did not open");

    let seal_ratio = seal_rate / raw_sign;
    let open_ratio = open_rate / raw_verify;
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "bench": "seal",
                "event_bytes": 1024, "sections": 2, "audience_size": 4,
                "raw_sign_per_s": raw_sign.round(), "seal_per_s": seal_rate.round(), "seal_ratio": seal_ratio,
                "raw_verify_strict_per_s": raw_verify.round(), "open_per_s": open_rate.round(), "open_ratio": open_ratio,
            })
        ),
        Format::Human => {
            println!("hru bench seal — 1 KiB event, 2 sections, 4-party audiences, one core");
            println!("  raw ed25519 sign           {raw_sign:>10.0} /s");
            println!("  seal (encrypt + sign)      {seal_rate:>10.0} /s   {seal_ratio:.2} × raw sign");
            println!("  raw ed25519 verify_strict  {raw_verify:>10.0} /s");
            println!("  open (verify + decrypt)    {open_rate:>10.0} /s   {open_ratio:.2} × raw verify_strict");
        }
    }
    Ok(ExitCode::SUCCESS)
}
