//! `apizee-bridge spool drain`: delivers a spool that no bridge will
//! replay, the one a replica scaled away left on its volume, then exits.
//!
//! It reads the bridge's own flags and environment (the same ConfigMap,
//! the same unit file), opens `--spool-dir` as the bridge would, and hands
//! it to [`Delivery::drain_spool`], the replay the bridge runs at SIGTERM:
//! oldest first, many publishes in flight but at most one per objectId,
//! and an event removed only once the broker acknowledged it. Waiting for
//! the broker and delivering share `--timeout`; a broker that goes away
//! meanwhile is waited for again. What is not delivered by then stays on
//! disk, and the exit status says so:
//!
//! - 0: the spool is empty (or there was none: a directory without a spool
//!   is left as it was, no spool is made in it);
//! - 1: events are left (the broker was unreachable, refused them, or
//!   `--timeout` passed), or the spool could not be opened (locked by a
//!   running bridge, damaged): nothing was lost, run it again once fixed;
//! - 2: the configuration is wrong (as serving exits).

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::parse_duration;
use crate::delivery::Delivery;
use crate::settings::{ServiceArgs, Settings};
use crate::shutdown::Tasks;
use crate::sink::{Sink, SinkSettings};
use crate::spool::{Spool, SpoolError};

const NAME: &str = "apizee-bridge spool drain";

/// How often a drain prints how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often the sink is looked at while the broker is awaited.
const READY_POLL: Duration = Duration::from_millis(50);
/// What the sink's flush and its tasks get once the drain is over.
const CLOSE_AT_MOST: Duration = Duration::from_secs(5);

/// `apizee-bridge spool ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SpoolCommand {
    /// Delivers to the broker what the spool in --spool-dir holds, oldest
    /// first and in order per objectId, then exits: 0 once the spool is
    /// empty (or there is none), 1 with events left on disk (broker
    /// unreachable, --timeout passed, spool locked by a running bridge or
    /// damaged; nothing is lost: fix it and run it again). For the spool a
    /// replica scaled away left on its volume: a Kubernetes Job on the
    /// orphaned claim (the Helm chart's spool.drain.ordinals). Takes
    /// every flag the bridge serves with.
    Drain(Box<DrainArgs>),
}

/// `apizee-bridge spool drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// How long the drain may take, waiting for the broker included. What
    /// is not delivered by then stays in the spool, and the exit status is
    /// 1.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_SPOOL_DRAIN_TIMEOUT",
        default_value = "10m",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    pub timeout: Duration,

    #[command(flatten)]
    pub service: ServiceArgs,
}

pub fn main(command: SpoolCommand) -> ExitCode {
    match command {
        SpoolCommand::Drain(args) => drain_main(*args),
    }
}

fn drain_main(args: DrainArgs) -> ExitCode {
    let settings = match Settings::from_args(args.service) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(spool_settings) = settings.spool.clone() else {
        eprintln!(
            "{NAME}: set --spool-dir (APIZEE_BRIDGE_SPOOL_DIR): the directory of the spool to \
             deliver"
        );
        return ExitCode::from(2);
    };
    if matches!(settings.sink, SinkSettings::Stdout) {
        eprintln!(
            "{NAME}: --sink stdout stores nothing: set --sink nats or kafka, with the settings \
             of the bridge that spooled these webhooks"
        );
        return ExitCode::from(2);
    }
    if let Err(e) = crate::logging::init(settings.log_format, &settings.log_level) {
        eprintln!("{NAME}: {e}");
        return ExitCode::from(2);
    }
    let dir = spool_settings.dir.as_path();
    if !Spool::exists_in(dir) {
        // Left as it was: a spool made here would say a replica was there.
        println!(
            "spool {}: there is no spool here, nothing to deliver",
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    let spool = match Spool::open(dir, spool_settings.max_bytes) {
        Ok(spool) => spool,
        Err(e @ SpoolError::Locked { .. }) => {
            eprintln!(
                "{NAME}: {e}. Nothing was changed. A running bridge delivers its own spool once \
                 its broker is back; to drain this one here, stop that bridge first (scale the \
                 StatefulSet down, systemctl stop apizee-bridge) and run this again"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if spool.is_empty() {
        println!("spool {}: empty, nothing to deliver", dir.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let timeout = args.timeout;
    println!(
        "spool {}: {} webhooks ({} bytes) to deliver to {} within {}",
        dir.display(),
        spool.len(),
        spool.bytes(),
        settings.sink.name(),
        humantime::format_duration(timeout)
    );
    let drained = runtime.block_on(drain(
        settings,
        Arc::new(spool),
        timeout,
        crate::shutdown::signal(),
    ));
    let report = match drained {
        Ok(report) => report,
        Err(e) => {
            eprintln!(
                "{NAME}: {e}; nothing was delivered, and the webhooks stay in {}",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    println!(
        "delivered {}, left {} in {:.1} s",
        report.delivered,
        report.left,
        report.took.as_secs_f64()
    );
    match report.end {
        End::Empty => {
            println!("spool {}: empty, every webhook delivered", dir.display());
            ExitCode::SUCCESS
        }
        end => {
            eprintln!("{NAME}: {}", end.advice(&report, dir, timeout));
            ExitCode::FAILURE
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Empty,
    /// The broker was never ready.
    Unreachable,
    /// `--timeout` passed with events left.
    TimedOut,
    /// SIGTERM or SIGINT.
    Interrupted,
}

impl End {
    /// What to do about events left, in a sentence or two.
    fn advice(self, report: &Report, dir: &Path, timeout: Duration) -> String {
        let kept = format!(
            "nothing is lost: the {} webhooks left stay in {}",
            report.left,
            dir.display()
        );
        let timeout = humantime::format_duration(timeout);
        match self {
            End::Empty => String::new(),
            End::Unreachable => format!(
                "the broker (--sink {}) was not reachable within --timeout {timeout}; {kept}. \
                 Make it reachable (`apizee-bridge check` with the same settings says what \
                 fails) and run this again",
                report.sink
            ),
            End::TimedOut => format!(
                "--timeout {timeout} passed before the spool was empty; {kept}. Run this again, \
                 with a longer --timeout if it was making progress; if it was not, the log \
                 above says why the broker did not take them"
            ),
            End::Interrupted => format!("stopped by a signal; {kept}. Run this again"),
        }
    }
}

struct Report {
    sink: &'static str,
    delivered: u64,
    left: u64,
    took: Duration,
    end: End,
}

/// Connects the sink, then delivers `spool` until it is empty, `timeout`,
/// or `shutdown`.
async fn drain(
    settings: Settings,
    spool: Arc<Spool>,
    timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, String> {
    let started = Instant::now();
    let deadline = started + timeout;
    let waiting = spool.len();
    let root = CancellationToken::new();
    let sink_tasks = Tasks::new(&root);
    // Nothing scrapes a drain; the parts still register their metrics.
    let registry = prometheus::Registry::new();
    let sink = settings
        .sink
        .start(&registry, &sink_tasks)
        .await
        .map_err(|e| e.to_string())?;
    let delivery = Delivery::new(
        sink.clone(),
        Some(spool.clone()),
        settings.delivery,
        &registry,
    )
    .map_err(|e| format!("cannot set up metrics: {e}"))?;

    let work = async {
        let mut reached = false;
        loop {
            if spool.is_empty() {
                return End::Empty;
            }
            if !wait_ready(sink.as_ref(), deadline).await {
                return if reached {
                    End::TimedOut
                } else {
                    End::Unreachable
                };
            }
            if !reached {
                println!("broker reached: delivering");
                reached = true;
            }
            // Until the spool is empty, the broker is lost, or the
            // deadline; a broker lost is waited for again.
            delivery.drain_spool(deadline).await;
            if Instant::now() >= deadline {
                return if spool.is_empty() {
                    End::Empty
                } else {
                    End::TimedOut
                };
            }
        }
    };
    let progress = async {
        let mut tick = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
        loop {
            tick.tick().await;
            let left = spool.len();
            println!("delivered {}, left {left}", waiting.saturating_sub(left));
        }
    };
    // Dropped at a signal with publishes in flight: their events stay on
    // disk and are sent again by the next run, with the same event ids.
    let end = tokio::select! {
        end = work => end,
        () = progress => unreachable!("progress never ends"),
        () = shutdown => End::Interrupted,
    };
    let close = Instant::now() + CLOSE_AT_MOST;
    match tokio::time::timeout_at(close, sink.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing the sink failed"),
        Err(_) => tracing::warn!("flushing the sink timed out"),
    }
    sink_tasks.stop(close).await;
    root.cancel();
    let left = spool.len();
    Ok(Report {
        sink: sink.name(),
        delivered: waiting.saturating_sub(left),
        left,
        took: started.elapsed(),
        end,
    })
}

/// Waits until the sink is ready or `deadline`; whether it is.
async fn wait_ready(sink: &dyn Sink, deadline: Instant) -> bool {
    while !sink.is_ready() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(READY_POLL).await;
    }
    true
}
