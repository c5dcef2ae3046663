//! `apizee-bridge redrive`: reads the dead-letter topic (or subject), checks
//! each dead letter's body again with the current rules, and republishes the
//! ones that now pass to their topic, as the bridge would have published
//! them: same topic, key, headers, and the same event id (a hash of the
//! body), so JetStream de-duplicates a webhook the sender also retried and
//! consumers can de-duplicate on `apizee-event-id`. The others are left
//! where they are. A dry run unless `--apply`.
//!
//! On NATS a redriven dead letter is deleted from its stream once its
//! republish is acknowledged, so a second run does not republish it. Kafka
//! cannot delete one record: a second run republishes again (same event
//! id), and `--after OFFSETS` skips what an earlier run did.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::envelope::{self, EnvelopeError};
use crate::route::{self, Message};
use crate::settings::{ServiceArgs, Settings};
use crate::shutdown::Tasks;
use crate::sink::redrive::{Position, Stored};
use crate::sink::{Sink, SinkSettings};

/// `apizee-bridge redrive`.
#[derive(Debug, clap::Args)]
pub struct RedriveArgs {
    /// Republish the dead letters that now pass (without it, only say which
    /// would be).
    #[arg(long)]
    pub apply: bool,

    /// Read at most this many dead letters.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub limit: usize,

    /// Kafka: start after these offsets, as printed by an earlier run
    /// (`PARTITION:OFFSET,...`).
    #[arg(long, value_name = "OFFSETS")]
    pub after: Option<String>,

    #[command(flatten)]
    pub service: ServiceArgs,
}

pub fn main(args: RedriveArgs) -> ExitCode {
    let settings = match Settings::from_args(args.service) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("apizee-bridge redrive: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(topic) = settings.dead_letter.as_ref().map(|d| d.topic.clone()) else {
        eprintln!(
            "apizee-bridge redrive: set --dead-letter-topic: the topic the bridge publishes \
             dead letters to"
        );
        return ExitCode::from(2);
    };
    let after = match args.after.as_deref().map(parse_offsets).transpose() {
        Ok(after) => after.unwrap_or_default(),
        Err(e) => {
            eprintln!("apizee-bridge redrive: invalid --after: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(redrive(&settings, &topic, args.apply, args.limit, &after)) {
        Ok(report) => {
            println!("{report}");
            if report.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("apizee-bridge redrive: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_offsets(text: &str) -> Result<BTreeMap<i32, i64>, String> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (partition, offset) = part
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("{part:?}: expected PARTITION:OFFSET"))?;
            Ok((
                partition.parse().map_err(|e| format!("{part:?}: {e}"))?,
                offset.parse().map_err(|e| format!("{part:?}: {e}"))?,
            ))
        })
        .collect()
}

/// What a run found and did.
#[derive(Debug, Default)]
pub struct Report {
    pub read: usize,
    pub passing: usize,
    pub redriven: usize,
    pub still_refused: usize,
    pub failed: usize,
    pub apply: bool,
    /// Kafka: the last offset read per partition, for `--after`.
    pub last: BTreeMap<i32, i64>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} dead letters read: {} pass now ({}), {} still refused, left in place",
            self.read,
            self.passing,
            if self.apply {
                format!("{} republished, {} failed", self.redriven, self.failed)
            } else {
                "a dry run: --apply republishes them".to_owned()
            },
            self.still_refused
        )?;
        if !self.last.is_empty() {
            let offsets: Vec<String> = self
                .last
                .iter()
                .map(|(partition, offset)| format!("{partition}:{offset}"))
                .collect();
            write!(
                f,
                "\nread up to {}: --after {} skips them next time",
                offsets.join(","),
                offsets.join(",")
            )?;
        }
        Ok(())
    }
}

async fn redrive(
    settings: &Settings,
    topic: &str,
    apply: bool,
    limit: usize,
    after: &BTreeMap<i32, i64>,
) -> Result<Report, String> {
    let within = settings
        .delivery
        .startup_timeout
        .max(Duration::from_secs(1));
    let stored = match &settings.sink {
        SinkSettings::Nats(nats) => {
            crate::sink::nats::redrive::read(nats, topic, limit, within).await?
        }
        SinkSettings::Kafka(kafka) => {
            crate::sink::kafka::redrive::read(kafka, topic, limit, after, within).await?
        }
        SinkSettings::Stdout => {
            return Err("--sink stdout keeps no dead letters: redrive reads nats or kafka".into());
        }
    };
    let mut report = Report {
        apply,
        ..Report::default()
    };
    let root = tokio_util::sync::CancellationToken::new();
    let tasks = Tasks::new(&root);
    let sink: Option<Arc<dyn Sink>> = if apply && stored.iter().any(|s| passes(settings, s).is_ok())
    {
        let sink = settings
            .sink
            .start(&prometheus::Registry::new(), &tasks)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + within;
        while !sink.is_ready() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(sink)
    } else {
        None
    };
    let mut redriven = Vec::new();
    for dead in &stored {
        report.read += 1;
        if let Position::Offset { partition, offset } = dead.position {
            report.last.insert(partition, offset);
        }
        let message = match passes(settings, dead) {
            Ok(message) => message,
            Err(reason) => {
                report.still_refused += 1;
                let was = dead.reason.as_deref().unwrap_or("refused");
                println!("refused  {} (was {was}): {reason}", dead.position);
                continue;
            }
        };
        report.passing += 1;
        let Some(sink) = &sink else {
            println!(
                "passes   {}: would go to {} as {}",
                dead.position, message.topic, message.event_id
            );
            continue;
        };
        let published =
            tokio::time::timeout(settings.delivery.publish_timeout, sink.publish(&message))
                .await
                .unwrap_or(Err(crate::sink::PublishError::Timeout(
                    settings.delivery.publish_timeout,
                )));
        match published {
            Ok(()) => {
                report.redriven += 1;
                redriven.push(dead.position);
                println!(
                    "redriven {}: to {} as {}",
                    dead.position, message.topic, message.event_id
                );
            }
            Err(e) => {
                report.failed += 1;
                println!("failed   {}: {e}", dead.position);
            }
        }
    }
    if let Some(sink) = &sink {
        let _ = sink.flush().await;
    }
    if let SinkSettings::Nats(nats) = &settings.sink {
        crate::sink::nats::redrive::remove(nats, topic, &redriven, within).await?;
    }
    tasks
        .stop(tokio::time::Instant::now() + Duration::from_secs(1))
        .await;
    root.cancel();
    Ok(report)
}

/// The message the bridge would publish for this body today, or why not.
fn passes(settings: &Settings, dead: &Stored) -> Result<Message, String> {
    let envelope = envelope::parse(&dead.payload, settings.routing.rules).map_err(|e| match e {
        EnvelopeError::Malformed(reason) => format!("not JSON: {reason}"),
        EnvelopeError::Invalid(problems) => problems
            .iter()
            .map(|p| format!("{} {}", p.field, p.problem))
            .collect::<Vec<_>>()
            .join("; "),
    })?;
    route::build_message(
        &envelope,
        dead.payload.clone(),
        &settings.routing.template,
        settings.routing.cloudevents.as_ref(),
        SystemTime::now(),
    )
    .map_err(|e| e.to_string())
}
