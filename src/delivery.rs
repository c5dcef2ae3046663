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
use crate::metrics::Metrics;
use crate::route::Message;
use crate::sink::SinkKind;
use crate::sink::{PublishError, Sink};
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
    metrics: Arc<Metrics>,
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
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sink,
            spool,
            publish_timeout: settings.publish_timeout,
            metrics,
            spooled: Notify::new(),
            startup_deadline: Instant::now() + settings.startup_timeout,
            started: watch::Sender::new(false),
        }
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

    pub async fn deliver(&self, message: &Message) -> Result<Delivered, PublishError> {
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
            return self.spool(spool, message, PublishError::NotConnected).await;
        }
        match self.publish(message).await {
            Ok(()) => Ok(Delivered::Acknowledged),
            Err(error) if error.is_transient() => self.spool(spool, message, error).await,
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
        let outcome = self.publish_within_timeout(message).await;
        let label = match &outcome {
            Ok(()) => "ok",
            Err(e) => e.kind(),
        };
        self.metrics
            .published(self.sink.name(), label, started.elapsed());
        outcome
    }

    /// Appends to the spool; if that fails too, the sender gets the
    /// original broker error.
    async fn spool(
        &self,
        spool: &Arc<Spool>,
        message: &Message,
        broker_error: PublishError,
    ) -> Result<Delivered, PublishError> {
        let spool = spool.clone();
        let owned = message.clone();
        let appended = tokio::task::spawn_blocking(move || spool.append(&owned))
            .await
            .map_err(|e| crate::spool::SpoolError::Storage(e.to_string()))
            .and_then(|r| r);
        match appended {
            Ok(_) => {
                self.metrics.spooled();
                self.spooled.notify_one();
                Ok(Delivered::Spooled)
            }
            Err(e) => {
                tracing::warn!(error = %e, broker = %broker_error, "cannot spool the webhook");
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
                    self.metrics.spool_replay_failed();
                    tracing::warn!(error = %e, topic = %spooled.message.topic, "replaying a spooled webhook failed; will retry");
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(REPLAY_BACKOFF) => {}
                    }
                    break;
                }
                let remover = spool.clone();
                let sequence = spooled.sequence;
                match tokio::task::spawn_blocking(move || remover.remove(sequence)).await {
                    Ok(Ok(())) => self.metrics.spool_replayed(),
                    // Left in place, it is published again later: a
                    // duplicate with the same event id, never a loss.
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot remove a replayed webhook"),
                    Err(e) => tracing::error!(error = %e, "spool remover failed"),
                }
            }
        }
    }

    /// Sets the spool's gauges; called at every scrape.
    pub fn report(&self, metrics: &Metrics) {
        metrics.set_broker_connected(self.sink.name(), self.sink.is_ready());
        self.sink.report(metrics);
        if let Some(spool) = &self.spool {
            let age = spool.oldest_age().ok().flatten().unwrap_or_default();
            metrics.set_spool(spool.len(), spool.bytes(), spool.max_bytes(), age);
        }
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
            Arc::new(Metrics::new().unwrap_or_else(|e| panic!("{e}"))),
        )
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
        assert!(delivery.deliver(&message()).await.is_err());
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
        assert!(delivery.deliver(&message()).await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?} after /readyz had said ready",
            started.elapsed()
        );
    }
}
