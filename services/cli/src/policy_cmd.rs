//! `hru policy`: check agreements, explain a party's page, generate the broker config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use hru_domain::PartyId;
use hru_envelope::Directory;
use hru_policy::{CompiledIsa, PolicyErrors};
use serde_json::json;

use crate::{Format, policies};

/// The agreement files a path names, and the directory file beside them.
fn agreement_files(path: &Path) -> anyhow::Result<(Vec<PathBuf>, PathBuf)> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "toml")
                    && p.file_name().is_some_and(|n| n != policies::DIRECTORY_FILE)
            })
            .collect();
        files.sort();
        Ok((files, path.join(policies::DIRECTORY_FILE)))
    } else {
        let parent = path.parent().unwrap_or(Path::new("."));
        Ok((vec![path.to_path_buf()], parent.join(policies::DIRECTORY_FILE)))
    }
}

fn load_directory(path: &Path) -> anyhow::Result<Option<Directory>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(Directory::from_toml(&text, &path.display().to_string())?))
}

/// `hru policy check`: every error of every file, exit 1 if any.
pub(crate) fn check(
    paths: &[PathBuf],
    default: &Path,
    directory_override: Option<&Path>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let paths = if paths.is_empty() {
        vec![default.to_path_buf()]
    } else {
        paths.to_vec()
    };
    let mut failed = false;
    for path in &paths {
        let (files, dir_file) = agreement_files(path)?;
        let directory = load_directory(directory_override.unwrap_or(&dir_file))?;
        if directory.is_none() {
            eprintln!(
                "note: no {} beside {}; party keys are not checked",
                policies::DIRECTORY_FILE,
                path.display()
            );
        }
        for file in files {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = file.display().to_string();
            match CompiledIsa::compile(&text, &name, directory.as_ref()) {
                Ok(isa) => {
                    for w in &isa.warnings {
                        report(format, "warning", &name, w.kind.name(), &w.message, &w.hint, 0, 0);
                    }
                    match format {
                        Format::Human => println!(
                            "ok: {name}: {} v{}, {} parties, {} grants, {} call rules",
                            isa.id,
                            isa.version,
                            isa.parties.len(),
                            isa.receipts.len(),
                            isa.calls.len()
                        ),
                        Format::Json => println!(
                            "{}",
                            json!({"file": name, "ok": true, "id": isa.id, "version": isa.version})
                        ),
                    }
                }
                Err(PolicyErrors(errors)) => {
                    failed = true;
                    for e in &errors {
                        report(
                            format,
                            "error",
                            &e.file,
                            e.kind.name(),
                            &e.message,
                            &e.hint,
                            e.line,
                            e.column,
                        );
                    }
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::from(crate::EXIT_FINDINGS)
    } else {
        ExitCode::SUCCESS
    })
}

#[allow(clippy::too_many_arguments)]
fn report(format: Format, level: &str, file: &str, kind: &str, message: &str, hint: &str, line: usize, column: usize) {
    match format {
        Format::Human => {
            let at = if line > 0 {
                format!("{file}:{line}:{column}")
            } else {
                file.to_owned()
            };
            println!("{at}: {level}[{kind}]: {message}");
            if !hint.is_empty() {
                println!("  hint: {hint}");
            }
        }
        Format::Json => println!(
            "{}",
            json!({"level": level, "file": file, "line": line, "column": column, "kind": kind, "message": message, "hint": hint})
        ),
    }
}

/// `hru policy explain --party P`: what P receives, from whom, why; what it shares; what it may call.
pub(crate) fn explain(policies_dir: &Path, party: &str, format: Format) -> anyhow::Result<ExitCode> {
    let party: PartyId = party.parse().context("--party")?;
    let directory = policies::directory(policies_dir)?;
    let set = policies::agreements(policies_dir, &directory)?;
    let isa = policies::in_force(&set, jiff::Timestamp::now().as_millisecond())?;
    let info = isa
        .parties
        .get(&party)
        .ok_or_else(|| anyhow!("{party} is not a party to {} v{}", isa.id, isa.version))?;
    let basis_text = |clause: &str| -> String {
        isa.clauses.get(clause).map_or_else(String::new, |(_, bases)| {
            bases
                .iter()
                .map(|b| isa.bases.get(b).cloned().unwrap_or_else(|| b.clone()))
                .collect::<Vec<_>>()
                .join("; ")
        })
    };
    let received: Vec<_> = isa.received_by(&party).collect();
    let mut shares: Vec<(String, String, Vec<String>)> = isa
        .audiences()
        .filter(|(p, ..)| **p == party)
        .map(|(_, t, s, a)| {
            (
                t.to_string(),
                s.to_owned(),
                a.members().iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    shares.sort();
    let calls: Vec<_> = isa.calls.iter().filter(|c| c.party == party).collect();
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "agreement": isa.id, "version": isa.version, "digest": hex::encode(isa.digest),
                "party": party.as_str(), "controller": info.controller, "role": info.role.name(),
                "receives": received.iter().map(|r| json!({
                    "event": r.event_type.name(), "section": r.section, "from": r.producer.as_str(),
                    "purpose": r.purpose, "clause": r.clause, "basis": basis_text(&r.clause),
                })).collect::<Vec<_>>(),
                "shares": shares.iter().map(|(t, s, to)| json!({"event": t, "section": s, "to": to})).collect::<Vec<_>>(),
                "calls": calls.iter().map(|c| json!({"method": c.method, "on": callee(&c.on), "purpose": c.purpose, "clause": c.clause})).collect::<Vec<_>>(),
            })
        ),
        Format::Human => {
            println!("{} v{} — {}", isa.id, isa.version, isa.title);
            println!("sha256 {}", hex::encode(isa.digest));
            println!("\nParty {party}: {} ({})", info.role.name(), info.controller);
            println!("\nReceives ({} grants):", received.len());
            for r in &received {
                println!("  {}.{} from {}", r.event_type, r.section, r.producer);
                println!(
                    "      purpose {}, clause {} — {}",
                    r.purpose,
                    r.clause,
                    basis_text(&r.clause)
                );
            }
            println!("\nSeals and shares:");
            for (t, s, to) in &shares {
                println!("  {t}.{s} → {}", to.join(", "));
            }
            println!("\nMay call:");
            if calls.is_empty() {
                println!("  nothing");
            }
            for c in &calls {
                println!(
                    "  {} on {} node for {} (clause {})",
                    c.method,
                    match &c.on {
                        hru_policy::Callee::Own => "its own".to_owned(),
                        hru_policy::Callee::Party(p) => format!("{p}'s"),
                    },
                    c.purpose,
                    c.clause
                );
            }
            println!("\nEverything else is refused (deny by default).");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A callee as the agreement file spells it.
fn callee(on: &hru_policy::Callee) -> String {
    match on {
        hru_policy::Callee::Own => "own".to_owned(),
        hru_policy::Callee::Party(p) => p.to_string(),
    }
}

/// `hru policy nats-config --out FILE`.
pub(crate) fn nats_config_cmd(policies_dir: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let directory = policies::directory(policies_dir)?;
    let set = policies::agreements(policies_dir, &directory)?;
    let isa = policies::in_force(&set, jiff::Timestamp::now().as_millisecond())?;
    let accounts = isa.broker_accounts(&directory).map_err(|e| anyhow!(e))?;
    let config = hru_broker::nats_config(&isa.broker_rights(), &accounts);
    std::fs::write(out, config).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {} for {} v{}", out.display(), isa.id, isa.version);
    Ok(ExitCode::SUCCESS)
}

/// `hru policy adopt`: seal and append a PolicyAdopted event for the agreement in force.
pub(crate) async fn adopt(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    instance: &str,
) -> anyhow::Result<ExitCode> {
    use prost::Message as _;
    let party: PartyId = party.parse().context("--party")?;
    let mut p = crate::producer_state::PartyProducer::open(nats, policies_dir, keys_dir, &party, instance).await?;
    let isa = p.isa.clone();
    let body = hru_wire::v1::PolicyAdopted {
        policy_id: isa.id.clone(),
        version: isa.version,
        digest: isa.digest.to_vec(),
        effective_from_ms: isa.effective_from_ms,
    };
    let (seq, _) = p
        .append_public(hru_domain::EventType::PolicyAdopted, body.encode_to_vec())
        .await?;
    println!(
        "{seq}\tPolicyAdopted\t{} v{}\tsha256 {}",
        isa.id,
        isa.version,
        hex::encode(isa.digest)
    );
    Ok(ExitCode::SUCCESS)
}
