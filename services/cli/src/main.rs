//! The `hru` operator binary: parses arguments, sets up logs on stderr, runs the command.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HRU_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    hru_cli::run(hru_cli::Cli::parse()).await
}
