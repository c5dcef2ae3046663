//! The operator's tools, one module each: `check`, `send`, `tail`, `redrive`,
//! `spool drain`, plus `completions` and `man`, which only print what clap
//! knows of the CLI. Plain
//! `apizee-bridge`, without a subcommand, serves (see `main.rs`).

pub mod check;
pub mod redrive;
pub mod send;
pub mod spool;
pub mod tail;

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::config::{Cli, Command};

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
