//! Command-line flags (each with an `APIZEE_BRIDGE_*` env var), validated
//! once into [`Settings`]. Nothing downstream re-parses a string: a bad flag
//! fails at start-up with one line that names it.
//!
//! Each part of the service declares its own flags and turns them into its
//! own settings, in its own module ([`crate::http::config`],
//! [`crate::auth::config`], [`crate::tls::config`], [`crate::route::config`],
//! [`crate::dead_letter`], [`crate::delivery`], [`crate::spool`],
//! [`crate::sink::nats::config`], [`crate::sink::kafka::config`],
//! [`crate::otlp`], [`crate::logging`]); this module only puts them together, under one
//! heading each in `--help`.

use std::fmt;
use std::time::Duration;

use clap::Parser;

use crate::auth::Guard;
use crate::auth::config::AuthArgs;
use crate::dead_letter::{DeadLetter, DeadLetterArgs};
use crate::delivery::{DeliveryArgs, DeliverySettings};
use crate::http::config::{HttpArgs, HttpSettings};
use crate::logging::{LogArgs, LogFormat};
use crate::otlp::{OtlpArgs, OtlpSettings};
use crate::route::cloudevents::CloudEventsArgs;
use crate::route::config::{RouteArgs, Routing};
use crate::sink::kafka::config::KafkaArgs;
use crate::sink::nats::config::NatsArgs;
use crate::sink::{SinkContext, SinkSettings};
use crate::spool::{SpoolArgs, SpoolSettings};
use crate::tls::TlsSettings;
use crate::tls::config::TlsArgs;

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

/// Everything the service is configured with: what `apizee-bridge` serves
/// with, and what `apizee-bridge check` checks.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten, next_help_heading = "HTTP and limits")]
    pub http: HttpArgs,
    #[command(flatten, next_help_heading = "Authentication")]
    pub auth: AuthArgs,
    #[command(flatten, next_help_heading = "TLS")]
    pub tls: TlsArgs,
    #[command(flatten, next_help_heading = "Validation and routing")]
    pub route: RouteArgs,
    #[command(flatten, next_help_heading = "CloudEvents")]
    pub cloudevents: CloudEventsArgs,
    #[command(flatten, next_help_heading = "Dead letters")]
    pub dead_letter: DeadLetterArgs,
    #[command(flatten, next_help_heading = "Delivery")]
    pub delivery: DeliveryArgs,
    #[command(flatten, next_help_heading = "Spool")]
    pub spool: SpoolArgs,
    #[command(flatten, next_help_heading = "NATS (--sink nats)")]
    pub nats: NatsArgs,
    #[command(flatten, next_help_heading = "Kafka (--sink kafka)")]
    pub kafka: KafkaArgs,
    #[command(flatten, next_help_heading = "Tracing (OpenTelemetry)")]
    pub otlp: OtlpArgs,
    #[command(flatten, next_help_heading = "Logging")]
    pub log: LogArgs,
}

/// The operator's tools; each is its own module in [`crate::commands`].
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Checks the configuration and reaches the broker as serving would
    /// (connects, authenticates, finds the stream or topics, or whether they
    /// would be created), prints one line per check, and exits 1 naming what
    /// failed. For ExecStartPre= and init containers. Takes every flag the
    /// bridge serves with.
    Check(Box<crate::commands::check::CheckArgs>),
    /// Posts webhooks to a running bridge (--url), authenticated as the
    /// bridge's flags say it checks (shared secret, Basic, HMAC with or
    /// without a timestamp), and prints each answer. Without a FILE, one
    /// built-in sample of each object type.
    Send(Box<crate::commands::send::SendArgs>),
    /// Prints the messages the bridge publishes as they arrive, with their
    /// headers, from the configured broker: every subject the template
    /// produces and the dead-letter topic, or the PATTERNs given
    /// (`apizee.ticket.*`). Reads with the bridge's own broker flags.
    Tail(Box<crate::commands::tail::TailArgs>),
    /// Reads the dead-letter topic, checks each dead letter again with the
    /// current rules, and republishes the ones that now pass to their topic
    /// with their original event id; the others stay. A dry run unless
    /// --apply. Takes every flag the bridge serves with.
    Redrive(Box<crate::commands::redrive::RedriveArgs>),
    /// Works on the spool of --spool-dir without serving: `spool drain`
    /// delivers what a bridge left there (a replica scaled away) and exits.
    #[command(subcommand)]
    Spool(crate::commands::spool::SpoolCommand),
    /// Prints shell completions for SHELL on standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Prints the manual page (roff) on standard output.
    Man,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 5s, 1m)"))
}

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A flag that is wrong, and why. Displayed as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(flag: &'static str, reason: impl Into<String>) -> Self {
        Self {
            flag,
            reason: reason.into(),
        }
    }
}

/// Everything the service needs, checked: one part per module.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    /// Who may send webhooks; the default lets everyone in.
    pub guard: Guard,
    /// TLS on `http.listen`, its files already loaded and checked; plain
    /// HTTP without it.
    pub tls: Option<TlsSettings>,
    pub routing: Routing,
    /// Where refused-but-readable requests go, if anywhere.
    pub dead_letter: Option<DeadLetter>,
    pub delivery: DeliverySettings,
    /// Where and how big the durable spool is, if any.
    pub spool: Option<SpoolSettings>,
    pub sink: SinkSettings,
    /// Where the bridge's spans are exported, if anywhere.
    pub otlp: Option<OtlpSettings>,
    pub log_format: LogFormat,
    pub log_level: String,
}

impl Settings {
    /// The settings of `apizee-bridge` serving: [`Settings::from_args`] of
    /// the flags given without a subcommand.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        Self::from_args(cli.service)
    }

    /// Checks every part in turn, the ones that read files last.
    pub fn from_args(cli: ServiceArgs) -> Result<Self, ConfigError> {
        let http = cli.http.settings()?;
        let delivery = cli.delivery.settings()?;
        let routing = cli.route.settings(
            cli.cloudevents
                .settings(cli.delivery.sink.cloudevents_binding())?,
        )?;
        let guard = cli.auth.settings()?;
        let dead_letter = cli.dead_letter.settings()?;
        let context = SinkContext {
            template: &routing.template,
            dead_letter_topic: dead_letter.as_ref().map(|d| d.topic.as_str()),
            publish_timeout: delivery.publish_timeout,
        };
        let sink = SinkSettings::new(cli.delivery.sink, cli.nats, cli.kafka, &context)?;
        let spool = cli.spool.settings()?;
        let otlp = cli.otlp.settings()?;
        // Last: the only check that reads files besides the secret files.
        let tls = cli.tls.settings()?;
        Ok(Settings {
            http,
            guard,
            tls,
            routing,
            dead_letter,
            delivery,
            spool,
            sink,
            otlp,
            log_format: cli.log.log_format,
            log_level: cli.log.log_level,
        })
    }
}

#[cfg(test)]
mod tests;
