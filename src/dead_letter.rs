//! Dead letters: a copy of each refused-but-readable request for the
//! operators, published to `--dead-letter-topic` in the background.
//!
//! The sender's 4xx never waits on this: [`DeadLetters::offer`] only puts
//! the message on a bounded queue and returns, so a refused request gives
//! back its in-flight slot as soon as its answer is written, and a slow or
//! absent broker cannot turn cheap refusals into slow ones. When the queue
//! is full, the newest dead letter is dropped and counted as `shed`: under
//! a flood of bad requests, memory stays bounded (at most `--dead-letter-queue`
//! bodies) and the dead letters already queued still go out.
//!
//! A worker publishes what is queued, a few at a time, each bounded by
//! `--publish-timeout`; nothing is retried or spooled, since the sender was
//! told no and still owns the event. At shutdown the queue is closed and
//! what it holds is published before the sink is flushed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::config::ConfigError;
use crate::delivery::Delivery;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use crate::metrics::{Registered, opts};
use crate::route::is_valid_topic;
use crate::route::{self, Message};
use crate::sink::Outcome;

/// The refusals a dead letter is kept for, as the rejection table
/// (`http/rejection.rs`) names them; every other refusal (401, 413, ...)
/// is never dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Letter {
    /// Valid JSON whose envelope breaks the spec: always kept.
    InvalidEnvelope,
    /// Not JSON at all: kept with `--dead-letter-malformed`.
    MalformedJson,
}

/// Dead letters published at once: enough to keep up with a broker that
/// answers in milliseconds, few enough that a frozen one (every publish
/// waiting out `--publish-timeout`) holds little.
const CONCURRENT_PUBLISHES: usize = 16;

/// The `outcome` of a dead letter dropped because the queue was full, in
/// `apizee_bridge_dead_letters_total` beside the publish outcomes.
pub const SHED: &str = "shed";

/// Registered with the dead letters, so a bridge without
/// `--dead-letter-topic` exports none.
struct DeadLetterMetrics {
    /// `dead_letters_total` by publish [`Outcome`].
    published: [IntCounter; Outcome::ALL.len()],
    /// `dead_letters_total{outcome="shed"}`.
    shed: IntCounter,
    queue: IntGauge,
}

impl DeadLetterMetrics {
    fn register(registry: &Registry, capacity: usize) -> Result<Self, prometheus::Error> {
        // Set once: what `dead_letter_queue_messages` fills towards before
        // dead letters are shed.
        IntGauge::with_opts(opts(
            "dead_letter_queue_capacity",
            "--dead-letter-queue: dead letters queued at most; past it they are shed.",
        ))?
        .registered(registry)?
        .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        let outcomes = IntCounterVec::new(
            opts(
                "dead_letters_total",
                "Refused requests published to --dead-letter-topic, by outcome (ok or the error kind).",
            ),
            &["outcome"],
        )?
        .registered(registry)?;
        Ok(Self {
            published: Outcome::ALL.map(|outcome| outcomes.with_label_values(&[outcome.as_str()])),
            shed: outcomes.with_label_values(&[SHED]),
            queue: IntGauge::with_opts(opts(
                "dead_letter_queue_messages",
                "Dead letters queued or being published: at most --dead-letter-queue, plus the \
                 few whose publish is under way.",
            ))?
            .registered(registry)?,
        })
    }
}

pub struct DeadLetters {
    settings: DeadLetter,
    /// Taken at shutdown, which closes the queue once the worker has
    /// drained it.
    queue: Mutex<Option<mpsc::Sender<Message>>>,
    /// Taken by [`DeadLetters::run`].
    worker: Mutex<Option<mpsc::Receiver<Message>>>,
    metrics: DeadLetterMetrics,
}

impl DeadLetters {
    /// Its metrics are registered in `registry`.
    pub fn new(settings: DeadLetter, registry: &Registry) -> Result<Self, prometheus::Error> {
        let (queue, worker) = mpsc::channel(settings.queue);
        let metrics = DeadLetterMetrics::register(registry, settings.queue)?;
        Ok(Self {
            settings,
            queue: Mutex::new(Some(queue)),
            worker: Mutex::new(Some(worker)),
            metrics,
        })
    }

    /// Whether a refusal of this kind is kept as configured.
    pub fn wants(&self, letter: Letter) -> bool {
        match letter {
            Letter::InvalidEnvelope => true,
            Letter::MalformedJson => self.settings.malformed,
        }
    }

    /// Queues a dead letter of `body`, refused for `reason` (the rejection's
    /// code) with `details` (its JSON), and returns at once. `log_span`
    /// makes the webhook's span for the line logged when the queue is full.
    pub fn offer(
        &self,
        reason: &str,
        details: &str,
        body: Bytes,
        received_at: SystemTime,
        log_span: impl FnOnce() -> tracing::Span,
    ) {
        let message =
            route::dead_letter_message(&self.settings.topic, body, reason, details, received_at);
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let queued = match queue.as_ref() {
            Some(queue) => queue.try_send(message).is_ok(),
            None => false,
        };
        drop(queue);
        if queued {
            self.metrics.queue.inc();
        } else {
            self.metrics.shed.inc();
            log_span().in_scope(|| {
                tracing::warn!(
                    topic = %self.settings.topic,
                    capacity = self.settings.queue,
                    "dead-letter queue full; dropped this dead letter (the sender still got its 4xx)"
                );
            });
        }
    }

    /// Publishes queued dead letters until [`DeadLetters::close`] and the
    /// queue is empty. Returns at once if called a second time.
    pub async fn run(self: Arc<Self>, delivery: Arc<Delivery>) {
        let taken = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut worker) = taken else {
            return;
        };
        let queued = futures_util::stream::poll_fn(move |cx| worker.poll_recv(cx));
        queued
            .for_each_concurrent(CONCURRENT_PUBLISHES, |message| {
                let delivery = delivery.clone();
                let metrics = &self.metrics;
                async move {
                    let result = delivery.publish_within_timeout(&message).await;
                    metrics.published[Outcome::of(&result) as usize].inc();
                    if let Err(e) = result {
                        tracing::warn!(error = %e, topic = %message.topic, "dead letter not published");
                    }
                    metrics.queue.dec();
                }
            })
            .await;
    }

    /// Takes no more dead letters; [`DeadLetters::run`] returns once it has
    /// published the ones already queued.
    pub fn close(&self) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// Flags under "Dead letters" in `--help`.
#[derive(Debug, clap::Args)]
pub struct DeadLetterArgs {
    /// Publish every request refused with 422 (JSON, but not a valid
    /// envelope) to this topic, body untouched, with the reason in the
    /// apizee-rejection-reason and apizee-rejection-details headers. The
    /// sender gets its 422 at once; the dead letter is published in the
    /// background. Created with the template's topics by
    /// --kafka-create-topics, and captured by --nats-stream.
    #[arg(long, env = "APIZEE_BRIDGE_DEAD_LETTER_TOPIC", value_name = "NAME")]
    pub dead_letter_topic: Option<String>,

    /// Also dead-letter bodies that are not JSON at all (400).
    #[arg(long, env = "APIZEE_BRIDGE_DEAD_LETTER_MALFORMED")]
    pub dead_letter_malformed: bool,

    /// Most dead letters waiting to be published. When the broker is slow
    /// or down and the queue is full, the newest dead letter is dropped and
    /// counted (apizee_bridge_dead_letters_total{outcome="shed"}). Each
    /// holds its body: at most this many times --max-body-bytes of memory.
    #[arg(long, env = "APIZEE_BRIDGE_DEAD_LETTER_QUEUE", default_value_t = 128)]
    pub dead_letter_queue: usize,
}

/// Where refused-but-readable requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    /// Also bodies that are not JSON (400), not only invalid envelopes (422).
    pub malformed: bool,
    /// Most dead letters waiting to be published.
    pub queue: usize,
}

impl DeadLetterArgs {
    pub fn settings(self) -> Result<Option<DeadLetter>, ConfigError> {
        match (self.dead_letter_topic, self.dead_letter_malformed) {
            (Some(_), _) if self.dead_letter_queue == 0 => Err(ConfigError::new(
                "--dead-letter-queue",
                "must be at least 1",
            )),
            (Some(topic), malformed) if is_valid_topic(&topic) => Ok(Some(DeadLetter {
                topic,
                malformed,
                queue: self.dead_letter_queue,
            })),
            (Some(topic), _) => Err(ConfigError::new(
                "--dead-letter-topic",
                format!(
                    "{topic:?} is not a valid topic: use ASCII letters, digits, '-', '_' \
                     and '.' between non-empty parts"
                ),
            )),
            (None, true) => Err(ConfigError::new(
                "--dead-letter-malformed",
                "needs --dead-letter-topic",
            )),
            (None, false) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CapturedLogs;

    /// The line about a dead letter dropped from a full queue names the
    /// webhook's trace, as every line about a webhook does, though no span
    /// was current when `offer` was called.
    #[test]
    fn a_dead_letter_shed_is_logged_in_its_webhooks_span() {
        let settings = DeadLetter {
            topic: "apizee.dead".into(),
            malformed: false,
            queue: 1,
        };
        let dead_letters =
            DeadLetters::new(settings, &Registry::new()).unwrap_or_else(|e| panic!("{e}"));
        let logs = CapturedLogs::start();
        let span = || tracing::info_span!("webhook", trace_id = "4bf92f35");
        for _ in 0..2 {
            dead_letters.offer(
                "invalid_envelope",
                "[]",
                Bytes::from_static(b"{}"),
                SystemTime::now(),
                span,
            );
        }
        let lines = logs.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(
            logs.starting_with("dead-letter queue full").len(),
            1,
            "{lines:?}"
        );
        assert_eq!(lines[0]["span"]["trace_id"], "4bf92f35", "{lines:?}");
    }
}
