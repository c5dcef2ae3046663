//! The one interface every broker implements.
//!
//! A sink takes a [`Message`] and resolves only once the broker has it
//! (JetStream PubAck, Kafka delivery report, a flushed write to core NATS).
//! The HTTP layer knows nothing of brokers and sinks know nothing of HTTP: the
//! handler turns a [`PublishError`] into a 503.
//!
//! The trait returns boxed futures so the sink can be chosen at start-up and
//! held as `Arc<dyn Sink>`; one allocation per publish is noise next to a
//! network round trip.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;

use crate::config::ConfigError;
use crate::route::cloudevents::Binding;
use crate::route::{Message, TopicTemplate};
use crate::shutdown::Tasks;

pub mod check;
pub mod kafka;
pub mod memory;
pub mod nats;
pub mod redrive;
pub mod stdout;
pub mod tap;

/// `--sink`: where messages go. A new broker is a variant here, its folder
/// beside this file (its flags in `config.rs`), and a line in each match
/// below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    Stdout,
    Nats,
    Kafka,
}

impl SinkKind {
    /// Which CloudEvents binding names the headers of this sink's messages.
    /// Standard output gets the NATS (and HTTP) names: `ce-` for every
    /// attribute, which is what a reader of the JSON lines would expect.
    pub fn cloudevents_binding(self) -> Binding {
        match self {
            Self::Kafka => Binding::Kafka,
            Self::Nats | Self::Stdout => Binding::Nats,
        }
    }
}

/// The chosen sink's checked settings.
#[derive(Debug, Clone)]
pub enum SinkSettings {
    Stdout,
    Nats(Box<nats::config::NatsSettings>),
    Kafka(Box<kafka::config::KafkaSettings>),
}

/// What a sink's settings need from the other parts: the topics it will be
/// given (a stream to capture them, topics to create) and how long a
/// publish may take.
pub struct SinkContext<'a> {
    pub template: &'a TopicTemplate,
    pub dead_letter_topic: Option<&'a str>,
    pub publish_timeout: Duration,
}

/// Why a sink could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SinkSetupError {
    #[error(transparent)]
    Nats(#[from] nats::NatsSetupError),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSetupError),
}

impl SinkSettings {
    /// The `--sink` value it was chosen by.
    pub fn name(&self) -> &'static str {
        match self {
            SinkSettings::Stdout => "stdout",
            SinkSettings::Nats(_) => "nats",
            SinkSettings::Kafka(_) => "kafka",
        }
    }

    /// Checks the flags of the chosen sink only: a Kafka flag left at its
    /// default does not matter with `--sink nats`.
    pub fn new(
        kind: SinkKind,
        nats: nats::config::NatsArgs,
        kafka: kafka::config::KafkaArgs,
        context: &SinkContext<'_>,
    ) -> Result<Self, ConfigError> {
        Ok(match kind {
            SinkKind::Stdout => SinkSettings::Stdout,
            SinkKind::Nats => SinkSettings::Nats(Box::new(nats.settings(context)?)),
            SinkKind::Kafka => SinkSettings::Kafka(Box::new(kafka.settings(context)?)),
        })
    }

    /// Where the dead-letter topic comes from, for the start-up log: an
    /// operator reading it should know whether dead letters can arrive.
    pub fn dead_letter_home(&self) -> String {
        match self {
            SinkSettings::Stdout => "printed with the webhooks".into(),
            SinkSettings::Kafka(kafka) if kafka.create_topics.is_some() => {
                "the topic is created with the template's topics (--kafka-create-topics)".into()
            }
            SinkSettings::Kafka(_) => {
                "the topic must exist, or the cluster must create topics on demand".into()
            }
            SinkSettings::Nats(nats) => match &nats.stream {
                Some(stream) => format!(
                    "stream {} captures it (created with subjects {:?} when missing)",
                    stream.name, stream.subjects
                ),
                None if nats.jetstream => "a JetStream stream must capture the subject".into(),
                None => {
                    "published on core NATS, stored only if a subscriber or stream takes it".into()
                }
            },
        }
    }

    /// Starts the sink. Broker clients connect in the background, so this
    /// returns before the broker is reachable; [`Sink::is_ready`] tells
    /// when.
    /// Its background tasks run in `tasks`, stopped after its last flush.
    /// Its metrics, if it has any of its own, are registered in `registry`.
    pub async fn start(
        &self,
        registry: &Registry,
        tasks: &Tasks,
    ) -> Result<Arc<dyn Sink>, SinkSetupError> {
        Ok(match self {
            SinkSettings::Stdout => {
                tracing::warn!(
                    "sink is stdout: messages are printed, not stored; nothing is durable. \
                     Use --sink nats in production"
                );
                Arc::new(stdout::StdoutSink::new())
            }
            SinkSettings::Nats(nats) => Arc::new(nats::NatsSink::start(nats, tasks).await?),
            SinkSettings::Kafka(kafka) => {
                Arc::new(kafka::KafkaSink::start(kafka, registry, tasks)?)
            }
        })
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The wait for the broker's acknowledgement of one message already sent.
pub type Acknowledgement<'a> = BoxFuture<'a, Result<(), PublishError>>;

pub trait Sink: Send + Sync + 'static {
    /// Short, fixed name used in metrics and logs: `stdout`, `nats`, `kafka`.
    fn name(&self) -> &'static str;

    /// Sends one message and returns the wait for the broker's
    /// acknowledgement. Messages sent one after another (each send awaited
    /// before the next begins) reach the broker in that order, however
    /// their acknowledgements are awaited: that is what lets the spool's
    /// replay keep many in flight and still keep each objectId's order
    /// (JetStream stores one connection's publishes in order; librdkafka's
    /// idempotent producer keeps each partition's). Callers bound both
    /// waits with their own timeout; a sink must not send a message it
    /// already reported as failed when it is not connected. The
    /// acknowledgement borrows the sink, never the message: a caller can
    /// let go of a message once it is sent (the replay reads on while
    /// thousands wait for their acknowledgement).
    fn send<'a, 'm>(
        &'a self,
        message: &'m Message,
    ) -> BoxFuture<'m, Result<Acknowledgement<'a>, PublishError>>
    where
        'a: 'm;

    /// Publishes one message and resolves when the broker acknowledged it.
    fn publish<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move { self.send(message).await?.await })
    }

    /// True while the sink can take messages; drives `/readyz`.
    fn is_ready(&self) -> bool;

    /// Sets the sink's own gauges; called at every scrape so they are
    /// never stale.
    fn report(&self) {}

    /// Sends whatever is buffered, at shutdown.
    fn flush(&self) -> BoxFuture<'_, Result<(), PublishError>>;

    /// How many sends may wait for their acknowledgement at once in a
    /// pipeline (the spool's replay): as many as hide the broker's round
    /// trips, no more than it takes without dropping any.
    fn pipeline_depth(&self) -> usize {
        256
    }
}

/// Why a publish did not succeed. Every kind means the sender should retry,
/// so all of them answer 503; the kind is for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("the broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// Reachable, but unable to store anything for a while: a JetStream
    /// stream without a leader (an election) or not yet made. Like
    /// `NotConnected`, it passes; with `--spool-dir` the webhook is spooled.
    #[error("the broker cannot take the message now: {0}")]
    Unavailable(String),
    #[error("the broker refused the message: {0}")]
    Refused(String),
    #[error("publishing failed: {0}")]
    Failed(String),
}

named_enum! {
    /// How a publish ended: the `outcome` label of
    /// `apizee_bridge_publishes_total` and `apizee_bridge_dead_letters_total`.
    pub enum Outcome {
        Ok => "ok",
        NotConnected => "not_connected",
        Timeout => "timeout",
        Unavailable => "unavailable",
        Refused => "refused",
        Failed => "failed",
    }
}

impl Outcome {
    /// Whether a publish that ended so may succeed later: the broker was
    /// away or busy, and said nothing about the message itself.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Outcome::NotConnected | Outcome::Timeout | Outcome::Unavailable
        )
    }

    pub fn of<T>(result: &Result<T, PublishError>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => e.outcome(),
        }
    }
}

impl PublishError {
    /// Its bounded label value for metrics.
    pub fn outcome(&self) -> Outcome {
        match self {
            PublishError::NotConnected => Outcome::NotConnected,
            PublishError::Timeout(_) => Outcome::Timeout,
            PublishError::Unavailable(_) => Outcome::Unavailable,
            PublishError::Refused(_) => Outcome::Refused,
            PublishError::Failed(_) => Outcome::Failed,
        }
    }

    /// Whether the broker is expected back: the webhook may wait in the
    /// spool. A refusal would be refused again.
    pub fn is_transient(&self) -> bool {
        self.outcome().is_transient()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_gets_the_kafka_binding_and_the_others_the_nats_one() {
        assert_eq!(SinkKind::Kafka.cloudevents_binding(), Binding::Kafka);
        assert_eq!(SinkKind::Nats.cloudevents_binding(), Binding::Nats);
        assert_eq!(SinkKind::Stdout.cloudevents_binding(), Binding::Nats);
    }
}
