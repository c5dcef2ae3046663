//! Delivery: gets a message to the broker, or, with `--spool-dir`, to the
//! durable spool when the broker is down or slow, and replays the spool
//! when the broker is back.
//!
//! The HTTP handler asks [`Delivery::deliver`] and answers 200 for
//! [`Delivered::Acknowledged`], 202 for [`Delivered::Spooled`], and 503 for
//! an error. Only failures that say nothing about the message itself (not
//! connected, no ack in time) go to the spool: a message the broker refused
//! would be refused again on replay and block everything behind it.
//!
//! Order per objectId holds through the spool: a webhook whose objectId
//! still has events in the spool is spooled behind them (cause `queued`);
//! every other webhook goes to the broker, spool or not. The replay keeps
//! many publishes in flight, with at most one per objectId, so a failure
//! can never let a later event of an objectId overtake an earlier one; a
//! window that fails is retried from what the broker did not acknowledge
//! (a duplicate with the same event id at worst, never a loss).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
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
use crate::spool::{Spool, SpoolError, Spooled};

/// How many spooled events a replay round reads at once, and at most how
/// many bytes of them: bodies of up to --max-body-bytes each must not add
/// up to more memory than a container is given.
const REPLAY_BATCH: usize = 1024;
const REPLAY_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// At most how many bytes of bodies the replay has in flight (as many
/// events as the sink's [`Sink::pipeline_depth`] otherwise): a broker
/// client holds a copy of each until it is acknowledged.
const REPLAY_WINDOW_BYTES: usize = 8 * 1024 * 1024;
/// The most the replay holds in bodies: the batch being sent, the next one
/// being read, and the copies the broker client keeps of what is in flight.
/// For the deploy files' memory limits (tests/deploy/kubernetes.rs).
pub const REPLAY_MEMORY_BYTES: u64 = 2 * REPLAY_BATCH_BYTES + REPLAY_WINDOW_BYTES as u64;
/// A cause of spooling that has not changed is logged again only this long
/// after the last line: an outage is a few lines, not one per webhook.
const EPISODE_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Pause after a failed replay before trying the same event again.
const REPLAY_BACKOFF: Duration = Duration::from_millis(500);
/// How often an idle replayer looks at the sink and the spool even without
/// being woken; a safety net, since appends also wake it.
const REPLAY_IDLE_CHECK: Duration = Duration::from_millis(250);
/// How often, during start-up, the sink is looked at.
const STARTUP_POLL: Duration = Duration::from_millis(20);
/// A drain stops publishing this long before its deadline (or at half the
/// time it has, if less), for what is in flight to be acknowledged and
/// removed rather than sent again at the next start.
const DRAIN_SETTLE: Duration = Duration::from_millis(500);
/// A replay failure (a publish, a read, a removal) is logged at most this
/// often; the lines in between are counted in the next one.
const REPLAY_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The broker acknowledged the message.
    Acknowledged,
    /// The message is synced to the local spool and will be delivered.
    Spooled,
}

/// Why a webhook went to the spool: the `cause` label of
/// `apizee_bridge_spooled_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolCause {
    /// The broker failed it with this transient outcome.
    Broker(Outcome),
    /// Older events of its objectId wait in the spool: it queues behind
    /// them so they reach the broker first.
    Queued,
}

impl SpoolCause {
    /// Every cause, in the order their series are listed.
    fn all() -> impl Iterator<Item = SpoolCause> {
        Outcome::ALL
            .into_iter()
            .filter(|outcome| outcome.is_transient())
            .map(SpoolCause::Broker)
            .chain([SpoolCause::Queued])
    }

    /// Its place in [`SpoolCause::all`], where its counter is.
    fn index(self) -> usize {
        SpoolCause::all()
            .position(|cause| cause == self)
            .unwrap_or(0)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SpoolCause::Broker(outcome) => outcome.as_str(),
            SpoolCause::Queued => "queued",
        }
    }
}

/// Spooling seen from the log: one line when it begins, one when its cause
/// changes (at most every [`EPISODE_LOG_INTERVAL`]), one when the spool is
/// empty again.
#[derive(Debug, Default)]
struct Episode {
    /// The cause last logged, while spooling goes on.
    cause: Option<SpoolCause>,
    logged_at: Option<Instant>,
    spooled: u64,
}

/// What [`Delivery::drain_spool`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Events delivered and removed from the spool.
    pub delivered: u64,
    /// Events still in the spool.
    pub left: u64,
}

/// How a round of replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Nothing more to read.
    Empty,
    /// The sink is not ready; nothing more was sent.
    NotReady,
    /// The caller's token, between two events.
    Stopped,
    /// A publish, a read or a removal failed: retried after a pause.
    Failed,
}

/// What the replayer keeps between rounds.
#[derive(Debug, Default)]
struct ReplayState {
    /// Events the broker acknowledged whose removal failed (a disk fault):
    /// removed before anything else is read, never published again.
    unremoved: Vec<u64>,
}

/// The removal of a batch of replayed events, running on the spool's
/// writer while the next batch is published.
struct Removal {
    task: tokio::task::JoinHandle<Result<(), SpoolError>>,
    sequences: Vec<u64>,
}

impl Removal {
    fn start(spool: &Arc<Spool>, sequences: Vec<u64>) -> Self {
        let (spool, removed) = (spool.clone(), sequences.clone());
        Self {
            task: tokio::spawn(async move { spool.remove(removed).await }),
            sequences,
        }
    }

    async fn finish(self) -> (Vec<u64>, Result<(), SpoolError>) {
        let result = match self.task.await {
            Ok(result) => result,
            Err(e) => Err(SpoolError::Storage(format!("the removal task failed: {e}"))),
        };
        (self.sequences, result)
    }
}

/// One replayed publish, once its acknowledgement came (or did not).
struct Replayed {
    sequence: u64,
    key: u64,
    /// The body's, counted against [`REPLAY_WINDOW_BYTES`].
    bytes: usize,
    topic: String,
    result: Result<(), PublishError>,
}

fn key_hash(key: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(key, &mut hasher);
    std::hash::Hasher::finish(&hasher)
}

/// Reads the batch of spooled events after `after` on a blocking thread.
fn read_after(
    spool: &Arc<Spool>,
    after: Option<u64>,
) -> impl Future<Output = Result<Vec<Spooled>, SpoolError>> + use<> {
    let spool = spool.clone();
    let read = tokio::task::spawn_blocking(move || {
        spool.oldest_after(after, REPLAY_BATCH, REPLAY_BATCH_BYTES)
    });
    async move {
        read.await.unwrap_or_else(|e| {
            Err(SpoolError::Storage(format!(
                "the spool's reader failed: {e}"
            )))
        })
    }
}

/// Lets a line through at most once per interval, counting those held back.
#[derive(Debug)]
struct LogLimiter {
    interval: Duration,
    /// When the last line was let through, and how many occurrences since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one occurrence; when a line is due (the first, then at most
    /// one per interval), how many occurrences it stands for: itself and
    /// those held back since the last line.
    fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (logged_at, count) = &mut *state;
        *count += 1;
        if logged_at.is_some_and(|at| at.elapsed() < self.interval) {
            return None;
        }
        *logged_at = Some(Instant::now());
        Some(std::mem::take(count))
    }
}

pub struct Delivery {
    sink: Arc<dyn Sink>,
    spool: Option<Arc<Spool>>,
    publish_timeout: Duration,
    metrics: DeliveryMetrics,
    episode: Mutex<Episode>,
    /// Webhooks the spool could not take, for the log.
    spool_refusals: LogLimiter,
    spooled: Notify,
    /// Until then, a webhook waits for a sink that has never been ready.
    startup_deadline: Instant,
    /// True once start-up is over: the sink was seen ready once, or the
    /// deadline passed.
    started: watch::Sender<bool>,
    /// Held by a round of replay: the replayer's and a drain's never
    /// overlap, which would break per-objectId order.
    replaying: tokio::sync::Mutex<ReplayState>,
    replay_log: LogLimiter,
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
            episode: Mutex::new(Episode::default()),
            spool_refusals: LogLimiter::new(EPISODE_LOG_INTERVAL),
            spooled: Notify::new(),
            startup_deadline: Instant::now() + settings.startup_timeout,
            started: watch::Sender::new(false),
            replaying: tokio::sync::Mutex::new(ReplayState::default()),
            replay_log: LogLimiter::new(REPLAY_LOG_INTERVAL),
        })
    }

    pub fn sink(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    /// Events waiting in the spool; 0 without one.
    pub fn spooled_events(&self) -> u64 {
        self.spool.as_ref().map_or(0, |spool| spool.len())
    }

    /// Ready while the broker takes messages, or, once start-up is over,
    /// while the spool has room to keep them and can write: a replica that
    /// has just started waits for its broker (up to --startup-timeout)
    /// before it takes webhooks, rather than spool the first ones for
    /// nothing, and one whose disk is full or failing tells its balancer.
    pub fn is_ready(&self) -> bool {
        self.sink_ready()
            || (self.startup_over()
                && self
                    .spool
                    .as_ref()
                    .is_some_and(|s| s.has_room() && s.is_writable()))
    }

    fn startup_over(&self) -> bool {
        *self.started.borrow() || Instant::now() >= self.startup_deadline
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
        // With a spool too: a fresh replica's first webhooks would
        // otherwise find the broker not yet connected and be spooled.
        self.wait_for_startup().await;
        let Some(spool) = &self.spool else {
            return self
                .publish(message)
                .await
                .map(|()| Delivered::Acknowledged);
        };
        if spool.holds_key(&message.key) {
            return self
                .spool(spool, message, SpoolCause::Queued, None, log_span)
                .await;
        }
        match self.publish(message).await {
            Ok(()) => Ok(Delivered::Acknowledged),
            Err(error) if error.is_transient() => {
                let cause = SpoolCause::Broker(error.outcome());
                self.spool(spool, message, cause, Some(error), log_span)
                    .await
            }
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
    /// no readiness event, so it is looked at every `STARTUP_POLL`, here
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
        self.count_publish(&result, started);
        result
    }

    fn count_publish(&self, result: &Result<(), PublishError>, started: Instant) {
        self.metrics.publishes[Outcome::of(result) as usize].inc();
        self.metrics
            .publish_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// Appends to the spool; if that fails too, the sender gets the
    /// broker's error (or, queued behind the spool, not connected).
    async fn spool(
        &self,
        spool: &Spool,
        message: &Message,
        cause: SpoolCause,
        broker_error: Option<PublishError>,
        log_span: impl FnOnce() -> tracing::Span,
    ) -> Result<Delivered, PublishError> {
        let broker_error = broker_error.unwrap_or(PublishError::NotConnected);
        match spool.append(message).await {
            Ok(_) => {
                if let Some(metrics) = &self.metrics.spool {
                    metrics.spooled[cause.index()].inc();
                }
                self.spooling(cause, &broker_error);
                self.spooled.notify_one();
                Ok(Delivered::Spooled)
            }
            Err(e) => {
                // A full or failing spool refuses every webhook the broker
                // cannot take: one line, then one every interval with how
                // many were refused meanwhile, never a line per webhook.
                if let Some(refused) = self.spool_refusals.allow() {
                    log_span().in_scope(|| {
                        tracing::warn!(
                            error = %e,
                            broker = %broker_error,
                            refused,
                            "cannot spool the webhook; webhooks the broker cannot take get 503 \
                             until the spool can take them"
                        );
                    });
                }
                Err(broker_error)
            }
        }
    }

    /// Logs that webhooks are being spooled, and why: once when it begins,
    /// again when the cause changes, never a line per webhook.
    fn spooling(&self, cause: SpoolCause, broker_error: &PublishError) {
        let mut episode = self.episode.lock().unwrap_or_else(PoisonError::into_inner);
        episode.spooled += 1;
        let quiet = episode
            .logged_at
            .is_some_and(|at| at.elapsed() < EPISODE_LOG_INTERVAL);
        let (first, changed) = (episode.cause.is_none(), episode.cause != Some(cause));
        if !first && (!changed || quiet) {
            return;
        }
        episode.cause = Some(cause);
        episode.logged_at = Some(Instant::now());
        let spooled = episode.spooled;
        drop(episode);
        match cause {
            SpoolCause::Queued => tracing::warn!(
                cause = cause.as_str(),
                spooled,
                "spooling webhooks behind older events of their objectId still in the spool; \
                 they are answered 202 and replayed in order"
            ),
            SpoolCause::Broker(_) => tracing::warn!(
                cause = cause.as_str(),
                error = %broker_error,
                spooled,
                "spooling webhooks: the broker cannot take them now; they are answered 202 \
                 and replayed when it can"
            ),
        }
    }

    /// Logs the end of an episode of spooling, once the spool is empty.
    fn spool_emptied(&self) {
        let mut episode = self.episode.lock().unwrap_or_else(PoisonError::into_inner);
        if episode.cause.is_some() {
            let spooled = episode.spooled;
            *episode = Episode::default();
            drop(episode);
            tracing::info!(
                spooled,
                "spool empty: every spooled webhook reached the broker; webhooks go to it directly again"
            );
        }
    }

    /// Replays the spool into the sink, oldest first, until `stop` is
    /// cancelled. It stops between two events, never between a publish and
    /// the removal of what it published; what is left stays on disk for
    /// the next start, or for [`Delivery::drain_spool`] at shutdown.
    /// Returns at once without a spool.
    pub async fn replay(self: Arc<Self>, stop: CancellationToken) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        while !stop.is_cancelled() {
            match self.replay_round(&spool, &stop).await {
                Round::Empty | Round::NotReady => {
                    if spool.is_empty() {
                        self.spool_emptied();
                    }
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::time::timeout(REPLAY_IDLE_CHECK, self.spooled.notified()) => {}
                    }
                }
                Round::Stopped => {}
                Round::Failed => {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(REPLAY_BACKOFF) => {}
                    }
                }
            }
        }
    }

    /// Delivers what the spool holds until it is empty or `deadline` (a
    /// broker not ready is waited for meanwhile): at shutdown, once no webhook comes in any
    /// more, and by `apizee-bridge spool drain`. New publishes stop
    /// `DRAIN_SETTLE` before the deadline so that what is in flight can
    /// still be acknowledged and removed; what is left stays on disk.
    pub async fn drain_spool(&self, deadline: tokio::time::Instant) -> Drained {
        let Some(spool) = self.spool.clone() else {
            return Drained::default();
        };
        let before = spool.len();
        let stop = CancellationToken::new();
        let draining = async {
            loop {
                match self.replay_round(&spool, &stop).await {
                    Round::Empty | Round::Stopped => break,
                    // Stopped while its client reconnects (a broker back a
                    // moment ago): waited for, within the deadline.
                    Round::NotReady => {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = async {
                                while !self.sink.is_ready() {
                                    tokio::time::sleep(STARTUP_POLL).await;
                                }
                            } => {}
                        }
                    }
                    Round::Failed => {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(REPLAY_BACKOFF) => {}
                        }
                    }
                }
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let settle = deadline - DRAIN_SETTLE.min(left / 2);
        let stopping = async {
            tokio::time::sleep_until(settle).await;
            stop.cancel();
            std::future::pending::<()>().await;
        };
        // Past the deadline, whatever is still in flight is dropped: its
        // events stay on disk (sent again later, with the same event ids).
        let _ = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                () = draining => {}
                () = stopping => {}
            }
        })
        .await;
        let left = spool.len();
        Drained {
            delivered: before.saturating_sub(left),
            left,
        }
    }

    /// One round of replay, until the spool has no more, the sink is not
    /// ready, `stop`, or a failure. Events are read in batches (the next
    /// one while the current one is sent) and published in order, up to
    /// [`Sink::pipeline_depth`] in flight across batches and at most one per
    /// objectId, so that when one fails no later event of its objectId can
    /// have reached the broker. Acknowledged events are removed in batches
    /// while the next ones are sent, one removal at a time. At a failure
    /// or at `stop`, sending stops and what is in flight is waited for:
    /// each acknowledged event leaves the spool, the others are sent again
    /// by the next round (a duplicate with the same event id at worst).
    /// Rounds never overlap.
    async fn replay_round(&self, spool: &Arc<Spool>, stop: &CancellationToken) -> Round {
        let mut state = self.replaying.lock().await;
        // Acknowledged by the broker, not yet removed: removed first, and
        // never published again.
        if !state.unremoved.is_empty() {
            let unremoved = Removal::start(spool, std::mem::take(&mut state.unremoved));
            if !self.removal_done(Some(unremoved), &mut state).await {
                return Round::Failed;
            }
        }
        if spool.is_empty() {
            return Round::Empty;
        }
        if !self.sink.is_ready() {
            return Round::NotReady;
        }
        let mut in_flight = FuturesOrdered::new();
        // Objects with an event in flight, by a hash of the key: two keys
        // sharing one can only wait for each other.
        let mut keys: HashSet<u64> = HashSet::new();
        let mut in_flight_bytes = 0;
        let depth = self.sink.pipeline_depth();
        let mut acknowledged = Vec::new();
        let mut removing: Option<Removal> = None;
        let mut failure: Option<String> = None;
        let mut next = Some(read_after(spool, None));
        let mut round = 'round: loop {
            let Some(read) = next.take() else {
                break Round::Empty;
            };
            let batch = match read.await {
                Ok(batch) => batch,
                Err(e) => {
                    failure = Some(format!("cannot read the spool: {e}"));
                    break Round::Failed;
                }
            };
            let Some(last) = batch.last() else {
                break Round::Empty;
            };
            next = Some(read_after(spool, Some(last.sequence)));
            for spooled in &batch {
                let key = key_hash(&spooled.message.key);
                // Room in the window, and no earlier event of its objectId
                // in it.
                let size = spooled.message.payload.len();
                while in_flight.len() >= depth
                    || (in_flight_bytes + size > REPLAY_WINDOW_BYTES && !in_flight.is_empty())
                    || keys.contains(&key)
                {
                    let Some(done): Option<Replayed> = in_flight.next().await else {
                        break;
                    };
                    in_flight_bytes -= done.bytes;
                    self.acknowledged(done, &mut keys, &mut acknowledged, &mut failure);
                }
                if failure.is_some() {
                    break 'round Round::Failed;
                }
                if stop.is_cancelled() {
                    break 'round Round::Stopped;
                }
                if !self.sink.is_ready() {
                    break 'round Round::NotReady;
                }
                let started = Instant::now();
                let sent =
                    tokio::time::timeout(self.publish_timeout, self.sink.send(&spooled.message))
                        .await
                        .unwrap_or(Err(PublishError::Timeout(self.publish_timeout)));
                let acknowledgement = match sent {
                    Ok(acknowledgement) => acknowledgement,
                    Err(error) => {
                        self.count_publish(&Err(error.clone()), started);
                        self.replay_failed(&mut failure, &error, &spooled.message.topic);
                        break 'round Round::Failed;
                    }
                };
                keys.insert(key);
                in_flight_bytes += size;
                let (sequence, topic) = (spooled.sequence, spooled.message.topic.clone());
                let timeout = self.publish_timeout.saturating_sub(started.elapsed());
                in_flight.push_back(async move {
                    let result = tokio::time::timeout(timeout, acknowledgement)
                        .await
                        .unwrap_or(Err(PublishError::Timeout(self.publish_timeout)));
                    self.count_publish(&result, started);
                    Replayed {
                        sequence,
                        key,
                        bytes: size,
                        topic,
                        result,
                    }
                });
            }
            // Between two batches: what was acknowledged meanwhile is
            // removed while the next batch is sent.
            if !self.removal_done(removing.take(), &mut state).await {
                break Round::Failed;
            }
            removing = Some(Removal::start(spool, std::mem::take(&mut acknowledged)));
        };
        // What was sent is waited for, whatever happened since: each
        // acknowledged event leaves the spool, so a stop or a failure
        // resends no more than it must.
        while let Some(done) = in_flight.next().await {
            self.acknowledged(done, &mut keys, &mut acknowledged, &mut failure);
        }
        if failure.is_some() {
            round = Round::Failed;
        }
        if !self.removal_done(removing.take(), &mut state).await {
            round = Round::Failed;
            state.unremoved.append(&mut acknowledged);
        }
        if !acknowledged.is_empty()
            && !self
                .removal_done(Some(Removal::start(spool, acknowledged)), &mut state)
                .await
        {
            round = Round::Failed;
        }
        if let Some(problem) = failure {
            self.replay_problem(&problem);
        }
        round
    }

    /// Takes the outcome of one replayed publish off the window.
    fn acknowledged(
        &self,
        done: Replayed,
        keys: &mut HashSet<u64>,
        acknowledged: &mut Vec<u64>,
        failure: &mut Option<String>,
    ) {
        keys.remove(&done.key);
        match done.result {
            Ok(()) => acknowledged.push(done.sequence),
            Err(error) => self.replay_failed(failure, &error, &done.topic),
        }
    }

    /// Counts a failed replay publish; the round's first is logged.
    fn replay_failed(&self, failure: &mut Option<String>, error: &PublishError, topic: &str) {
        if let Some(metrics) = &self.metrics.spool {
            metrics.replay_failures.inc();
        }
        failure.get_or_insert_with(|| {
            format!("replaying a spooled webhook to {topic} failed; will retry: {error}")
        });
    }

    /// Waits for a removal, if any; false if it failed, its events then
    /// kept in `state` to be removed before anything else.
    async fn removal_done(&self, removal: Option<Removal>, state: &mut ReplayState) -> bool {
        let Some(removal) = removal else {
            return true;
        };
        let (sequences, result) = removal.finish().await;
        match result {
            Ok(()) => {
                self.count_replayed(sequences.len());
                true
            }
            Err(e) => {
                state.unremoved.extend(sequences);
                self.replay_problem(&format!("cannot remove replayed webhooks: {e}"));
                false
            }
        }
    }

    fn count_replayed(&self, count: usize) {
        if let Some(metrics) = &self.metrics.spool {
            metrics.replayed.inc_by(count as u64);
        }
    }

    /// Logs a replay that failed, at most once every [`REPLAY_LOG_INTERVAL`]
    /// with how many more failed meanwhile: a broker or a disk that fails
    /// for an hour is a few dozen lines, not one per retry.
    fn replay_problem(&self, problem: &str) {
        if let Some(failures) = self.replay_log.allow() {
            tracing::warn!(failures, "{problem}");
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
            metrics.writable.set(i64::from(spool.is_writable()));
            // A counter follows the spool's own count of reopens.
            let reopens = spool.reopens();
            metrics
                .reopens
                .inc_by(reopens.saturating_sub(metrics.reopens.get()));
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
    writable: IntGauge,
    reopens: IntCounter,
    /// `spooled_total` by [`SpoolCause`], in the order of `SpoolCause::all`.
    spooled: Vec<IntCounter>,
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
            writable: gauge(
                "spool_writable",
                "1 while the spool takes webhooks; 0 from a write that failed for the disk \
                 (full or failing) until the spool recovers by itself.",
            )?,
            reopens: counter(
                "spool_reopens_total",
                "Times the spool's database was opened again after a disk fault.",
            )?,
            spooled: {
                let spooled = IntCounterVec::new(
                    opts(
                        "spooled_total",
                        "Webhooks answered 202 because they were written to the spool, by cause: \
                         the broker's outcome (not_connected, timeout, unavailable), or queued \
                         behind older events of their objectId still in the spool.",
                    ),
                    &["cause"],
                )?
                .registered(registry)?;
                SpoolCause::all()
                    .map(|cause| spooled.with_label_values(&[cause.as_str()]))
                    .collect()
            },
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
    /// before it is published, instead of being answered 503 (with
    /// --spool-dir, spooled) by a replica that has just started. /readyz
    /// answers 503 until the broker is reachable or this has passed. Once
    /// this has passed, or the broker has been reachable once, a webhook
    /// that finds it unreachable gets 503 (or is spooled) at once.
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

    fn event(key: &str, id: &str) -> Message {
        Message {
            key: key.into(),
            event_id: id.into(),
            ..message()
        }
    }

    fn spooling_delivery(
        sink: &Arc<MemorySink>,
        spool: &Arc<Spool>,
        startup_timeout: Duration,
        registry: &Registry,
    ) -> Arc<Delivery> {
        let settings = DeliverySettings {
            publish_timeout: Duration::from_secs(5),
            startup_timeout,
        };
        Arc::new(
            Delivery::new(sink.clone(), Some(spool.clone()), settings, registry)
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// `count` events, each of its own objectId.
    fn one_per_object(count: u64) -> Vec<Message> {
        (0..count)
            .map(|n| event(&n.to_string(), &n.to_string()))
            .collect()
    }

    /// Appends `events` together: group commits, not one fsync each.
    async fn append_all(spool: &Spool, events: &[Message]) {
        for appended in
            futures_util::future::join_all(events.iter().map(|event| spool.append(event))).await
        {
            appended.unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn open_spool(dir: &tempfile::TempDir) -> Arc<Spool> {
        Arc::new(Spool::open(dir.path(), 1 << 24).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Replays until the spool is empty, then stops the replayer.
    async fn replay_all(delivery: &Arc<Delivery>, spool: &Spool) {
        let stop = CancellationToken::new();
        let replay = tokio::spawn(delivery.clone().replay(stop.clone()));
        tokio::time::timeout(Duration::from_secs(10), async {
            while !spool.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the spool was not replayed: {} left", spool.len()));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), replay)
            .await
            .unwrap_or_else(|_| panic!("the replayer did not stop"))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn ids(sink: &MemorySink) -> Vec<String> {
        sink.messages().into_iter().map(|m| m.event_id).collect()
    }

    /// A bridge with a spool that has just started waits for its broker
    /// like one without, and is not ready meanwhile: its first webhooks
    /// reach the broker (200), none is spooled for nothing (202).
    #[tokio::test(start_paused = true)]
    async fn a_fresh_spooling_bridge_waits_for_its_broker_instead_of_spooling() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = open_spool(&dir);
        let sink = Arc::new(MemorySink::new());
        sink.set_ready(false);
        sink.set_behaviour(Behaviour::Fail(PublishError::NotConnected));
        let delivery = spooling_delivery(&sink, &spool, Duration::from_secs(10), &Registry::new());
        assert!(
            !delivery.is_ready(),
            "ready before its broker, during start-up"
        );
        let connects = {
            let sink = sink.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                sink.set_behaviour(Behaviour::Accept);
                sink.set_ready(true);
            })
        };
        let delivered = delivery
            .deliver(&event("1", "first"), tracing::Span::none)
            .await;
        assert_eq!(delivered, Ok(Delivered::Acknowledged));
        assert!(spool.is_empty());
        assert!(delivery.is_ready());
        connects.await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Each webhook spooled is counted under its cause, and an episode of
    /// spooling is one line in the log however many webhooks it takes, and
    /// one more when the spool is empty again. Only the webhooks of an
    /// objectId still in the spool queue behind it; others go straight to
    /// the broker once it is back.
    #[tokio::test]
    async fn spooling_is_counted_by_cause_and_logged_once_per_episode() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = open_spool(&dir);
        let sink = Arc::new(MemorySink::new());
        let registry = Registry::new();
        let delivery = spooling_delivery(&sink, &spool, Duration::ZERO, &registry);
        let logs = crate::testing::CapturedLogs::start();
        sink.set_behaviour(Behaviour::Fail(PublishError::NotConnected));
        for n in 0..5 {
            let delivered = delivery
                .deliver(
                    &event(&n.to_string(), &format!("down-{n}")),
                    tracing::Span::none,
                )
                .await;
            assert_eq!(delivered, Ok(Delivered::Spooled));
        }
        // The broker is back, but objectId 0 still waits in the spool.
        sink.set_behaviour(Behaviour::Accept);
        let queued = delivery
            .deliver(&event("0", "queued"), tracing::Span::none)
            .await;
        assert_eq!(queued, Ok(Delivered::Spooled));
        let live = delivery
            .deliver(&event("9", "live"), tracing::Span::none)
            .await;
        assert_eq!(
            live,
            Ok(Delivered::Acknowledged),
            "objectId 9 has nothing to wait for"
        );
        let exported = exported(&registry);
        for line in [
            r#"apizee_bridge_spooled_total{cause="not_connected"} 5"#,
            r#"apizee_bridge_spooled_total{cause="queued"} 1"#,
            r#"apizee_bridge_spooled_total{cause="timeout"} 0"#,
            r#"apizee_bridge_spooled_total{cause="unavailable"} 0"#,
        ] {
            assert!(exported.contains(line), "missing {line}\n{exported}");
        }
        assert_eq!(
            logs.starting_with("spooling webhooks").len(),
            1,
            "{:#?}",
            logs.lines()
        );

        replay_all(&delivery, &spool).await;
        let delivered = ids(&sink);
        assert_eq!(delivered.len(), 7, "{delivered:?}");
        let position = |id: &str| delivered.iter().position(|d| d == id);
        assert!(position("down-0") < position("queued"), "{delivered:?}");
        // The replayer logs the end once it finds the spool empty.
        tokio::time::timeout(Duration::from_secs(5), async {
            let stop = CancellationToken::new();
            let replay = tokio::spawn(delivery.clone().replay(stop.clone()));
            while logs.starting_with("spool empty").is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stop.cancel();
            replay.await.unwrap_or_else(|e| panic!("{e}"));
        })
        .await
        .unwrap_or_else(|_| panic!("no line at the end of the episode: {:#?}", logs.lines()));
        assert_eq!(
            logs.starting_with("spool empty").len(),
            1,
            "{:#?}",
            logs.lines()
        );
    }

    /// A replayed publish the broker loses keeps its event in the spool and
    /// is counted; the replay goes on from it, and no later event of its
    /// objectId reaches the broker before it, though many are in flight.
    #[tokio::test]
    async fn a_lost_replay_publish_is_retried_and_no_later_event_of_its_object_overtakes_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = open_spool(&dir);
        let sink = Arc::new(MemorySink::new());
        let registry = Registry::new();
        // Three objects, interleaved, 20 events each.
        let events: Vec<Message> = (0..60)
            .map(|n| event(&(n % 3).to_string(), &format!("{}-{}", n % 3, n / 3)))
            .collect();
        for message in &events {
            spool
                .append(message)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        sink.lose_once("0-0", PublishError::Unavailable("no leader".into()));
        sink.lose_once("1-7", PublishError::Timeout(Duration::ZERO));
        let delivery = spooling_delivery(&sink, &spool, Duration::ZERO, &registry);
        replay_all(&delivery, &spool).await;

        let delivered = ids(&sink);
        for object in ["0", "1", "2"] {
            let of_object: Vec<&String> = delivered
                .iter()
                .filter(|id| id.starts_with(&format!("{object}-")))
                .collect();
            let expected: Vec<String> = (0..20).map(|n| format!("{object}-{n}")).collect();
            assert_eq!(
                of_object,
                expected.iter().collect::<Vec<_>>(),
                "objectId {object}: each once, in order"
            );
        }
        assert_eq!(delivered.len(), 60, "{delivered:?}");
        let exported = exported(&registry);
        assert!(
            exported.contains("apizee_bridge_spool_replay_failures_total 2"),
            "{exported}"
        );
        assert!(
            exported.contains("apizee_bridge_spool_replayed_total 60"),
            "{exported}"
        );
    }

    /// At shutdown (no replayer running), a drain delivers every spooled
    /// event, each objectId's in order, and leaves the spool empty.
    #[tokio::test]
    async fn a_drain_delivers_the_whole_spool_in_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = open_spool(&dir);
        let events: Vec<Message> = (0..300)
            .map(|n| event(&(n % 3).to_string(), &format!("{}-{}", n % 3, n / 3)))
            .collect();
        append_all(&spool, &events).await;
        let sink = Arc::new(MemorySink::new());
        sink.lose_once("1-50", PublishError::Timeout(Duration::ZERO));
        let delivery = spooling_delivery(&sink, &spool, Duration::ZERO, &Registry::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let drained = delivery.drain_spool(deadline).await;
        assert_eq!(
            drained,
            Drained {
                delivered: 300,
                left: 0
            }
        );
        assert!(spool.is_empty());
        let delivered = ids(&sink);
        for object in ["0", "1", "2"] {
            let of_object: Vec<String> = delivered
                .iter()
                .filter(|id| id.starts_with(&format!("{object}-")))
                .cloned()
                .collect();
            let expected: Vec<String> = (0..100).map(|n| format!("{object}-{n}")).collect();
            assert_eq!(
                of_object, expected,
                "objectId {object}: each once, in order"
            );
        }
    }

    /// A broker whose client is still reconnecting when the drain begins
    /// (a SIGTERM right after an outage) is waited for, within the deadline.
    /// In real time: with time paused, the spool's reads on a blocking
    /// thread would let the clock jump to the deadline.
    #[tokio::test]
    async fn a_drain_waits_for_a_broker_that_is_not_ready_yet() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = open_spool(&dir);
        append_all(&spool, &one_per_object(10)).await;
        let sink = Arc::new(MemorySink::new());
        sink.set_ready(false);
        let delivery = spooling_delivery(&sink, &spool, Duration::ZERO, &Registry::new());
        let reconnecting = sink.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            reconnecting.set_ready(true);
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let drained = delivery.drain_spool(deadline).await;
        assert_eq!(
            drained,
            Drained {
                delivered: 10,
                left: 0
            }
        );
    }

    /// A broker that takes nothing: the drain gives up at its deadline and
    /// every event stays on disk for the next start.
    #[tokio::test(start_paused = true)]
    async fn a_drain_stops_at_its_deadline_and_leaves_what_it_could_not_deliver() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = open_spool(&dir);
        append_all(&spool, &one_per_object(10)).await;
        let sink = Arc::new(MemorySink::new());
        sink.set_behaviour(Behaviour::Hang);
        let delivery = spooling_delivery(&sink, &spool, Duration::ZERO, &Registry::new());
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(2);
        let drained = tokio::time::timeout(Duration::from_secs(60), delivery.drain_spool(deadline))
            .await
            .unwrap_or_else(|_| panic!("the drain ignored its deadline"));
        assert!(
            tokio::time::Instant::now() <= deadline + Duration::from_millis(10),
            "the drain overran its deadline by {:?}",
            tokio::time::Instant::now() - deadline
        );
        assert_eq!(
            drained,
            Drained {
                delivered: 0,
                left: 10
            }
        );
        assert_eq!(spool.stored_entries().unwrap_or_else(|e| panic!("{e}")), 10);
    }

    /// Cancelled while publishing, the replayer sends nothing more, waits
    /// for what it sent, and removes what the broker took: every event is
    /// either delivered or still on disk, none twice, none lost.
    #[tokio::test]
    async fn the_replayer_stops_between_events() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = open_spool(&dir);
        // More than a window, with one objectId each.
        let total = MemorySink::new().pipeline_depth() as u64 * 3;
        append_all(&spool, &one_per_object(total)).await;
        let sink = Arc::new(MemorySink::new());
        sink.set_behaviour(Behaviour::Delay(Duration::from_millis(200)));
        let delivery = spooling_delivery(&sink, &spool, Duration::ZERO, &Registry::new());
        let stop = CancellationToken::new();
        let replay = tokio::spawn(delivery.clone().replay(stop.clone()));
        // Cancelled as soon as the first event has arrived: a window is
        // then under way, the rest not begun.
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
        let delivered = ids(&sink);
        let unique: HashSet<&String> = delivered.iter().collect();
        assert_eq!(unique.len(), delivered.len(), "delivered twice");
        assert!(!spool.is_empty(), "it stopped before the spool was empty");
        assert_eq!(
            delivered.len() as u64 + spool.len(),
            total,
            "every event delivered or still on disk"
        );
    }

    /// A spool that cannot write (here its reserve cannot be made: a
    /// directory has its name) makes a bridge whose broker is down not
    /// ready, and every webhook it cannot take a 503, logged once however
    /// many; once the spool can write again, the bridge is ready again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_that_cannot_write_is_not_ready_and_logs_its_refusals_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let in_the_way = dir.path().join("spool.reserve");
        std::fs::create_dir(&in_the_way).unwrap_or_else(|e| panic!("{e}"));
        let spool = open_spool(&dir);
        let sink = Arc::new(MemorySink::new());
        sink.set_ready(false);
        sink.set_behaviour(Behaviour::Fail(PublishError::NotConnected));
        let registry = Registry::new();
        let delivery = spooling_delivery(&sink, &spool, Duration::ZERO, &registry);
        let logs = crate::testing::CapturedLogs::start();
        assert!(!delivery.is_ready(), "ready with a spool that cannot write");
        for n in 0..20 {
            let delivered = delivery
                .deliver(&event(&n.to_string(), "refused"), tracing::Span::none)
                .await;
            assert_eq!(delivered, Err(PublishError::NotConnected));
        }
        let lines = logs.starting_with("cannot spool the webhook");
        assert_eq!(lines.len(), 1, "{:#?}", logs.lines());
        delivery.report();
        assert!(exported(&registry).contains("apizee_bridge_spool_writable 0"));
        // The broker being back is enough for a bridge to be ready.
        sink.set_ready(true);
        assert!(delivery.is_ready());
        sink.set_ready(false);
        std::fs::remove_dir(&in_the_way).unwrap_or_else(|e| panic!("{e}"));
        tokio::time::timeout(Duration::from_secs(10), async {
            while !delivery.is_ready() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not ready once the spool could write"));
        let delivered = delivery
            .deliver(&event("1", "spooled"), tracing::Span::none)
            .await;
        assert_eq!(delivered, Ok(Delivered::Spooled));
        delivery.report();
        assert!(exported(&registry).contains("apizee_bridge_spool_writable 1"));
    }
}
