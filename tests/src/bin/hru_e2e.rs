//! The `hru` binary's code, built under the test package for the cross-service tests.

fn main() -> std::process::ExitCode {
    hru_cli::main()
}
