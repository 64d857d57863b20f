//! What the cross-service tests share: a world of a real nats-server, a policies directory
//! and generated keys; the `hru` binary to run against it; node processes, mTLS channels,
//! free ports and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support fails by panicking

mod world;

pub use world::*;

/// The `hru` binary under test (the package's `hru-e2e` target: the `hru` binary's own code,
/// built by cargo beside the test executables).
pub fn hru_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/hru-e2e
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("a target directory");
    let bin = dir.join(format!("hru-e2e{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test -p hru-tests` (cargo builds it)",
        bin.display()
    );
    bin
}
