//! The operator's tools, one module each: `check`, `send`, `tail`, `redrive`,
//! `spool drain`, plus `completions` and `man`, which only print what clap
//! knows of the CLI; and the command line itself ([`Cli`]): plain
//! `apizee-bridge`, without a subcommand, serves (see `main.rs`).

pub mod check;
pub mod redrive;
pub mod send;
pub mod spool;
pub mod tail;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::settings::ServiceArgs;

/// Receives Apizee (ApiRTC) webhooks and publishes each one to Kafka or NATS
/// (or to standard output, for development) on a topic named by object and event
/// (`apizee.ticket.update`), keyed by objectId. The sender gets a 2xx only
/// once the broker has the message.
///
/// Every flag can also be set with the environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(
    name = "apizee-bridge",
    version,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Without one, the bridge serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// The operator's tools; each is its own module here.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Checks the configuration and reaches the broker as serving would
    /// (connects, authenticates, finds the stream or topics, or whether they
    /// would be created), prints one line per check, and exits 1 naming what
    /// failed. For ExecStartPre= and init containers. Takes every flag the
    /// bridge serves with.
    Check(Box<check::CheckArgs>),
    /// Posts webhooks to a running bridge (--url), authenticated as the
    /// bridge's flags say it checks (shared secret, Basic, HMAC with or
    /// without a timestamp), and prints each answer. Without a FILE, one
    /// built-in sample of each object type.
    Send(Box<send::SendArgs>),
    /// Prints the messages the bridge publishes as they arrive, with their
    /// headers, from the configured broker: every subject the template
    /// produces and the dead-letter topic, or the PATTERNs given
    /// (`apizee.ticket.*`). Reads with the bridge's own broker flags.
    Tail(Box<tail::TailArgs>),
    /// Reads the dead-letter topic, checks each dead letter again with the
    /// current rules, and republishes the ones that now pass to their topic
    /// with their original event id; the others stay. A dry run unless
    /// --apply. Takes every flag the bridge serves with.
    Redrive(Box<redrive::RedriveArgs>),
    /// Works on the spool of --spool-dir without serving: `spool drain`
    /// delivers what a bridge left there (a replica scaled away) and exits.
    #[command(subcommand)]
    Spool(spool::SpoolCommand),
    /// Prints shell completions for SHELL on standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Prints the manual page (roff) on standard output.
    Man,
}

/// Runs one subcommand to completion.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Check(args) => check::main(*args),
        Command::Send(args) => send::main(*args),
        Command::Tail(args) => tail::main(*args),
        Command::Redrive(args) => redrive::main(*args),
        Command::Spool(command) => spool::main(command),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
            if shell == clap_complete::Shell::Bash {
                script = fix_bash_dispatch(&script);
            }
            let mut out = std::io::stdout().lock();
            flushed(out.write_all(&script).and_then(|()| out.flush()))
        }
        Command::Man => {
            let mut out = std::io::stdout().lock();
            let rendered = clap_mangen::Man::new(Cli::command()).render(&mut out);
            flushed(rendered.and_then(|()| out.flush()))
        }
    }
}

const BIN: &str = "apizee-bridge";

/// The runtime a tool runs on: one worker, since a tool does one thing at
/// a time, and librdkafka's blocking calls go to `spawn_blocking`.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("apizee-bridge: error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// clap_complete 4.6 spells a hyphenated binary's subcommand states two
/// ways in bash (the loop builds `apizee__bridge__subcmd__check`, the case
/// arms say `apizee__subcmd__bridge__subcmd__check`), so nothing past the
/// subcommand completes: clap-rs/clap#6421, open. The arms are respelt the
/// way the loop builds them; `tests/edge/cli.rs` completes a subcommand's
/// flag in a real bash, and fails if a release changes either spelling.
fn fix_bash_dispatch(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script)
        .replace(
            "apizee__subcmd__bridge__subcmd__",
            "apizee__bridge__subcmd__",
        )
        .into_bytes()
}

/// A closed pipe (`apizee-bridge man | head`) is the reader's choice, not
/// a failure worth a message; anything else is.
fn flushed(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apizee-bridge: error: cannot write to standard output: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_command_is_well_formed() {
        Cli::command().debug_assert();
    }
}
