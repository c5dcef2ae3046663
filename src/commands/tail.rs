//! `apizee-bridge tail [PATTERN]`: prints the messages the bridge publishes
//! as they arrive, with their headers, from the configured broker, as
//! `vector tap` or `rpk topic consume` do. An operator watches webhooks
//! (and dead letters) arrive without writing a consumer.
//!
//! PATTERN is a NATS subject pattern (`apizee.ticket.*`, `apizee.>`) for
//! both brokers; on Kafka it selects the topics that exist when tail
//! starts. By default: the template's subjects and the dead-letter topic.

use std::process::ExitCode;

use crate::config::ConfigError;
use crate::dead_letter::DeadLetterArgs;
use crate::delivery::DeliveryArgs;
use crate::route::config::RouteArgs;
use crate::sink::kafka::config::KafkaArgs;
use crate::sink::nats::config::NatsArgs;
use crate::sink::tap::Tapped;
use crate::sink::{SinkContext, SinkKind, SinkSettings};

/// `apizee-bridge tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Subjects or topics to print, as a NATS subject pattern: `*` one
    /// token, `>` the rest. Repeat for several. Default: every subject the
    /// template produces, and --dead-letter-topic.
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,

    /// Output: text (a header line, the headers, the body) or json (one
    /// object per line: topic, key, headers, payload).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Kafka: start at the oldest message each partition keeps, instead of
    /// only what arrives from now on.
    #[arg(long)]
    pub from_beginning: bool,

    #[command(flatten, next_help_heading = "Validation and routing")]
    pub route: RouteArgs,
    #[command(flatten, next_help_heading = "Dead letters")]
    pub dead_letter: DeadLetterArgs,
    #[command(flatten, next_help_heading = "Delivery")]
    pub delivery: DeliveryArgs,
    #[command(flatten, next_help_heading = "NATS (--sink nats)")]
    pub nats: NatsArgs,
    #[command(flatten, next_help_heading = "Kafka (--sink kafka)")]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Prints `message` as `format` says.
fn print(message: &Tapped, format: Format) {
    match format {
        Format::Json => match serde_json::to_string(message) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("apizee-bridge tail: cannot print a message: {e}"),
        },
        Format::Text => {
            match &message.key {
                Some(key) => println!("{} key={key}", message.topic),
                None => println!("{}", message.topic),
            }
            for (name, value) in &message.headers {
                println!("  {name}: {value}");
            }
            println!("{}\n", String::from_utf8_lossy(&message.payload).trim_end());
        }
    }
}

pub fn main(args: TailArgs) -> ExitCode {
    let (sink, patterns) = match settings(
        args.route,
        args.dead_letter,
        &args.delivery,
        args.nats,
        args.kafka,
        args.patterns,
    ) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("apizee-bridge tail: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let (format, count, from_beginning) = (args.format, args.count, args.from_beginning);
    let print = move |message: Tapped| print(&message, format);
    let tapped = runtime.block_on(async {
        let tap = async {
            match &sink {
                SinkSettings::Nats(nats) => {
                    crate::sink::nats::tap::run(nats, &patterns, count, print).await
                }
                SinkSettings::Kafka(kafka) => {
                    crate::sink::kafka::tap::run(kafka, &patterns, count, from_beginning, print)
                        .await
                }
                SinkSettings::Stdout => Err("--sink stdout: the bridge prints its messages \
                                             itself; tail reads from nats or kafka"
                    .to_owned()),
            }
        };
        tokio::select! {
            result = tap => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    match tapped {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apizee-bridge tail: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The broker to read from and the patterns to read.
fn settings(
    route: RouteArgs,
    dead_letter: DeadLetterArgs,
    delivery: &DeliveryArgs,
    nats: NatsArgs,
    kafka: KafkaArgs,
    patterns: Vec<String>,
) -> Result<(SinkSettings, Vec<String>), ConfigError> {
    // Only the topics matter here, not what the messages carry.
    let routing = route.settings(None)?;
    let dead_letter = dead_letter.settings()?;
    let delivery_settings = delivery.settings()?;
    let context = SinkContext {
        template: &routing.template,
        dead_letter_topic: dead_letter.as_ref().map(|d| d.topic.as_str()),
        publish_timeout: delivery_settings.publish_timeout,
    };
    let sink = SinkSettings::new(delivery.sink, nats, kafka, &context)?;
    if delivery.sink == SinkKind::Stdout {
        return Ok((sink, patterns));
    }
    let patterns = if patterns.is_empty() {
        let mut defaults = vec![
            routing
                .template
                .subject_filter()
                .unwrap_or_else(|| ">".into()),
        ];
        if let Some(topic) = context.dead_letter_topic
            && !crate::route::subject_matches(&defaults[0], topic)
        {
            defaults.push(topic.to_owned());
        }
        defaults
    } else {
        patterns
    };
    Ok((sink, patterns))
}
