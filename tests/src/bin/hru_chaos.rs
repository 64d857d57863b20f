//! `hru-chaos --episodes N --seed S [--sync-default]`: N episodes of random faults (partitions,
//! pauses, kills) on a 3-node cluster with the nodes taking writes, then every operation's
//! outcome checked against the log. Prints the counts per fault kind and the verdict; exits 1
//! when a safety check fails, printing the seed and where the history is.

use std::process::ExitCode;

fn usage(problem: &str) -> ExitCode {
    eprintln!("hru-chaos: {problem}\nusage: hru-chaos --episodes N --seed S [--sync-default]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut options = hru_tests::chaos::Options {
        episodes: 20,
        seed: 1,
        sync_always: true,
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
