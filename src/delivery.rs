//! Delivery: gets a message to the broker, or, with `--spool-dir`, to the
//! durable spool when the broker is down or slow, and replays the spool
//! when the broker is back.
//!
//! The HTTP handler asks [`Delivery::deliver`] and answers 200 for
//! [`Delivered::Acknowledged`], 202 for [`Delivered::Spooled`], and 503 for
//! an error. Only failures that say nothing about the message itself (not
//! connected, no ack in time) go to the spool: a message the broker refused
//! would be refused again on replay and block everything behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, parse_duration};
use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use crate::metrics::{Registered, latency_opts, opts};
use crate::route::Message;
use crate::sink::SinkKind;
use crate::sink::{Outcome, PublishError, Sink};
use crate::spool::Spool;

/// How many spooled events a replay round reads at once.
const REPLAY_BATCH: usize = 64;
/// Pause after a failed replay before trying the same event again.
const REPLAY_BACKOFF: Duration = Duration::from_millis(500);
/// How often an idle replayer looks at the sink and the spool even without
/// being woken; a safety net, since appends also wake it.
const REPLAY_IDLE_CHECK: Duration = Duration::from_millis(250);
/// How often, during start-up, the sink is looked at.
const STARTUP_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The broker acknowledged the message.
    Acknowledged,
    /// The message is synced to the local spool and will be delivered.
    Spooled,
}

pub struct Delivery {
    sink: Arc<dyn Sink>,
    spool: Option<Arc<Spool>>,
    publish_timeout: Duration,
    metrics: DeliveryMetrics,
    spooled: Notify,
    /// Until then, a webhook waits for a sink that has never been ready.
    startup_deadline: Instant,
    /// True once start-up is over: the sink was seen ready once, or the
    /// deadline passed.
    started: watch::Sender<bool>,
}

impl Delivery {
    pub fn new(
        sink: Arc<dyn Sink>,
        spool: Option<Arc<Spool>>,
        settings: DeliverySettings,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let metrics = DeliveryMetrics::register(registry, sink.name(), spool.is_some())?;
        Ok(Self {
            sink,
            spool,
            publish_timeout: settings.publish_timeout,
            metrics,
            spooled: Notify::new(),
            startup_deadline: Instant::now() + settings.startup_timeout,
            started: watch::Sender::new(false),
        })
    }

    pub fn sink(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    /// Ready while the broker takes messages, or while the spool has room
    /// to keep them.
    pub fn is_ready(&self) -> bool {
        self.sink_ready() || self.spool.as_ref().is_some_and(|s| s.has_room())
    }

    /// Whether the sink is ready, ending start-up when it is. Whoever sees
    /// it first ends it: a `/readyz` that answered 200 has told a balancer
    /// the broker is there, so a broker lost right after must get senders
    /// their 503 at once, not after the rest of `--startup-timeout`.
    fn sink_ready(&self) -> bool {
        let ready = self.sink.is_ready();
        if ready && !*self.started.borrow() {
            self.started.send_replace(true);
        }
        ready
    }

    /// Publishes a webhook, or spools it when the broker fails and a spool
    /// is set. `log_span` makes the webhook's span for a line logged about
    /// it, so one that logs nothing costs no span.
    pub async fn deliver(
        &self,
        message: &Message,
        log_span: impl FnOnce() -> tracing::Span,
    ) -> Result<Delivered, PublishError> {
        let Some(spool) = &self.spool else {
            self.wait_for_startup().await;
            return self
                .publish(message)
                .await
                .map(|()| Delivered::Acknowledged);
        };
        // Older events still wait in the spool: this one queues behind them,
        // so events of one object reach the broker in order.
        if !spool.is_empty() {
            return self
                .spool(spool, message, PublishError::NotConnected, log_span)
                .await;
        }
        match self.publish(message).await {
            Ok(()) => Ok(Delivered::Acknowledged),
            Err(error) if error.is_transient() => self.spool(spool, message, error, log_span).await,
            Err(error) => Err(error),
        }
    }

    /// A replica that has just started has usually not reached its broker
    /// yet; a webhook a load balancer (or a sender) gives it that early
    /// waits for the connection, up to `--startup-timeout`, rather than get
    /// a 503 that a second later would have been a 200.
    async fn wait_for_startup(&self) {
        if *self.started.borrow() || self.sink_ready() {
            return;
        }
        let mut started = self.started.subscribe();
        // Bounded by the deadline itself, should nothing watch the sink.
        let deadline = tokio::time::Instant::from_std(self.startup_deadline);
        let _ = tokio::time::timeout_at(deadline, started.wait_for(|started| *started)).await;
    }

    /// Ends start-up the first time the sink is ready (or at
    /// `--startup-timeout`), whether or not a webhook was there to see it:
    /// a broker lost later must get a sender its 503 at once. The sink has
    /// no readiness event, so it is looked at every [`STARTUP_POLL`], here
    /// only, however many webhooks wait.
    pub async fn watch_startup(self: Arc<Self>) {
        while !self.sink_ready() && Instant::now() < self.startup_deadline {
            tokio::time::sleep(STARTUP_POLL).await;
        }
        self.started.send_replace(true);
    }

    /// Publishes, giving up after `--publish-timeout`; also what dead
    /// letters go through ([`crate::dead_letter`]).
    pub async fn publish_within_timeout(&self, message: &Message) -> Result<(), PublishError> {
        tokio::time::timeout(self.publish_timeout, self.sink.publish(message))
            .await
            .unwrap_or(Err(PublishError::Timeout(self.publish_timeout)))
    }

    /// Publishes a webhook with the timeout, and records the outcome.
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        let started = Instant::now();
        let result = self.publish_within_timeout(message).await;
        self.metrics.publishes[Outcome::of(&result) as usize].inc();
        self.metrics
            .publish_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Appends to the spool; if that fails too, the sender gets the
    /// original broker error.
    async fn spool(
        &self,
        spool: &Arc<Spool>,
        message: &Message,
        broker_error: PublishError,
        log_span: impl FnOnce() -> tracing::Span,
    ) -> Result<Delivered, PublishError> {
        match spool.append(message).await {
            Ok(_) => {
                if let Some(metrics) = &self.metrics.spool {
                    metrics.spooled.inc();
                }
                self.spooled.notify_one();
                Ok(Delivered::Spooled)
            }
            Err(e) => {
                log_span().in_scope(|| {
                    tracing::warn!(error = %e, broker = %broker_error, "cannot spool the webhook");
                });
                Err(broker_error)
            }
        }
    }

    /// Replays the spool into the sink, oldest first, until `stop` is
    /// cancelled. It stops between two events, never between a publish and
    /// the removal of what it published; what is left stays on disk for the
    /// next start. Returns at once without a spool.
    pub async fn replay(self: Arc<Self>, stop: CancellationToken) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        while !stop.is_cancelled() {
            if spool.is_empty() || !self.sink.is_ready() {
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = tokio::time::timeout(REPLAY_IDLE_CHECK, self.spooled.notified()) => {}
                }
                continue;
            }
            let reader = spool.clone();
            let batch = match tokio::task::spawn_blocking(move || reader.oldest(REPLAY_BATCH)).await
            {
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the spool");
                    tokio::time::sleep(REPLAY_BACKOFF).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool reader failed");
                    continue;
                }
            };
            for spooled in batch {
                if stop.is_cancelled() {
                    break;
                }
                if let Err(e) = self.publish(&spooled.message).await {
                    if let Some(metrics) = &self.metrics.spool {
                        metrics.replay_failures.inc();
                    }
                    tracing::warn!(error = %e, topic = %spooled.message.topic, "replaying a spooled webhook failed; will retry");
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(REPLAY_BACKOFF) => {}
                    }
                    break;
                }
                match spool.remove(vec![spooled.sequence]).await {
                    Ok(()) => {
                        if let Some(metrics) = &self.metrics.spool {
                            metrics.replayed.inc();
                        }
                    }
                    // Left in place, it is published again later: a
                    // duplicate with the same event id, never a loss.
                    Err(e) => tracing::error!(error = %e, "cannot remove a replayed webhook"),
                }
            }
        }
    }

    /// Sets the gauges (the broker's connection, the sink's own, the
    /// spool's); called at every scrape, so they are never stale.
    pub fn report(&self) {
        self.metrics
            .broker_connected
            .set(i64::from(self.sink.is_ready()));
        self.sink.report();
        if let (Some(spool), Some(metrics)) = (&self.spool, &self.metrics.spool) {
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            metrics.events.set(gauge(spool.len()));
            metrics.bytes.set(gauge(spool.bytes()));
            metrics.max_bytes.set(gauge(spool.max_bytes()));
            let age = spool.oldest_age().ok().flatten().unwrap_or_default();
            metrics.oldest_age.set(age.as_secs_f64());
        }
    }
}

/// Publishes and the broker's connection, under the sink's name; and the
/// spool's metrics, only with `--spool-dir`.
struct DeliveryMetrics {
    /// `publishes_total` by [`Outcome`], every one at 0 from the start.
    publishes: [IntCounter; Outcome::ALL.len()],
    publish_duration: Histogram,
    broker_connected: IntGauge,
    spool: Option<SpoolMetrics>,
}

struct SpoolMetrics {
    events: IntGauge,
    bytes: IntGauge,
    max_bytes: IntGauge,
    oldest_age: Gauge,
    spooled: IntCounter,
    replayed: IntCounter,
    replay_failures: IntCounter,
}

impl DeliveryMetrics {
    fn register(
        registry: &Registry,
        sink: &'static str,
        spool: bool,
    ) -> Result<Self, prometheus::Error> {
        let publishes = IntCounterVec::new(
            opts(
                "publishes_total",
                "Publish attempts, by sink and outcome (ok or the error kind).",
            ),
            &["sink", "outcome"],
        )?
        .registered(registry)?;
        let publish_duration = HistogramVec::new(
            latency_opts(
                "publish_duration_seconds",
                "Time from publish to broker acknowledgement (or failure), by sink.",
            ),
            &["sink"],
        )?
        .registered(registry)?;
        let broker_connected = IntGaugeVec::new(
            opts(
                "broker_connected",
                "1 while the sink is connected to its broker and ready, else 0.",
            ),
            &["sink"],
        )?
        .registered(registry)?;
        Ok(Self {
            publishes: Outcome::ALL
                .map(|outcome| publishes.with_label_values(&[sink, outcome.as_str()])),
            publish_duration: publish_duration.with_label_values(&[sink]),
            broker_connected: broker_connected.with_label_values(&[sink]),
            spool: spool
                .then(|| SpoolMetrics::register(registry))
                .transpose()?,
        })
    }
}

impl SpoolMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge =
            |name: &str, help: &str| IntGauge::with_opts(opts(name, help))?.registered(registry);
        let counter =
            |name: &str, help: &str| IntCounter::with_opts(opts(name, help))?.registered(registry);
        Ok(Self {
            events: gauge(
                "spool_events",
                "Webhooks waiting in the local spool for the broker.",
            )?,
            bytes: gauge(
                "spool_bytes",
                "Bytes of webhooks in the local spool (bounded by --spool-max-bytes).",
            )?,
            max_bytes: gauge(
                "spool_max_bytes",
                "--spool-max-bytes: past it, webhooks the broker cannot take get 503.",
            )?,
            oldest_age: Gauge::with_opts(opts(
                "spool_oldest_age_seconds",
                "How long the oldest spooled webhook has waited; 0 when the spool is empty.",
            ))?
            .registered(registry)?,
            spooled: counter(
                "spooled_total",
                "Webhooks answered 202 because they were written to the spool.",
            )?,
            replayed: counter(
                "spool_replayed_total",
                "Spooled webhooks delivered to the broker and removed from the spool.",
            )?,
            replay_failures: counter(
                "spool_replay_failures_total",
                "Failed attempts to deliver a spooled webhook (it stays and is retried).",
            )?,
        })
    }
}

/// Flags under "Delivery" in `--help`.
#[derive(Debug, clap::Args)]
pub struct DeliveryArgs {
    /// Where messages go. stdout is a development mode: nothing is durable.
    #[arg(long, env = "APIZEE_BRIDGE_SINK", value_enum, default_value_t = SinkKind::Stdout)]
    pub sink: SinkKind,

    /// How long to wait for the broker's acknowledgement before answering 503.
    #[arg(long, env = "APIZEE_BRIDGE_PUBLISH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// At start-up, how long a webhook waits for the broker to be reachable
    /// before it is published, instead of being answered 503 by a replica
    /// that has just started (without --spool-dir; with it, it is spooled).
    /// /readyz answers 503 until the broker is reachable. Once this has
    /// passed, or the broker has been reachable once, a webhook that finds
    /// it unreachable gets 503 at once.
    #[arg(long, env = "APIZEE_BRIDGE_STARTUP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub startup_timeout: Duration,
}

/// How long a publish and the start-up wait may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverySettings {
    pub publish_timeout: Duration,
    /// How long after start-up a webhook waits for the broker.
    pub startup_timeout: Duration,
}

impl DeliveryArgs {
    pub fn settings(&self) -> Result<DeliverySettings, ConfigError> {
        if self.publish_timeout.is_zero() {
            return Err(ConfigError::new("--publish-timeout", "must be more than 0"));
        }
        Ok(DeliverySettings {
            publish_timeout: self.publish_timeout,
            startup_timeout: self.startup_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::sink::memory::{Behaviour, MemorySink};
    use crate::spool::Spool;

    fn message() -> Message {
        Message {
            topic: "apizee.ticket.update".into(),
            key: "1".into(),
            event_id: "id".into(),
            headers: Vec::new(),
            payload: Bytes::from_static(b"{}"),
        }
    }

    fn delivery(sink: &Arc<MemorySink>, startup_timeout: Duration) -> Delivery {
        Delivery::new(
            sink.clone(),
            None,
            DeliverySettings {
                publish_timeout: Duration::from_secs(1),
                startup_timeout,
            },
            &Registry::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    // Each case runs on a fresh paused clock: the deadline is set from the
    // real clock, which a paused one leaves behind as it advances.

    /// Before the sink was ever ready, a webhook waits for it, up to the
    /// start-up timeout.
    #[tokio::test(start_paused = true)]
    async fn a_sink_never_ready_is_waited_for_until_the_start_up_timeout() {
        let sink = Arc::new(MemorySink::new());
        sink.set_ready(false);
        sink.set_behaviour(Behaviour::Fail(PublishError::NotConnected));
        let delivery = delivery(&sink, Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        assert!(
            delivery
                .deliver(&message(), tracing::Span::none)
                .await
                .is_err()
        );
        assert!(started.elapsed() >= Duration::from_secs(10), "did not wait");
    }

    /// Once /readyz has said ready, a lost broker is a 503 at once, even if
    /// the start-up watcher has not looked yet.
    #[tokio::test(start_paused = true)]
    async fn start_up_ends_when_readiness_is_first_seen() {
        let sink = Arc::new(MemorySink::new());
        sink.set_behaviour(Behaviour::Fail(PublishError::NotConnected));
        let delivery = delivery(&sink, Duration::from_secs(10));
        assert!(delivery.is_ready());
        sink.set_ready(false);
        let started = tokio::time::Instant::now();
        assert!(
            delivery
                .deliver(&message(), tracing::Span::none)
                .await
                .is_err()
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?} after /readyz had said ready",
            started.elapsed()
        );
    }

    fn exported(registry: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every outcome exists at 0 from the start, under the sink's name, and
    /// each publish counts under its own; the spool's series only with a
    /// spool.
    #[tokio::test(start_paused = true)]
    async fn publishes_are_counted_by_outcome_under_the_sink_name() {
        let sink = Arc::new(MemorySink::new());
        let registry = Registry::new();
        let settings = DeliverySettings {
            publish_timeout: Duration::from_secs(1),
            startup_timeout: Duration::ZERO,
        };
        let delivery = Delivery::new(sink.clone(), None, settings, &registry)
            .unwrap_or_else(|e| panic!("{e}"));
        let before = exported(&registry);
        for outcome in Outcome::ALL {
            let line = format!(
                "apizee_bridge_publishes_total{{outcome=\"{}\",sink=\"memory\"}} 0",
                outcome.as_str()
            );
            assert!(before.contains(&line), "missing {line}");
        }
        assert!(before.contains(r#"apizee_bridge_broker_connected{sink="memory"} 0"#));
        assert!(!before.contains("apizee_bridge_spool"), "{before}");
        assert!(
            delivery
                .deliver(&message(), tracing::Span::none)
                .await
                .is_ok()
        );
        sink.set_behaviour(Behaviour::Fail(PublishError::Timeout(Duration::ZERO)));
        assert!(
            delivery
                .deliver(&message(), tracing::Span::none)
                .await
                .is_err()
        );
        delivery.report();
        let after = exported(&registry);
        for line in [
            r#"apizee_bridge_publishes_total{outcome="ok",sink="memory"} 1"#,
            r#"apizee_bridge_publishes_total{outcome="timeout",sink="memory"} 1"#,
            r#"apizee_bridge_publish_duration_seconds_count{sink="memory"} 2"#,
            r#"apizee_bridge_broker_connected{sink="memory"} 1"#,
        ] {
            assert!(after.contains(line), "missing {line}");
        }
    }

    /// Cancelled while publishing, the replayer finishes that event (it
    /// reaches the broker and leaves the spool) and stops before the next:
    /// every event is either delivered or still on disk, none twice, none
    /// lost.
    #[tokio::test]
    async fn the_replayer_stops_between_events() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = Arc::new(Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}")));
        for _ in 0..3 {
            spool
                .append(&message())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let sink = Arc::new(MemorySink::new());
        sink.set_behaviour(Behaviour::Delay(Duration::from_millis(200)));
        let settings = DeliverySettings {
            publish_timeout: Duration::from_secs(5),
            startup_timeout: Duration::ZERO,
        };
        let delivery = Arc::new(
            Delivery::new(
                sink.clone(),
                Some(spool.clone()),
                settings,
                &Registry::new(),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let stop = CancellationToken::new();
        let replay = tokio::spawn(delivery.clone().replay(stop.clone()));
        // Cancelled as soon as the first event has arrived: the second is
        // then under way (each publish takes 200 ms), the third not begun.
        tokio::time::timeout(Duration::from_secs(5), async {
            while sink.messages().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("nothing was replayed"));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), replay)
            .await
            .unwrap_or_else(|_| panic!("the replayer did not stop"))
            .unwrap_or_else(|e| panic!("{e}"));
        let delivered = sink.messages().len() as u64;
        assert!(!spool.is_empty(), "it stopped before the spool was empty");
        assert_eq!(
            delivered + spool.len(),
            3,
            "every event delivered or still on disk, none twice"
        );
    }
}
