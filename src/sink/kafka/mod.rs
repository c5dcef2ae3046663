//! Kafka sink: librdkafka's idempotent producer, answering after the
//! delivery report.
//!
//! Defaults favour not losing data: `acks=all` and `enable.idempotence=true`
//! (no duplicates or reordering from the producer's own retries), and the
//! delivery timeout equals `--publish-timeout`, so librdkafka gives up on a
//! message at the moment the sender is told 503 instead of delivering it
//! later behind the sender's back; a broker that comes back is reconnected
//! within a second. They were chosen against a 3-node cluster under faults
//! ([`default_properties`]). Any librdkafka property can be overridden with
//! `--kafka-option`.
//!
//! Readiness comes from a probe that fetches cluster metadata on a client
//! of its own; while it fails, publishes get `NotConnected` at once rather
//! than waiting out the timeout in librdkafka's queue.

pub mod check;
pub mod config;
pub mod errors;
pub mod redrive;
pub mod tap;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext,
};

use super::{Acknowledgement, BoxFuture, PublishError, Sink};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use crate::metrics::{Registered, opts};
use crate::route::Message;
use crate::shutdown::Tasks;
use config::{KafkaSettings, TopicCreation};
use errors::Meaning;

/// How often the reachability probe asks for metadata, and how long it
/// waits for an answer. Short enough that `/readyz` follows an outage within
/// a few seconds, cheap enough to be noise for the broker.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Probes in a row that must go unanswered before the cluster counts as
/// unreachable. One can fail on a broker that hangs (stopped, partitioned
/// away) with its connection still open: the probe's client then drops that
/// connection ([`PROBE_REQUEST_TIMEOUT`]) and the next probe asks another
/// broker. With a stopped partition leader, a single failed probe made
/// every webhook get 503 at once for a second or two (tests/kafka_cluster).
const PROBE_FAILURES: u32 = 2;
/// The probe's client gives up a request, and its connection, after this:
/// before [`PROBE_TIMEOUT`] ends, so the next probe finds it gone.
const PROBE_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest time between two replacements of a broken producer.
const RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// Why a delivery report without an offset is answered 503, not 200.
///
/// librdkafka's idempotent producer reports the messages of a produce
/// request that failed with a retriable error as delivered, without an
/// offset, when a later request on the same partition, already in flight,
/// succeeds: it takes the later success as proof that the broker wrote the
/// earlier request (`rd_kafka_dr_implicit_ack`). The proof holds only while
/// the broker has state for the producer on that partition, whose sequence
/// numbers it checks; a broker with none (the producer's first writes
/// there: a bridge just started, a topic just created, a producer id it
/// expired) accepts the later request whatever its sequence, and the
/// earlier messages were never written. Seen in tests/deploy/topology.rs,
/// under load: the first webhooks after start-up answered 200, at offset
/// -1001, and missing from the topic. Such a webhook may or may not be
/// written, as after a timeout: the sender gets 503 and retries (at worst a
/// duplicate, with the same event id).
const UNCONFIRMED_DELIVERY: &str = "librdkafka reported the webhook delivered without an offset from \
     the broker (an implicit acknowledgement, which the broker may not have written): not \
     confirmed, answered 503";

/// The properties the bridge sets before applying `--kafka-option`.
pub fn default_properties(settings: &KafkaSettings) -> Vec<(String, String)> {
    let delivery_timeout_ms = settings.publish_timeout.as_millis().max(1).to_string();
    [
        ("bootstrap.servers", settings.brokers.as_str()),
        ("client.id", "apizee-bridge"),
        ("enable.idempotence", "true"),
        ("acks", "all"),
        // Webhook bodies are a few hundred bytes and a batch holds few of
        // them at webhook rates: compression saves little there, and costs
        // CPU in the bridge and in brokers that decompress to validate. With
        // tansu, lz4 lowered throughput and raised latency
        // (docs/performance.md). `--kafka-option compression.type=zstd` where
        // disk or network matters more.
        ("compression.type", "none"),
        // Every webhook waits for its own delivery report, so linger is pure
        // added latency when idle (1 ms doubled the median at half load).
        // Batches still form under load: whatever queues up while the
        // idempotent producer's 5 requests are in flight goes in the next.
        // A sweep of 0, 1, 2 and 5 ms at 32 and 128 connections found no
        // gain in throughput (benches/sweep.sh linger, docs/performance.md).
        ("linger.ms", "0"),
        // Chosen against a 3-node cluster under faults (tests/kafka_cluster;
        // the figures and the command are in the README's Kafka section).
        //
        // As long as --publish-timeout, not longer: a message librdkafka still
        // holds after the sender got 503 can only arrive as a duplicate of the
        // sender's retry, and the bridge's memory bound counts each waiting
        // body twice (the request's and librdkafka's copy), which holds only
        // while librdkafka's queue is no older than the requests. 30 s
        // instead changed nothing a sender sees (200s back 3.6 to 6.6 s after
        // a leader or the controller was killed or stopped, against 3.9 to
        // 7.4 s). Nor is socket.timeout.ms lowered to bound a hung broker:
        // the produce request's timeout is already the message's remaining
        // time, and at 5 s it cut requests that were only waiting for the ISR
        // to shrink, once stretching a controller failover to 18 s.
        ("message.timeout.ms", delivery_timeout_ms.as_str()),
        // Down from librdkafka's 10 s: reconnection attempts to a broker
        // that is down back off exponentially, up to this. With two of three
        // nodes killed, webhooks were taken again 0.2 to 2.0 s (median 0.6)
        // after the first node was back with 10 s, 0.3 to 0.8 s (median 0.45)
        // with 1 s, over 5 runs each. A refused connection a second is
        // nothing to a broker.
        ("reconnect.backoff.max.ms", "1000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A consumer for a tool (`tail`, `redrive`): partitions are assigned by
/// hand and nothing is committed, so `group` only names it to the brokers.
/// The `--kafka-option` properties apply, for security; producer-only ones
/// are ignored by librdkafka with a warning.
fn reader(
    settings: &KafkaSettings,
    group: &str,
) -> Result<rdkafka::consumer::BaseConsumer, String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for option in &settings.options {
        config.set(&option.key, option.value.expose());
    }
    config
        .create()
        .map_err(|e| format!("invalid --kafka-option: {}", describe_config_error(&e)))
}

fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in default_properties(settings) {
        config.set(key, value);
    }
    // Applied last, so users can override any default.
    for option in &settings.options {
        config.set(&option.key, option.value.expose());
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// Routes librdkafka's logs and errors to `tracing`.
#[derive(Default)]
pub struct LoggingContext;

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

/// The probe's client logs at debug only: a broker it cannot reach is in
/// the producer's log already, and the probe logs its own verdict.
struct ProbeContext;

impl ClientContext for ProbeContext {
    fn log(&self, _level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(target: "librdkafka", facility, "probe: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, "probe: {reason}");
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    // The probe produces nothing.
    fn delivery(&self, _result: &DeliveryResult<'_>, _opaque: ()) {}
}

/// The probe's own client, from the producer's configuration (so with the
/// same security options): the producer's connection to a broker carries at
/// most 5 requests at once (idempotence), and when produce requests wait
/// for a dead follower to leave the ISR, a metadata request queued behind
/// them times out although the broker answers. On the producer's client the
/// probe called a cluster that had lost one node of three unreachable, for
/// seconds, and every webhook got 503 at once meanwhile.
fn probe_client(config: &ClientConfig) -> Result<BaseProducer<ProbeContext>, KafkaError> {
    let mut config = config.clone();
    // It needs no producer id. A request unanswered for
    // PROBE_REQUEST_TIMEOUT closes its connection (librdkafka's
    // socket.max.fails is 1), so that a broker that hangs is left for
    // another at the next probe rather than asked again until it answers.
    config.set("enable.idempotence", "false").set(
        "socket.timeout.ms",
        PROBE_REQUEST_TIMEOUT.as_millis().to_string(),
    );
    config.create_with_context(ProbeContext)
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// librdkafka refused a property: names it, never echoes its value.
    #[error("invalid --kafka-option: {0}")]
    Config(String),
    #[error("cannot set up the Kafka metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The Kafka sink's own metrics, registered when it starts, so that other
/// sinks do not export Kafka series stuck at 0.
struct KafkaMetrics {
    /// By error code name; the codes of [`errors::KNOWN`] have theirs at 0
    /// from the start, in the table's order.
    delivery_errors: IntCounterVec,
    known_delivery_errors: Vec<IntCounter>,
    queue_messages: IntGauge,
    in_flight_messages: IntGauge,
}

impl KafkaMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let delivery_errors = IntCounterVec::new(
            opts(
                "kafka_delivery_errors_total",
                "Kafka publishes that failed, by librdkafka error code name.",
            ),
            &["error"],
        )?
        .registered(registry)?;
        let known_delivery_errors = errors::KNOWN
            .iter()
            .map(|&(code, _)| delivery_errors.with_label_values(&[errors::label(Some(code))]))
            .collect();
        Ok(Self {
            delivery_errors,
            known_delivery_errors,
            queue_messages: IntGauge::with_opts(opts(
                "kafka_queue_messages",
                "Messages and requests in librdkafka's queues, waiting to be sent or acknowledged.",
            ))?
            .registered(registry)?,
            in_flight_messages: IntGauge::with_opts(opts(
                "kafka_in_flight_messages",
                "Webhooks handed to the Kafka producer whose delivery report has not come yet.",
            ))?
            .registered(registry)?,
        })
    }

    /// Counts one failed publish under its code's name.
    fn delivery_error(&self, code: Option<RDKafkaErrorCode>, known: Option<usize>) {
        match known.and_then(|i| self.known_delivery_errors.get(i)) {
            Some(counter) => counter.inc(),
            None => self
                .delivery_errors
                .with_label_values(&[errors::label(code)])
                .inc(),
        }
    }
}

pub struct KafkaSink {
    /// Replaced when librdkafka reports the idempotent producer unusable
    /// (see [`KafkaSink::renew_if_broken`]).
    producer: RwLock<FutureProducer<LoggingContext>>,
    config: ClientConfig,
    last_renewal: Mutex<Option<Instant>>,
    state: Arc<State>,
    metrics: KafkaMetrics,
    publish_timeout: Duration,
    /// Whether the broker answers each produce request with an offset:
    /// unless `--kafka-option acks=0`, which confirms nothing.
    expects_offsets: bool,
}

#[derive(Default)]
struct State {
    reachable: AtomicBool,
    /// False until `--kafka-create-topics` has run; true when not asked.
    topics_ready: AtomicBool,
    /// Messages handed to librdkafka whose delivery report has not come.
    in_flight: AtomicI64,
}

impl KafkaSink {
    /// Creates the producer and starts the reachability probe (and topic
    /// creation, if asked). Returns without waiting for the broker.
    /// The probe and topic creation run in `tasks`.
    pub fn start(
        settings: &KafkaSettings,
        registry: &Registry,
        tasks: &Tasks,
    ) -> Result<Self, KafkaSetupError> {
        let config = client_config(settings);
        let producer: FutureProducer<LoggingContext> =
            config
                .create_with_context(LoggingContext)
                .map_err(|e| KafkaSetupError::Config(describe_config_error(&e)))?;
        let state = Arc::new(State {
            topics_ready: AtomicBool::new(settings.create_topics.is_none()),
            ..State::default()
        });

        let prober = probe_client(&config)
            .map_err(|e| KafkaSetupError::Config(describe_config_error(&e)))?;
        tasks.spawn_until_stopped(probe(prober, settings.probe_topic.clone(), state.clone()));
        if let Some(creation) = &settings.create_topics {
            let admin: AdminClient<DefaultClientContext> = config
                .create()
                .map_err(|e| KafkaSetupError::Config(describe_config_error(&e)))?;
            tasks.spawn_until_stopped(create_topics(admin, creation.clone(), state.clone()));
        }
        Ok(Self {
            producer: RwLock::new(producer),
            expects_offsets: expects_offsets(&config),
            config,
            last_renewal: Mutex::new(None),
            state,
            metrics: KafkaMetrics::register(registry)?,
            publish_timeout: settings.publish_timeout,
        })
    }

    fn producer(&self) -> FutureProducer<LoggingContext> {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the producer when librdkafka says it can no longer produce:
    /// a fatal error, or the broker refusing its producer id or epoch (some
    /// brokers never accept the epoch librdkafka bumps after a timeout, and
    /// every later send would fail). A new producer gets a new id. At most
    /// once per [`RENEWAL_INTERVAL`], so a broken cluster is not hammered.
    fn renew_if_broken(&self, code: Option<RDKafkaErrorCode>, unusable: bool) {
        let fatal = self.producer().client().fatal_error();
        if !unusable && fatal.is_none() {
            return;
        }
        {
            let mut last = self.last_renewal.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < RENEWAL_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.config.create_with_context(LoggingContext) {
            Ok(fresh) => {
                tracing::warn!(error = ?code, fatal = ?fatal, "Kafka producer unusable; replaced it with a new one");
                *self.producer.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            }
            Err(e) => tracing::error!(error = %e, "cannot create a new Kafka producer"),
        }
    }

    /// The answer to a failed publish, from [`errors::KNOWN`]; counts it,
    /// and replaces the producer if the error says it is unusable.
    fn error(&self, error: &KafkaError) -> PublishError {
        let code = error.rdkafka_error_code();
        let known = code.and_then(errors::lookup);
        let meaning = known.map(|(_, meaning)| meaning);
        self.renew_if_broken(code, meaning == Some(Meaning::ProducerUnusable));
        self.metrics.delivery_error(code, known.map(|(i, _)| i));
        errors::publish_error(meaning, error, self.publish_timeout)
    }
}

/// Whether the broker gives each record it acknowledges an offset: with
/// any `acks` but 0.
fn expects_offsets(config: &ClientConfig) -> bool {
    config.get("acks").is_none_or(|acks| acks.trim() != "0")
}

/// librdkafka's message names the property; the value is left out because
/// it may be a password.
fn describe_config_error(error: &KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, description, key, _value) => {
            format!("property {key:?}: {description}")
        }
        other => other.to_string(),
    }
}

/// Asks for metadata every [`PROBE_INTERVAL`]: any answer naming a broker
/// means the cluster is reachable, [`PROBE_FAILURES`] without one in a row
/// that it is not. One topic's metadata is enough, and keeps the request
/// small on clusters with thousands of topics.
async fn probe(prober: BaseProducer<ProbeContext>, topic: Option<String>, state: Arc<State>) {
    let prober = Arc::new(prober);
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        interval.tick().await;
        let prober = prober.clone();
        let topic = topic.clone();
        let answered = tokio::task::spawn_blocking(move || {
            prober
                .client()
                .fetch_metadata(topic.as_deref(), PROBE_TIMEOUT)
                .is_ok_and(|metadata| !metadata.brokers().is_empty())
        })
        .await
        .unwrap_or(false);
        failures = if answered {
            0
        } else {
            failures.saturating_add(1)
        };
        let reachable =
            answered || (failures < PROBE_FAILURES && state.reachable.load(Ordering::SeqCst));
        let was = state.reachable.swap(reachable, Ordering::SeqCst);
        match (was, reachable) {
            (false, true) => tracing::info!("Kafka brokers reachable"),
            (true, false) => tracing::warn!("Kafka brokers unreachable"),
            _ => {}
        }
    }
}

/// Creates every topic the template can produce, retrying until the
/// cluster answers. Topics that already exist are left as they are.
async fn create_topics(
    admin: AdminClient<DefaultClientContext>,
    creation: TopicCreation,
    state: Arc<State>,
) {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut delay = Duration::from_millis(200);
    loop {
        let topics: Vec<NewTopic<'_>> = creation
            .topics
            .iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    creation.partitions,
                    TopicReplication::Fixed(creation.replication_factor),
                )
            })
            .collect();
        let failures: Vec<String> = match admin.create_topics(&topics, &options).await {
            Ok(results) => results
                .into_iter()
                .filter_map(|result| match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                    Err((topic, code)) => Some(format!("{topic}: {code}")),
                })
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        if failures.is_empty() {
            tracing::info!(topics = creation.topics.len(), "Kafka topics ready");
            state.topics_ready.store(true, Ordering::SeqCst);
            return;
        }
        tracing::warn!(errors = ?failures, "cannot create Kafka topics yet; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn kafka_headers(message: &Message) -> OwnedHeaders {
    message.headers.iter().fold(
        OwnedHeaders::new_with_capacity(message.headers.len()),
        |headers, (name, value)| {
            headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            })
        },
    )
}

impl KafkaSink {
    /// Hands a message to librdkafka's queue, now: the order of calls is the
    /// order of each partition's records.
    fn enqueue(
        &self,
        message: &Message,
    ) -> Result<(rdkafka::producer::DeliveryFuture, InFlight<'_>), PublishError> {
        if !self.state.reachable.load(Ordering::SeqCst) {
            return Err(PublishError::NotConnected);
        }
        let record = FutureRecord::to(&message.topic)
            .key(message.key.as_bytes())
            .payload(message.payload.as_ref())
            .headers(kafka_headers(message));
        self.state.in_flight.fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight(&self.state.in_flight);
        // send_result fails at once when the local queue is full, instead
        // of blocking the request while it drains.
        let delivery = self
            .producer()
            .send_result(record)
            .map_err(|(e, _)| self.error(&e))?;
        Ok((delivery, in_flight))
    }
}

/// Decrements the in-flight count however the publish ends, including when
/// the caller gives up on it.
struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn send<'a, 'm>(
        &'a self,
        message: &'m Message,
    ) -> BoxFuture<'m, Result<Acknowledgement<'a>, PublishError>>
    where
        'a: 'm,
    {
        // Enqueued before the first await: sends keep their order.
        let sent = self.enqueue(message);
        // For the lines about its delivery report: the wait outlives the
        // message.
        let (id, topic) = (message.event_id.clone(), message.topic.clone());
        Box::pin(async move {
            let (delivery, in_flight) = sent?;
            let acknowledged: Acknowledgement<'a> = Box::pin(async move {
                let _in_flight = in_flight;
                match delivery.await {
                    // Delivered, says librdkafka, but the broker gave no
                    // offset: an implicit acknowledgement, which a sender
                    // must not take for the broker's (see
                    // [`UNCONFIRMED_DELIVERY`]).
                    Ok(Ok(delivery)) if delivery.offset < 0 && self.expects_offsets => {
                        tracing::warn!(
                            %id,
                            %topic,
                            partition = delivery.partition,
                            offset = delivery.offset,
                            "{UNCONFIRMED_DELIVERY}"
                        );
                        Err(PublishError::Timeout(self.publish_timeout))
                    }
                    Ok(Ok(delivery)) => {
                        // Where the broker put it: at debug only, a line per
                        // webhook, for finding one in the topic.
                        tracing::debug!(
                            %id,
                            %topic,
                            partition = delivery.partition,
                            offset = delivery.offset,
                            "Kafka acknowledged"
                        );
                        Ok(())
                    }
                    Ok(Err((e, _))) => Err(self.error(&e)),
                    Err(_) => Err(PublishError::Failed(
                        "the producer dropped the delivery report".into(),
                    )),
                }
            });
            Ok(acknowledged)
        })
    }

    /// A 50,000-event backlog on a single-node Kafka 4.4 (`benches/spool.sh
    /// --phases replay`) replayed at about 11,000 events/s with 256 in
    /// flight, 22,000 with 4,096, 39,000 to 43,000 with 16,384: a sixth of
    /// librdkafka's queue (`queue.buffering.max.messages`, 100,000).
    fn pipeline_depth(&self) -> usize {
        16_384
    }

    fn is_ready(&self) -> bool {
        self.state.reachable.load(Ordering::SeqCst)
            && self.state.topics_ready.load(Ordering::SeqCst)
    }

    fn report(&self) {
        self.metrics
            .queue_messages
            .set(i64::from(self.producer().in_flight_count()));
        self.metrics
            .in_flight_messages
            .set(self.state.in_flight.load(Ordering::SeqCst));
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        let producer = self.producer();
        let timeout = self.publish_timeout;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await
                .map_err(|e| PublishError::Failed(e.to_string()))?
                .map_err(|e| PublishError::Failed(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::config::KafkaOption;
    use super::*;
    use crate::config::Secret;

    fn settings(options: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings {
            brokers: "127.0.0.1:9".into(),
            probe_topic: None,
            options: options
                .iter()
                .map(|(k, v)| KafkaOption {
                    key: (*k).into(),
                    value: Secret::new((*v).into()),
                })
                .collect(),
            create_topics: None,
            publish_timeout: Duration::from_millis(2500),
        }
    }

    #[test]
    fn tls_sasl_and_compression_are_compiled_in() {
        let native = ClientConfig::new()
            .create_native_config()
            .unwrap_or_else(|e| panic!("{e}"));
        let features = native
            .get("builtin.features")
            .unwrap_or_else(|e| panic!("{e}"));
        for feature in [
            "ssl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
            "lz4",
            "zstd",
            "gzip",
        ] {
            assert!(
                features.split(',').any(|f| f == feature),
                "{feature} missing from {features}"
            );
        }
    }

    #[test]
    fn defaults_favour_durability_and_follow_the_publish_timeout() {
        let config = client_config(&settings(&[]));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("compression.type"), Some("none"));
        assert_eq!(config.get("linger.ms"), Some("0"));
        assert_eq!(config.get("message.timeout.ms"), Some("2500"));
        assert_eq!(config.get("reconnect.backoff.max.ms"), Some("1000"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9"));
    }

    #[test]
    fn options_override_defaults() {
        let config = client_config(&settings(&[
            ("linger.ms", "20"),
            ("acks", "1"),
            ("message.timeout.ms", "30000"),
            ("reconnect.backoff.max.ms", "10000"),
        ]));
        assert_eq!(config.get("linger.ms"), Some("20"));
        assert_eq!(config.get("acks"), Some("1"));
        assert_eq!(config.get("message.timeout.ms"), Some("30000"));
        assert_eq!(config.get("reconnect.backoff.max.ms"), Some("10000"));
    }

    #[test]
    fn offsets_are_expected_unless_acks_is_0() {
        let with = |options: &[(&str, &str)]| expects_offsets(&client_config(&settings(options)));
        assert!(with(&[]));
        for acks in ["all", "-1", "1"] {
            assert!(with(&[("acks", acks)]), "acks={acks}");
        }
        assert!(!with(&[("acks", "0")]));
    }

    #[test]
    fn every_default_can_be_overridden() {
        // --kafka-option is applied last: each default, set to something
        // else, comes out as the option says.
        let defaults = default_properties(&settings(&[]));
        let options: Vec<(String, String)> = defaults
            .iter()
            .map(|(key, value)| (key.clone(), format!("{value}-override")))
            .collect();
        let borrowed: Vec<(&str, &str)> = options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let config = client_config(&settings(&borrowed));
        for (key, value) in &options {
            assert_eq!(config.get(key), Some(value.as_str()), "{key}");
        }
    }

    fn tasks() -> Tasks {
        Tasks::new(&tokio_util::sync::CancellationToken::new())
    }

    #[tokio::test]
    async fn sasl_scram_over_tls_configures_a_producer() {
        let settings = settings(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "bridge"),
            ("sasl.password", "hunter2"),
        ]);
        assert!(KafkaSink::start(&settings, &Registry::new(), &tasks()).is_ok());
    }

    fn exposition(registry: &Registry) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn every_known_delivery_error_is_exported_from_the_start() {
        let registry = Registry::new();
        let sink =
            KafkaSink::start(&settings(&[]), &registry, &tasks()).unwrap_or_else(|e| panic!("{e}"));
        let series = |label: &str, value: u64| {
            format!("apizee_bridge_kafka_delivery_errors_total{{error=\"{label}\"}} {value}")
        };
        let before = exposition(&registry);
        for &(code, _) in errors::KNOWN {
            let line = series(&errors::label(Some(code)), 0);
            assert!(before.lines().any(|l| l == line), "no {line} in\n{before}");
        }

        // A known code counts on its series; a code outside the table gets
        // one of its own, by name.
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let odd = KafkaError::MessageProduction(RDKafkaErrorCode::InconsistentGroupProtocol);
        assert_eq!(
            sink.error(&timed_out),
            PublishError::Timeout(Duration::from_millis(2500))
        );
        assert!(matches!(sink.error(&odd), PublishError::Failed(_)));
        let after = exposition(&registry);
        for line in [
            series("MessageTimedOut", 1),
            series("InconsistentGroupProtocol", 1),
            series("QueueFull", 0),
        ] {
            assert!(after.lines().any(|l| l == line), "no {line} in\n{after}");
        }
    }

    #[tokio::test]
    async fn a_bad_property_is_named_without_its_value() {
        let settings = settings(&[("no.such.property", "hunter2")]);
        let error = match KafkaSink::start(&settings, &Registry::new(), &tasks()) {
            Ok(_) => panic!("a bad property was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("no.such.property"), "{error}");
        assert!(error.contains("--kafka-option"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
