//! The `hru` operator binary: parses arguments, sets up logs on stderr, runs the command.

use clap::Parser as _;

/// Log filter (e.g. `info`, `hru_log=debug`).
const ENV_LOG: &str = "HRU_LOG";
/// Log format: `human` (default) or `json` (one object per line).
const ENV_LOG_FORMAT: &str = "HRU_LOG_FORMAT";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if std::env::var(ENV_LOG_FORMAT).is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    hru_cli::run(hru_cli::Cli::parse()).await
}
