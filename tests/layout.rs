//! The workspace's shape, as the design contract gives it: only the broker crate spells a
//! subject (`"hru.…"` or `"$JS.…"` string literals), and the test kit is never a product
//! dependency.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// The workspace members' directories, from the root manifest.
fn members() -> Vec<PathBuf> {
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    manifest["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| root().join(m.as_str().unwrap()))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// String literals that spell a subject: `"hru.…"` (other than protobuf names `hru.v1.…` and
/// domain-separation tags, which end in NUL) and `"$JS.…"`, outside comments.
fn subject_literals(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for (at, _) in line.match_indices('"') {
            let rest = &line[at + 1..];
            let literal: String = rest.chars().take_while(|c| *c != '"').collect();
            let spells = (literal.starts_with("hru.") && !literal.starts_with("hru.v1.") && !literal.contains("\\0"))
                || literal.starts_with("$JS.");
            if spells {
                found.push((n + 1, literal));
            }
        }
    }
    found
}

#[test]
fn only_the_broker_crate_spells_subjects() {
    let broker = root().join("shared/broker");
    let mut offences = Vec::new();
    for member in members().into_iter().filter(|m| *m != broker) {
        let mut files = Vec::new();
        rust_files(&member.join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (line, literal) in subject_literals(&text) {
                offences.push(format!(
                    "{}:{line}: \"{literal}\"",
                    file.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "subjects are spelled only in shared/broker (use hru_broker::Subject or Filter):\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_check_finds_what_it_looks_for() {
    let sample = "let s = format!(\"hru.evt.{}.>\", c);\nlet d = b\"hru.v1.header\\0\";\n// \"hru.evt\" in a comment\nlet api = \"$JS.API.INFO\";\nlet p = \"hru.v1.EventDraft\";\n";
    let found: Vec<usize> = subject_literals(sample).into_iter().map(|(n, _)| n).collect();
    assert_eq!(found, [1, 4]);
}

#[test]
fn test_support_is_only_ever_a_dev_dependency() {
    let mut offences = Vec::new();
    // The cross-service test member is itself test support, never shipped.
    for member in members().into_iter().filter(|m| *m != root().join("tests")) {
        let manifest: toml::Table = std::fs::read_to_string(member.join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let mut tables: Vec<(String, &toml::Value)> = ["dependencies", "build-dependencies"]
            .iter()
            .filter_map(|t| manifest.get(*t).map(|v| ((*t).to_owned(), v)))
            .collect();
        if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
            for (cfg, t) in targets {
                for kind in ["dependencies", "build-dependencies"] {
                    if let Some(v) = t.get(kind) {
                        tables.push((format!("target.{cfg}.{kind}"), v));
                    }
                }
            }
        }
        for (name, table) in tables {
            let member = member.strip_prefix(root()).unwrap().display();
            if table.get("hru-testkit").is_some() {
                offences.push(format!("{member}: [{name}] hru-testkit"));
            }
            let fixture_keys = table
                .get("hru-envelope")
                .and_then(|d| d.get("features"))
                .and_then(toml::Value::as_array)
                .is_some_and(|f| f.iter().any(|f| f.as_str() == Some("fixture")));
            if fixture_keys {
                offences.push(format!("{member}: [{name}] hru-envelope with the fixture feature"));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "test support (hru-testkit, hru-envelope's fixture keys) belongs in [dev-dependencies] only:\n{}",
        offences.join("\n")
    );
}

/// No secret the project writes can enter a Docker build context: `.dockerignore` excludes
/// every kind of file that holds one.
#[test]
fn the_build_context_holds_no_secret() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in [
        "deploy/generated",
        "**/keys",
        "**/*.secret",
        "**/*.secret.*",
        "**/*.key",
        "**/*.cursor",
        "**/*.producer",
        "**/*.wrap",
        "**/*.periods.toml",
        "**/periods.toml",
    ] {
        assert!(patterns.contains(&needed), ".dockerignore lacks {needed}");
    }
}
