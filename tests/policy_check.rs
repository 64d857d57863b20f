//! `hru policy check`: each broken fixture in policies/tests prints its expected report and
//! exits 1; the real agreement and directory pass with exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

fn check(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(hru_tests::hru_bin())
        .current_dir(root())
        .args(["policy", "check"])
        .args(args)
        .output()
        .expect("runs hru");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_broken_fixture_prints_its_expected_report() {
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(root().join("policies/tests"))
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !p.ends_with("directory.toml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 10, "at least ten kinds of error have fixtures");
    let mut kinds = std::collections::BTreeSet::new();
    for f in &fixtures {
        let rel = f.strip_prefix(root()).expect("inside the repo").display().to_string();
        let (code, stdout, stderr) = check(&[&rel]);
        let expected = std::fs::read_to_string(f.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{rel} has a .expected file"));
        assert_eq!(code, Some(1), "{rel}: exit 1\n{stdout}{stderr}");
        assert_eq!(stdout, expected, "{rel}: report differs from its .expected file");
        let first = stdout.lines().next().expect("one error line");
        assert!(
            first.starts_with(&format!("{rel}:")),
            "{rel}: the error names the file: {first}"
        );
        assert!(stdout.contains("  hint: "), "{rel}: the error has a hint");
        kinds.insert(
            first
                .split("error[")
                .nth(1)
                .and_then(|k| k.split(']').next())
                .expect("kind")
                .to_owned(),
        );
    }
    assert!(kinds.len() >= 10, "distinct kinds: {kinds:?}");
}

#[test]
fn the_real_policies_pass() {
    let (code, stdout, stderr) = check(&[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("ok: policies/cheshire-hru.toml: cheshire-hru v1"),
        "{stdout}"
    );
}

#[test]
fn json_reports_one_object_per_error() {
    let (code, stdout, _) = check(&["--format", "json", "policies/tests/unknown-party.toml"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout.lines().next().expect("a line")).expect("json");
    assert_eq!(v["kind"], "unknown-party");
    assert_eq!(v["file"], "policies/tests/unknown-party.toml");
    assert!(v["hint"].as_str().expect("hint").contains("probation"));
}
