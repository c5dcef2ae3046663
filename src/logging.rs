//! Log set-up: human-readable lines by default, one JSON object per line with
//! `--log-format json`. Logs go to stderr, so the stdout sink's output stays
//! clean for piping.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
#[error("invalid --log-level {filter:?}: {reason}")]
pub struct LogSetupError {
    filter: String,
    reason: String,
}

pub fn init(format: LogFormat, filter: &str) -> Result<(), LogSetupError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| LogSetupError {
        filter: filter.to_owned(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; in a log pipeline
        // they are noise.
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Only fails if a subscriber is already installed, as in tests.
    let _ = result;
    Ok(())
}

/// Flags under "Logging" in `--help`.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "APIZEE_BRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax ("info", "apizee_bridge=debug").
    #[arg(long, env = "APIZEE_BRIDGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
