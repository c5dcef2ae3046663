//! Command-line flags (each with an `APIZEE_BRIDGE_*` env var), validated
//! once into [`Settings`]. Nothing downstream re-parses a string: a bad flag
//! fails at start-up with one line that names it.
//!
//! Each part of the service declares its own flags and turns them into its
//! own settings, in its own module ([`crate::http::config`],
//! [`crate::auth::config`], [`crate::tls::config`], [`crate::route::config`],
//! [`crate::dead_letter`], [`crate::delivery`], [`crate::spool`],
//! [`crate::sink::nats::config`], [`crate::sink::kafka::config`],
//! [`crate::otlp`], [`crate::logging`]); this module only puts them
//! together, under one heading each in `--help`. It sits above every part
//! and nothing below imports it: the values they share are in
//! [`crate::config`].

use crate::auth::config::AuthArgs;
use crate::auth::{Guard, SecretFiles};
use crate::config::ConfigError;
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

/// Everything the service needs, checked: one part per module.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    /// Who may send webhooks; the default lets everyone in.
    pub guard: Guard,
    /// What reloads the secret files, when a secret comes from one.
    pub secret_files: Option<SecretFiles>,
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
    /// Checks every part in turn, the ones that read files last.
    pub fn from_args(cli: ServiceArgs) -> Result<Self, ConfigError> {
        let http = cli.http.settings()?;
        let delivery = cli.delivery.settings()?;
        let routing = cli.route.settings(
            cli.cloudevents
                .settings(cli.delivery.sink.cloudevents_binding())?,
        )?;
        let guard = cli.auth.settings()?;
        let secret_files = cli.auth.secret_files()?;
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
            secret_files,
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
