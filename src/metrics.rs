//! Every metric the bridge exports, defined in one place and recorded through
//! typed methods, so label values stay bounded: status codes, object and
//! event names, rejection codes, sink names and error kinds. Never an
//! objectId or anything else a sender controls.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::auth::Denial;
use crate::envelope::{ENUM_FIELDS, Envelope, Event, ObjectKind, UnknownValue};
use crate::http::budget::Budget;
use crate::http::rejection::Kind;
use crate::sink::PublishError;

const NAMESPACE: &str = "apizee_bridge";

/// Broker acks on loopback take tens of microseconds; across a region,
/// milliseconds; a struggling broker, seconds up to the publish timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `kind` label of `apizee_bridge_connection_errors_total`.
pub const CONNECTION_ERROR_KINDS: [&str; 5] = [
    "head_too_large",
    "malformed_head",
    "header_timeout",
    "incomplete_message",
    "other",
];

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    webhooks_received: IntCounterVec,
    rejections: IntCounterVec,
    auth_failures: IntCounterVec,
    connection_errors: IntCounterVec,
    publishes: IntCounterVec,
    publish_duration: HistogramVec,
    request_duration: Histogram,
    requests_in_flight: IntGauge,
    broker_connected: IntGaugeVec,
    unknown_enum_values: IntCounterVec,
    dead_letters: IntCounterVec,
    dead_letter_queue: IntGauge,
    in_flight_refusals: IntCounterVec,
    /// Registered only when the Kafka sink starts, so other sinks do not
    /// export Kafka series stuck at 0.
    kafka: OnceLock<KafkaMetrics>,
    /// Registered only with `--spool-dir`.
    spool: OnceLock<SpoolMetrics>,
    /// Registered only with `--tls-cert`.
    tls: OnceLock<TlsMetrics>,
    /// The series every accepted webhook touches, resolved once.
    hot: HotSeries,
    /// The sink's success series, resolved by [`Metrics::prepare`].
    sink: OnceLock<SinkSeries>,
}

/// A labelled lookup hashes the label values and takes the vector's lock;
/// the series an accepted webhook always touches are looked up once instead.
struct HotSeries {
    /// `webhooks_received_total`, by [`ObjectKind`] then [`Event`].
    received: [[IntCounter; Event::ALL.len()]; ObjectKind::ALL.len()],
    /// `http_requests_total{handler="webhook"}` for 200 and 202.
    webhook_ok: IntCounter,
    webhook_spooled: IntCounter,
}

struct SinkSeries {
    sink: &'static str,
    published_ok: IntCounter,
    duration: Histogram,
}

struct TlsMetrics {
    reloads: IntCounterVec,
    handshake_failures: prometheus::IntCounter,
}

struct SpoolMetrics {
    events: IntGauge,
    bytes: IntGauge,
    max_bytes: IntGauge,
    oldest_age: prometheus::Gauge,
    spooled: prometheus::IntCounter,
    replayed: prometheus::IntCounter,
    replay_failures: prometheus::IntCounter,
}

struct KafkaMetrics {
    delivery_errors: IntCounterVec,
    queue_messages: IntGauge,
    in_flight_messages: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
        let histogram = |name: &str, help: &str| {
            HistogramOpts::new(name, help)
                .namespace(NAMESPACE)
                .buckets(LATENCY_BUCKETS.to_vec())
        };

        let http_requests = IntCounterVec::new(
            opts(
                "http_requests_total",
                "HTTP requests answered on the webhook listener, by handler \
                 (webhook, health, other) and status code.",
            ),
            &["handler", "code"],
        )?;
        let webhooks_received = IntCounterVec::new(
            opts(
                "webhooks_received_total",
                "Valid webhooks received, by object type and event.",
            ),
            &["object", "event"],
        )?;
        let rejections = IntCounterVec::new(
            opts(
                "rejections_total",
                "Requests refused with a 4xx, by reason (the error code in the body).",
            ),
            &["reason"],
        )?;
        let auth_failures = IntCounterVec::new(
            opts(
                "auth_failures_total",
                "Webhooks refused with 401 or 403, by the check that failed.",
            ),
            &["reason"],
        )?;
        let connection_errors = IntCounterVec::new(
            opts(
                "connection_errors_total",
                "Webhook connections that ended in an error, by kind: head_too_large and \
                 malformed_head (answered 431/400 by the HTTP layer, before any handler), \
                 header_timeout (no complete request head within --header-read-timeout, \
                 including an idle keep-alive connection), incomplete_message, other.",
            ),
            &["kind"],
        )?;
        let publishes = IntCounterVec::new(
            opts(
                "publishes_total",
                "Publish attempts, by sink and outcome (ok or the error kind).",
            ),
            &["sink", "outcome"],
        )?;
        let publish_duration = HistogramVec::new(
            histogram(
                "publish_duration_seconds",
                "Time from publish to broker acknowledgement (or failure), by sink.",
            ),
            &["sink"],
        )?;
        let request_duration = Histogram::with_opts(histogram(
            "request_duration_seconds",
            "Time to answer a webhook POST, from headers read to response.",
        ))?;
        let requests_in_flight = IntGauge::with_opts(opts(
            "requests_in_flight",
            "Webhook requests being handled right now.",
        ))?;
        let broker_connected = IntGaugeVec::new(
            opts(
                "broker_connected",
                "1 while the sink is connected to its broker and ready, else 0.",
            ),
            &["sink"],
        )?;
        let unknown_enum_values = IntCounterVec::new(
            opts(
                "unknown_enum_values_total",
                "Webhooks forwarded with an enum value the spec does not list, by object and field.",
            ),
            &["object", "field"],
        )?;
        let dead_letters = IntCounterVec::new(
            opts(
                "dead_letters_total",
                "Refused requests published to --dead-letter-topic, by outcome (ok or the error kind).",
            ),
            &["outcome"],
        )?;
        let dead_letter_queue = IntGauge::with_opts(opts(
            "dead_letter_queue_messages",
            "Dead letters queued or being published: at most --dead-letter-queue, plus the \
             few whose publish is under way.",
        ))?;
        let in_flight_refusals = IntCounterVec::new(
            opts(
                "in_flight_refusals_total",
                "Requests answered 429 because a budget was spent, by budget: max_in_flight \
                 (webhooks being handled) or max_unauthenticated_in_flight (bodies read before \
                 their HMAC signature is checked).",
            ),
            &["budget"],
        )?;
        let build_info = IntGaugeVec::new(
            opts(
                "build_info",
                "Always 1; labels carry the version of the running binary.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(webhooks_received.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(connection_errors.clone()))?;
        registry.register(Box::new(publishes.clone()))?;
        registry.register(Box::new(publish_duration.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(requests_in_flight.clone()))?;
        registry.register(Box::new(broker_connected.clone()))?;
        registry.register(Box::new(unknown_enum_values.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(dead_letter_queue.clone()))?;
        registry.register(Box::new(in_flight_refusals.clone()))?;
        registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                NAMESPACE,
            ),
        ))?;

        let hot = HotSeries {
            received: ObjectKind::ALL.map(|object| {
                Event::ALL.map(|event| {
                    webhooks_received.with_label_values(&[object.as_str(), event.as_str()])
                })
            }),
            webhook_ok: http_requests.with_label_values(&["webhook", "200"]),
            webhook_spooled: http_requests.with_label_values(&["webhook", "202"]),
        };
        Ok(Self {
            registry,
            http_requests,
            webhooks_received,
            rejections,
            auth_failures,
            connection_errors,
            publishes,
            publish_duration,
            request_duration,
            requests_in_flight,
            broker_connected,
            unknown_enum_values,
            dead_letters,
            dead_letter_queue,
            in_flight_refusals,
            kafka: OnceLock::new(),
            spool: OnceLock::new(),
            tls: OnceLock::new(),
            hot,
            sink: OnceLock::new(),
        })
    }

    /// `handler` is `webhook`, `health` or `other`; only webhook requests
    /// feed the latency histogram, so probes do not dilute it.
    /// Creates every series whose labels are known up front, at 0, so
    /// dashboards and `rate()` see them before the first event.
    pub fn prepare(&self, sink: &'static str) {
        for object in ObjectKind::ALL {
            for event in Event::ALL {
                self.webhooks_received
                    .with_label_values(&[object.as_str(), event.as_str()]);
            }
        }
        for field in &ENUM_FIELDS {
            self.unknown_enum_values
                .with_label_values(&[field.object.as_str(), field.field]);
        }
        for kind in Kind::client_errors() {
            self.rejections.with_label_values(&[kind.code()]);
        }
        for denial in Denial::ALL {
            self.auth_failures.with_label_values(&[denial.label()]);
        }
        for kind in CONNECTION_ERROR_KINDS {
            self.connection_errors.with_label_values(&[kind]);
        }
        for outcome in std::iter::once("ok").chain(PublishError::KINDS) {
            self.publishes.with_label_values(&[sink, outcome]);
            self.dead_letters.with_label_values(&[outcome]);
        }
        self.dead_letters
            .with_label_values(&[crate::dead_letter::SHED]);
        for budget in Budget::ALL {
            self.in_flight_refusals.with_label_values(&[budget.label()]);
        }
        let _ = self.sink.set(SinkSeries {
            sink,
            published_ok: self.publishes.with_label_values(&[sink, "ok"]),
            duration: self.publish_duration.with_label_values(&[sink]),
        });
        self.broker_connected.with_label_values(&[sink]);
    }

    pub fn http_request(
        &self,
        handler: &'static str,
        status: http::StatusCode,
        duration: Duration,
    ) {
        match (handler, status.as_u16()) {
            ("webhook", 200) => self.hot.webhook_ok.inc(),
            ("webhook", 202) => self.hot.webhook_spooled.inc(),
            _ => self
                .http_requests
                .with_label_values(&[handler, status.as_str()])
                .inc(),
        }
        if handler == "webhook" {
            self.request_duration.observe(duration.as_secs_f64());
        }
    }

    pub fn webhook_received(&self, envelope: &Envelope) {
        self.hot.received[envelope.object as usize][envelope.event as usize].inc();
        for UnknownValue { object, field } in &envelope.unknown_values {
            self.unknown_enum_values
                .with_label_values(&[object.as_str(), field])
                .inc();
        }
    }

    /// A 4xx, under its code.
    pub fn rejected(&self, kind: Kind) {
        self.rejections.with_label_values(&[kind.code()]).inc();
    }

    /// `kind` is one of [`CONNECTION_ERROR_KINDS`].
    pub fn connection_error(&self, kind: &'static str) {
        self.connection_errors.with_label_values(&[kind]).inc();
    }

    pub fn auth_failure(&self, denial: Denial) {
        self.auth_failures
            .with_label_values(&[denial.label()])
            .inc();
    }

    /// `outcome` is `ok` or a [`crate::sink::PublishError::kind`].
    pub fn published(&self, sink: &'static str, outcome: &'static str, duration: Duration) {
        if let Some(series) = self.sink.get()
            && series.sink == sink
            && outcome == "ok"
        {
            series.published_ok.inc();
            series.duration.observe(duration.as_secs_f64());
            return;
        }
        self.publishes.with_label_values(&[sink, outcome]).inc();
        self.publish_duration
            .with_label_values(&[sink])
            .observe(duration.as_secs_f64());
    }

    /// `outcome` is `ok`, a [`crate::sink::PublishError::kind`] or
    /// [`crate::dead_letter::SHED`].
    pub fn dead_lettered(&self, outcome: &'static str) {
        self.dead_letters.with_label_values(&[outcome]).inc();
    }

    pub fn dead_letter_queued(&self) {
        self.dead_letter_queue.inc();
    }

    /// Published or failed: no longer waiting.
    pub fn dead_letter_done(&self) {
        self.dead_letter_queue.dec();
    }

    pub fn in_flight_refused(&self, budget: Budget) {
        self.in_flight_refusals
            .with_label_values(&[budget.label()])
            .inc();
    }

    /// Counts a request as in flight until the guard is dropped, whichever
    /// way the request ends (even if the client goes away mid-publish).
    pub fn in_flight(&self) -> InFlight {
        self.requests_in_flight.inc();
        InFlight(self.requests_in_flight.clone())
    }

    pub fn set_broker_connected(&self, sink: &'static str, connected: bool) {
        self.broker_connected
            .with_label_values(&[sink])
            .set(i64::from(connected));
    }

    fn kafka(&self) -> Option<&KafkaMetrics> {
        self.kafka.get()
    }

    /// Registers the Kafka sink's metrics; later calls do nothing.
    pub fn register_kafka(&self) -> Result<(), prometheus::Error> {
        if self.kafka.get().is_some() {
            return Ok(());
        }
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
        let delivery_errors = IntCounterVec::new(
            opts(
                "kafka_delivery_errors_total",
                "Kafka publishes that failed, by librdkafka error code name.",
            ),
            &["error"],
        )?;
        let queue_messages = IntGauge::with_opts(opts(
            "kafka_queue_messages",
            "Messages and requests in librdkafka's queues, waiting to be sent or acknowledged.",
        ))?;
        let in_flight_messages = IntGauge::with_opts(opts(
            "kafka_in_flight_messages",
            "Webhooks handed to the Kafka producer whose delivery report has not come yet.",
        ))?;
        self.registry.register(Box::new(delivery_errors.clone()))?;
        self.registry.register(Box::new(queue_messages.clone()))?;
        self.registry
            .register(Box::new(in_flight_messages.clone()))?;
        let _ = self.kafka.set(KafkaMetrics {
            delivery_errors,
            queue_messages,
            in_flight_messages,
        });
        Ok(())
    }

    /// `error` is a librdkafka error code's name: a fixed set.
    pub fn kafka_delivery_error(&self, error: &str) {
        if let Some(kafka) = self.kafka() {
            kafka.delivery_errors.with_label_values(&[error]).inc();
        }
    }

    pub fn set_kafka_queue(&self, queued: i64, in_flight: i64) {
        if let Some(kafka) = self.kafka() {
            kafka.queue_messages.set(queued);
            kafka.in_flight_messages.set(in_flight);
        }
    }

    /// Registers the TLS metrics, both reload results at 0; later calls do
    /// nothing.
    pub fn register_tls(&self) -> Result<(), prometheus::Error> {
        if self.tls.get().is_some() {
            return Ok(());
        }
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
        let metrics = TlsMetrics {
            reloads: IntCounterVec::new(
                opts(
                    "tls_reloads_total",
                    "Reloads of the TLS certificate (SIGHUP or changed files), by result \
                     (success, failure: the previous certificate stays).",
                ),
                &["result"],
            )?,
            handshake_failures: prometheus::IntCounter::with_opts(opts(
                "tls_handshake_failures_total",
                "TLS handshakes on the webhook listener that failed or timed out \
                 (bad or missing client certificate, plain HTTP, stalled client).",
            ))?,
        };
        for result in ["success", "failure"] {
            metrics.reloads.with_label_values(&[result]);
        }
        self.registry.register(Box::new(metrics.reloads.clone()))?;
        self.registry
            .register(Box::new(metrics.handshake_failures.clone()))?;
        let _ = self.tls.set(metrics);
        Ok(())
    }

    pub fn tls_reloaded(&self, success: bool) {
        if let Some(tls) = self.tls.get() {
            let result = if success { "success" } else { "failure" };
            tls.reloads.with_label_values(&[result]).inc();
        }
    }

    pub fn tls_handshake_failed(&self) {
        if let Some(tls) = self.tls.get() {
            tls.handshake_failures.inc();
        }
    }

    /// Registers the spool's metrics; later calls do nothing.
    pub fn register_spool(&self) -> Result<(), prometheus::Error> {
        if self.spool.get().is_some() {
            return Ok(());
        }
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
        let metrics = SpoolMetrics {
            events: IntGauge::with_opts(opts(
                "spool_events",
                "Webhooks waiting in the local spool for the broker.",
            ))?,
            bytes: IntGauge::with_opts(opts(
                "spool_bytes",
                "Bytes of webhooks in the local spool (bounded by --spool-max-bytes).",
            ))?,
            max_bytes: IntGauge::with_opts(opts(
                "spool_max_bytes",
                "--spool-max-bytes: past it, webhooks the broker cannot take get 503.",
            ))?,
            oldest_age: prometheus::Gauge::with_opts(opts(
                "spool_oldest_age_seconds",
                "How long the oldest spooled webhook has waited; 0 when the spool is empty.",
            ))?,
            spooled: prometheus::IntCounter::with_opts(opts(
                "spooled_total",
                "Webhooks answered 202 because they were written to the spool.",
            ))?,
            replayed: prometheus::IntCounter::with_opts(opts(
                "spool_replayed_total",
                "Spooled webhooks delivered to the broker and removed from the spool.",
            ))?,
            replay_failures: prometheus::IntCounter::with_opts(opts(
                "spool_replay_failures_total",
                "Failed attempts to deliver a spooled webhook (it stays and is retried).",
            ))?,
        };
        self.registry.register(Box::new(metrics.events.clone()))?;
        self.registry.register(Box::new(metrics.bytes.clone()))?;
        self.registry
            .register(Box::new(metrics.max_bytes.clone()))?;
        self.registry
            .register(Box::new(metrics.oldest_age.clone()))?;
        self.registry.register(Box::new(metrics.spooled.clone()))?;
        self.registry.register(Box::new(metrics.replayed.clone()))?;
        self.registry
            .register(Box::new(metrics.replay_failures.clone()))?;
        let _ = self.spool.set(metrics);
        Ok(())
    }

    pub fn spooled(&self) {
        if let Some(spool) = self.spool.get() {
            spool.spooled.inc();
        }
    }

    pub fn spool_replayed(&self) {
        if let Some(spool) = self.spool.get() {
            spool.replayed.inc();
        }
    }

    pub fn spool_replay_failed(&self) {
        if let Some(spool) = self.spool.get() {
            spool.replay_failures.inc();
        }
    }

    pub fn set_spool(&self, events: u64, bytes: u64, max_bytes: u64, oldest_age: Duration) {
        if let Some(spool) = self.spool.get() {
            spool.events.set(i64::try_from(events).unwrap_or(i64::MAX));
            spool.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            spool
                .max_bytes
                .set(i64::try_from(max_bytes).unwrap_or(i64::MAX));
            spool.oldest_age.set(oldest_age.as_secs_f64());
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail on I/O; a failure here would be a
        // malformed metric, which registration already rules out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_outcomes_cover_every_error_kind() {
        for error in [
            PublishError::NotConnected,
            PublishError::Timeout(Duration::from_secs(1)),
            PublishError::Unavailable(String::new()),
            PublishError::Refused(String::new()),
            PublishError::Failed(String::new()),
        ] {
            assert!(PublishError::KINDS.contains(&error.kind()), "{error:?}");
        }
    }

    #[test]
    fn hot_series_count_under_their_own_labels() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        metrics.prepare("nats");
        // The table is indexed by discriminant: each slot must be its label.
        for (i, object) in ObjectKind::ALL.into_iter().enumerate() {
            assert_eq!(object as usize, i, "{object:?}");
        }
        for (i, event) in Event::ALL.into_iter().enumerate() {
            assert_eq!(event as usize, i, "{event:?}");
        }
        metrics.hot.received[ObjectKind::Media as usize][Event::Delete as usize].inc();
        metrics.http_request("webhook", http::StatusCode::ACCEPTED, Duration::ZERO);
        metrics.published("nats", "ok", Duration::ZERO);
        metrics.published("nats", "timeout", Duration::ZERO);
        let text = String::from_utf8(metrics.render()).unwrap_or_default();
        for line in [
            r#"apizee_bridge_webhooks_received_total{event="delete",object="media"} 1"#,
            r#"apizee_bridge_webhooks_received_total{event="create",object="media"} 0"#,
            r#"apizee_bridge_http_requests_total{code="202",handler="webhook"} 1"#,
            r#"apizee_bridge_publishes_total{outcome="ok",sink="nats"} 1"#,
            r#"apizee_bridge_publishes_total{outcome="timeout",sink="nats"} 1"#,
            r#"apizee_bridge_publish_duration_seconds_count{sink="nats"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }

    #[test]
    fn prepared_series_are_exported_at_zero() {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        metrics.prepare("nats");
        let text = String::from_utf8(metrics.render()).unwrap_or_default();
        for line in [
            r#"apizee_bridge_webhooks_received_total{event="delete",object="conversationevent"} 0"#,
            r#"apizee_bridge_unknown_enum_values_total{field="_parent.name",object="media"} 0"#,
            r#"apizee_bridge_rejections_total{reason="malformed_json"} 0"#,
            r#"apizee_bridge_publishes_total{outcome="timeout",sink="nats"} 0"#,
            r#"apizee_bridge_broker_connected{sink="nats"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }
}
