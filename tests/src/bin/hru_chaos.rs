//! `hru-chaos --episodes N --seed S [--sync-default] [--only KIND,...]`: N episodes of random faults (partitions,
//! pauses, kills, full disks) on a 3-node cluster with the nodes taking writes and the geofence
//! following a simulated fleet, then every operation's outcome and every breach decision
//! checked against the log. Prints the counts per fault kind and the verdict; exits 1
//! when a safety check fails, printing the seed and where the history is.

use std::process::ExitCode;

fn usage(problem: &str) -> ExitCode {
    let kinds: Vec<&str> = hru_tests::chaos::Fault::ALL.iter().map(|f| f.name()).collect();
    eprintln!(
        "hru-chaos: {problem}\nusage: hru-chaos --episodes N --seed S [--sync-default] [--only KIND,...]\nkinds: {}",
        kinds.join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut options = hru_tests::chaos::Options {
        episodes: 20,
        seed: 1,
        sync_always: true,
        kinds: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--episodes" => {
                match value("--episodes").and_then(|v| v.parse().map_err(|e| format!("--episodes {v:?}: {e}"))) {
                    Ok(n) => options.episodes = n,
                    Err(e) => return usage(&e),
                }
            }
            "--seed" => match value("--seed").and_then(|v| v.parse().map_err(|e| format!("--seed {v:?}: {e}"))) {
                Ok(s) => options.seed = s,
                Err(e) => return usage(&e),
            },
            "--sync-default" => options.sync_always = false,
            "--only" => {
                let names = match value("--only") {
                    Ok(v) => v,
                    Err(e) => return usage(&e),
                };
                for name in names.split(',') {
                    match hru_tests::chaos::Fault::named(name.trim()) {
                        Some(kind) => options.kinds.push(kind),
                        None => return usage(&format!("--only: no fault kind is called {name:?}")),
                    }
                }
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let report = hru_tests::chaos::run(&options);
    println!("{report}");
    if report.verdict.safe() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
