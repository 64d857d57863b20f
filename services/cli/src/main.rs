//! The `hru` operator binary.

fn main() -> std::process::ExitCode {
    hru_cli::main()
}
