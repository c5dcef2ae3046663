//! `apizee-bridge check`: the configuration, the files it names, the spool,
//! and the broker, checked as serving would use them, one line each:
//!
//! ```text
//! ok    configuration: sink nats, topics apizee.{object}.{event}
//! FAIL  stream WEBHOOKS: does not capture the dead-letter subject apizee.dead-letter: ...
//! ```
//!
//! Exit status: 0 when nothing failed (warnings allowed), 1 when a check
//! failed, 2 when the configuration itself is wrong (as `serve` exits).
//! `--skip-broker` leaves the broker out, for a unit or an init container
//! that must not keep the bridge from starting while the broker is down:
//! the bridge waits for it (and, with `--spool-dir`, spools).

use std::process::ExitCode;
use std::time::Duration;

use crate::settings::{ServiceArgs, Settings};
use crate::sink::SinkSettings;
use crate::sink::check::{Finding, Status, Topics};
use crate::spool::Spool;

/// `apizee-bridge check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Check the configuration, its files and the spool, but do not reach
    /// the broker: for ExecStartPre= and init containers, where a broker
    /// that is down must not keep the bridge from starting.
    #[arg(long)]
    pub skip_broker: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Runs the checks, printing each line as it is known.
pub fn main(args: CheckArgs) -> ExitCode {
    let settings = match Settings::from_args(args.service) {
        Ok(settings) => settings,
        Err(e) => {
            println!("{}", Finding::fail("configuration", e.to_string()));
            return ExitCode::from(2);
        }
    };
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let mut failed = false;
    let mut report = |finding: Finding| {
        failed |= finding.status == Status::Fail;
        println!("{finding}");
    };
    for finding in local(&settings) {
        report(finding);
    }
    if args.skip_broker {
        report(Finding::ok("broker", "not checked (--skip-broker)"));
    } else {
        for finding in runtime.block_on(broker(&settings)) {
            report(finding);
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What needs no network: the settings (already checked, files read), who
/// may send, TLS, and the spool.
pub fn local(settings: &Settings) -> Vec<Finding> {
    let mut findings = vec![Finding::ok(
        "configuration",
        format!(
            "sink {}, topics {}, webhooks on {}{}",
            settings.sink.name(),
            settings.routing.template,
            settings.http.listen,
            settings.http.path,
        ),
    )];
    let guard = &settings.guard;
    let mut checks = Vec::new();
    if guard.source.is_some() {
        checks.push("source addresses (--allow-cidr)".to_owned());
    }
    if guard.user_agent.is_some() {
        checks.push("User-Agent".to_owned());
    }
    if let Some(secret) = &guard.shared_secret {
        checks.push(format!("shared secret in {}", secret.header()));
    }
    if guard.basic.is_some() {
        checks.push("HTTP Basic".to_owned());
    }
    if guard.signature.is_some() {
        checks.push("HMAC signature".to_owned());
    }
    findings.push(if checks.is_empty() {
        Finding::warn(
            "auth",
            "none: anyone who reaches --listen can publish; set --auth-header with \
             --auth-token, --basic-auth or --hmac-secret",
        )
    } else {
        Finding::ok("auth", checks.join(", "))
    });
    if let Some(tls) = &settings.tls {
        let clients = match &tls.files.client_ca {
            Some(ca) => format!("client certificates signed by {}", ca.display()),
            None => "no client certificates asked for".to_owned(),
        };
        findings.push(Finding::ok(
            "tls",
            format!("{} and its key loaded; {clients}", tls.files.cert.display()),
        ));
    }
    if let Some(spool) = &settings.spool {
        let dir = spool.dir.display();
        findings.push(match Spool::open(&spool.dir, spool.max_bytes) {
            Ok(opened) => Finding::ok(
                "spool",
                format!(
                    "{dir}: {} webhooks ({} bytes) waiting, room for {} bytes",
                    opened.len(),
                    opened.bytes(),
                    spool.max_bytes.saturating_sub(opened.bytes())
                ),
            ),
            // The error says what is wrong (locked by a running bridge,
            // damaged, unreadable) and what to do.
            Err(e) => Finding::fail("spool", format!("{dir}: {e}")),
        });
    }
    findings
}

/// Reaches the broker as serving would, waiting for it at most
/// `--startup-timeout` (as serving does before answering 503).
pub async fn broker(settings: &Settings) -> Vec<Finding> {
    let topics = Topics {
        all: settings.routing.template.all_topics(),
        dead_letter: settings.dead_letter.as_ref().map(|d| d.topic.as_str()),
    };
    let within = settings
        .delivery
        .startup_timeout
        .max(Duration::from_secs(1));
    match &settings.sink {
        SinkSettings::Stdout => vec![Finding::warn(
            "broker",
            "--sink stdout: nothing to reach, and nothing is stored; use --sink nats or kafka",
        )],
        SinkSettings::Nats(nats) => crate::sink::nats::check::run(nats, &topics, within).await,
        SinkSettings::Kafka(kafka) => crate::sink::kafka::check::run(kafka, &topics, within).await,
    }
}
