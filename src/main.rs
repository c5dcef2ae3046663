use std::process::ExitCode;

use apizee_bridge::commands::Cli;
use apizee_bridge::settings::{ServiceArgs, Settings};
use clap::Parser;

// Every webhook allocates its body, its headers and its answer, freed a few
// milliseconds later on whichever worker thread: glibc's malloc spent 16 %
// of the bridge's CPU on that under load (perf, benches/load.sh), mimalloc's
// thread-local free lists much less (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first paragraph names the flag, the problem and the
            // allowed values; the usage text after it would bury that in a
            // log, so it becomes one line.
            let rendered = e.render().to_string();
            let summary: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|line| !line.is_empty())
                .collect();
            eprintln!("apizee-bridge: {} (see --help)", summary.join(" "));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        None => serve(cli.service),
        Some(command) => apizee_bridge::commands::run(command),
    }
}

/// `apizee-bridge` without a subcommand.
fn serve(args: ServiceArgs) -> ExitCode {
    let settings = match Settings::from_args(args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("apizee-bridge: error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = apizee_bridge::logging::init(settings.log_format, &settings.log_level) {
        eprintln!("apizee-bridge: error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("apizee-bridge: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let serve = async {
        let listeners = apizee_bridge::Listeners::bind(&settings.http).await?;
        apizee_bridge::run(settings, listeners, apizee_bridge::shutdown::signal()).await
    };
    match runtime.block_on(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("apizee-bridge: error: {e}");
            ExitCode::FAILURE
        }
    }
}
