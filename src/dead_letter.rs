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

use crate::config::DeadLetter;
use crate::delivery::Delivery;
use crate::http::rejection::Rejection;
use crate::metrics::Metrics;
use crate::route::{self, Message};

/// Dead letters published at once: enough to keep up with a broker that
/// answers in milliseconds, few enough that a frozen one (every publish
/// waiting out `--publish-timeout`) holds little.
const CONCURRENT_PUBLISHES: usize = 16;

/// The `outcome` of a dead letter dropped because the queue was full, in
/// `apizee_bridge_dead_letters_total` beside `ok` and the publish errors.
pub const SHED: &str = "shed";

pub struct DeadLetters {
    settings: DeadLetter,
    /// Taken at shutdown, which closes the queue once the worker has
    /// drained it.
    queue: Mutex<Option<mpsc::Sender<Message>>>,
    /// Taken by [`DeadLetters::run`].
    worker: Mutex<Option<mpsc::Receiver<Message>>>,
    metrics: Arc<Metrics>,
}

impl DeadLetters {
    pub fn new(settings: DeadLetter, metrics: Arc<Metrics>) -> Self {
        let (queue, worker) = mpsc::channel(settings.queue);
        Self {
            settings,
            queue: Mutex::new(Some(queue)),
            worker: Mutex::new(Some(worker)),
            metrics,
        }
    }

    /// Queues a dead letter for `rejection`, if it is a kind that is
    /// dead-lettered, and returns at once.
    pub fn offer(&self, rejection: &Rejection, body: Bytes, received_at: SystemTime) {
        let wanted = match rejection {
            Rejection::InvalidEnvelope(_) => true,
            Rejection::MalformedJson(_) => self.settings.malformed,
            _ => false,
        };
        if !wanted {
            return;
        }
        let details = serde_json::to_string(&rejection.details()).unwrap_or_default();
        let message = route::dead_letter_message(
            &self.settings.topic,
            body,
            rejection.code(),
            &details,
            received_at,
        );
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let queued = match queue.as_ref() {
            Some(queue) => queue.try_send(message).is_ok(),
            None => false,
        };
        drop(queue);
        if queued {
            self.metrics.dead_letter_queued();
        } else {
            self.metrics.dead_lettered(SHED);
            tracing::warn!(
                topic = %self.settings.topic,
                capacity = self.settings.queue,
                "dead-letter queue full; dropped this dead letter (the sender still got its 4xx)"
            );
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
                let metrics = self.metrics.clone();
                async move {
                    match delivery.publish_within_timeout(&message).await {
                        Ok(()) => metrics.dead_lettered("ok"),
                        Err(e) => {
                            metrics.dead_lettered(e.kind());
                            tracing::warn!(error = %e, topic = %message.topic, "dead letter not published");
                        }
                    }
                    metrics.dead_letter_done();
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
