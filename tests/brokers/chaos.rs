//! Chaos tests: the broker dies (SIGKILL) or freezes (SIGSTOP) under load,
//! and the promise to the sender must still hold.
//!
//! - Killed mid-load and restarted on the same port and store: every event
//!   that got a 200 is on the broker afterwards. Duplicates are allowed (the
//!   guarantee is at least once) and counted.
//! - Frozen: every webhook gets a 503 with `Retry-After` within
//!   `--publish-timeout` (plus a margin that rules out a hang, not a
//!   benchmark), memory stays bounded, and once the broker resumes the
//!   bridge answers 200 again (see the last test for what that takes of
//!   the Kafka producer).
//!
//! Kafka is one Apache Kafka broker per test: these tests hurt it, so they
//! cannot share the binary's.
//!
//! Each test owns its brokers, ports and directories, so they run in
//! parallel with each other and with the other test binaries.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::kafka::{KafkaCluster, header, read_all};
use crate::support::*;
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use rdkafka::Message as _;

/// Distinct webhooks each kill test sends.
const EVENTS: usize = 3000;
/// Senders working at once, each on a fresh connection per request.
const CONCURRENCY: usize = 24;
/// The broker is killed once this many webhooks have been acknowledged.
const KILL_AFTER: usize = EVENTS / 3;
/// A sender gives an event this many tries, 25 ms to 500 ms apart, as a
/// real sender retries a 503, then counts it as not acknowledged.
const MAX_ATTEMPTS: u32 = 40;
/// No sender starts a new request after this; bounds a kill test even if
/// the bridge never recovers.
const LOAD_DEADLINE: Duration = Duration::from_secs(60);
/// `--publish-timeout` in the kill tests.
const KILL_TIMEOUT: &str = "2s";
/// The single topic (and NATS subject) every chaos event goes to.
const TOPIC: &str = "apizee.ticket.create";

/// Webhooks sent to a frozen broker, and how many at once.
const FROZEN_EVENTS: usize = 200;
const FROZEN_CONCURRENCY: usize = 40;
/// `--publish-timeout` for the frozen broker, and the slack on top of it
/// that an answer may take before it counts as a hang.
const FROZEN_TIMEOUT: Duration = Duration::from_secs(1);
const HANG_MARGIN: Duration = Duration::from_secs(5);
/// Resident memory of the whole test process (the bridge runs in it) must
/// stay below this while the broker is frozen.
const MEMORY_BOUND: f64 = 256.0 * 1024.0 * 1024.0;
/// How long the bridge may take to answer 200 again once the broker resumes.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);

const RSS: &str = "process_resident_memory_bytes";

/// Event `i` of a run: a distinct body, hence a distinct event id.
fn event(run: &str, i: usize) -> String {
    format!(
        r#"{{"event":"create","time":{},"object":"ticket","objectId":"{run}-{i}","props":{{"state":"open"}}}}"#,
        1_700_000_000 + i
    )
}

async fn post(addr: SocketAddr, body: &str) -> Result<Reply, String> {
    request(
        addr,
        "POST",
        "/webhooks",
        &[("content-type", "application/JSON")],
        Bytes::copy_from_slice(body.as_bytes()),
    )
    .await
}

/// What the senders did, shared between them and the test.
#[derive(Default)]
struct Tally {
    /// The next event to send.
    next: AtomicUsize,
    /// Events sent at least once.
    sent: AtomicUsize,
    acknowledged: AtomicUsize,
    attempts: AtomicUsize,
    /// Event id of every acknowledged event -> the event's index.
    ids: Mutex<HashMap<String, usize>>,
    /// Answers that were not 200, by status (or "no answer").
    refusals: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    fn refused(&self, what: String) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(what)
            .or_default() += 1;
    }

    fn acknowledged_ids(&self) -> HashMap<String, usize> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One sender: takes the next event until all are taken or the deadline
/// passes, and retries each a bounded number of times until it gets a 200.
async fn sender(addr: SocketAddr, run: &'static str, tally: Arc<Tally>, stop_at: Instant) {
    loop {
        let i = tally.next.fetch_add(1, Ordering::SeqCst);
        if i >= EVENTS || Instant::now() >= stop_at {
            return;
        }
        tally.sent.fetch_add(1, Ordering::SeqCst);
        let body = event(run, i);
        for attempt in 0..MAX_ATTEMPTS {
            tally.attempts.fetch_add(1, Ordering::SeqCst);
            match post(addr, &body).await {
                Ok(reply) if reply.status == 200 => {
                    let id = reply.json()["id"].as_str().unwrap_or_default().to_owned();
                    assert!(!id.is_empty(), "no id in {}", reply.text());
                    let previous = tally
                        .ids
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone(), i);
                    assert!(
                        previous.is_none_or(|p| p == i),
                        "events {previous:?} and {i} got the same id {id}"
                    );
                    tally.acknowledged.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok(reply) => {
                    tally.refused(reply.status.to_string());
                    // Only "try again later" is worth trying again.
                    if reply.status != 503 && reply.status != 429 {
                        break;
                    }
                }
                Err(e) => tally.refused(format!("no answer: {e}")),
            }
            if Instant::now() >= stop_at {
                break;
            }
            let backoff =
                Duration::from_millis(25 << attempt.min(5)).min(Duration::from_millis(500));
            tokio::time::sleep(backoff).await;
        }
    }
}

/// Runs the load against `bridge`, calling `chaos` once [`KILL_AFTER`]
/// events have been acknowledged, and returns what the senders saw.
async fn load_with_chaos(bridge: &Bridge, run: &'static str, chaos: impl AsyncFnOnce()) -> Load {
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let stop_at = started + LOAD_DEADLINE;
    let senders: Vec<_> = (0..CONCURRENCY)
        .map(|_| tokio::spawn(sender(bridge.addr, run, tally.clone(), stop_at)))
        .collect();
    wait_until(
        "the first third of the events to be acknowledged",
        async || tally.acknowledged.load(Ordering::SeqCst) >= KILL_AFTER,
    )
    .await;
    let acknowledged_before = tally.acknowledged.load(Ordering::SeqCst);
    // Evidence that the broker dies under requests, not between them.
    let in_flight_at_kill =
        metric_value(&bridge.metrics().await, "apizee_bridge_requests_in_flight");
    let chaos_started = Instant::now();
    chaos().await;
    let broker_back_after = chaos_started.elapsed();
    for sender in senders {
        sender
            .await
            .unwrap_or_else(|e| panic!("a sender failed: {e}"));
    }
    let load = Load {
        sent: tally.sent.load(Ordering::SeqCst),
        acknowledged_before,
        in_flight_at_kill,
        attempts: tally.attempts.load(Ordering::SeqCst),
        ids: tally.acknowledged_ids(),
        refusals: tally
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        broker_back_after,
        duration: started.elapsed(),
    };
    assert!(
        load.acknowledged_before < EVENTS,
        "every event was acknowledged before the kill: the test killed nothing mid-load"
    );
    // Printed before the topic is read, so a failure while reading still
    // shows how the load went.
    println!(
        "chaos {run}: load over after {:?}: sent={} acknowledged={} requests={} refusals {:?}",
        load.duration,
        load.sent,
        load.ids.len(),
        load.attempts,
        load.refusals
    );
    load
}

struct Load {
    sent: usize,
    acknowledged_before: usize,
    in_flight_at_kill: f64,
    attempts: usize,
    ids: HashMap<String, usize>,
    refusals: BTreeMap<String, usize>,
    broker_back_after: Duration,
    duration: Duration,
}

/// Matches what the broker holds (event id and payload of every message)
/// against what was acknowledged, prints the counts, and returns the lost
/// events' indices.
fn reconcile(run: &str, load: &Load, stored: &[(String, Bytes)]) -> Vec<usize> {
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for (id, payload) in stored {
        *copies.entry(id.as_str()).or_default() += 1;
        if let Some(&i) = load.ids.get(id) {
            assert_eq!(
                payload,
                event(run, i).as_bytes(),
                "the stored payload of acknowledged event {i} ({id}) differs from what was sent"
            );
        }
    }
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    let mut lost: Vec<usize> = load
        .ids
        .iter()
        .filter(|(id, _)| !copies.contains_key(id.as_str()))
        .map(|(_, &i)| i)
        .collect();
    lost.sort_unstable();
    let acknowledged = load.ids.len();
    let found = acknowledged - lost.len();
    let unacknowledged_stored = copies
        .keys()
        .filter(|id| !load.ids.contains_key(**id))
        .count();
    println!(
        "chaos {run}: sent={} acknowledged={acknowledged} found={found} duplicates={duplicates} lost={}",
        load.sent,
        lost.len()
    );
    println!(
        "chaos {run}: acknowledged before the kill={}, webhooks in flight at the kill={}, broker \
         back after {:?}, load took {:?}, {} requests, refusals {:?}, stored {} messages of \
         which {} distinct events were never acknowledged (the sender gave up on them)",
        load.acknowledged_before,
        load.in_flight_at_kill,
        load.broker_back_after,
        load.duration,
        load.attempts,
        load.refusals,
        stored.len(),
        unacknowledged_stored,
    );
    assert!(
        acknowledged > load.acknowledged_before,
        "nothing was acknowledged after the restart: the bridge did not recover"
    );
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_kill_9_mid_load_loses_no_acknowledged_event() {
    let mut nats = NatsServer::start(true).await;
    let bridge = start_bridge(&nats_bridge_args(&nats, KILL_TIMEOUT)).await;
    bridge.wait_ready().await;

    let load = load_with_chaos(&bridge, "nats", async || {
        // SIGKILL; the senders get 503s until the server is back on the same
        // port and store directory.
        nats.kill();
        bridge.wait_not_ready().await;
        nats.restart().await;
    })
    .await;

    let stored = stream_contents(&jetstream::new(nats.client().await), "WEBHOOKS").await;
    let lost = reconcile("nats", &load, &stored);
    assert!(
        lost.is_empty(),
        "{} acknowledged events are not in the stream, first ones: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_kill_9_mid_load_loses_no_acknowledged_event() {
    let mut broker = KafkaCluster::single().await;
    let bootstrap = broker.bootstrap();
    let bridge = start_bridge(&kafka_bridge_args(&bootstrap, KILL_TIMEOUT)).await;
    // Ready means the topics exist, in the broker's log folder, so they
    // outlive the kill.
    bridge.wait_ready().await;

    let load = load_with_chaos(&bridge, "kafka", async || {
        // SIGKILL; the senders get 503s until the broker is back on the same
        // port and data (a JVM start: seconds, so the batches in flight time
        // out and librdkafka bumps the producer's epoch, which Kafka takes).
        broker.nodes[0].kill();
        bridge.wait_not_ready().await;
        broker.nodes[0].restart().await;
    })
    .await;

    let topic_bootstrap = bootstrap.clone();
    let messages = tokio::task::spawn_blocking(move || read_all(&topic_bootstrap, TOPIC))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stored: Vec<(String, Bytes)> = messages
        .iter()
        .map(|message| {
            let id = header(message, "apizee-event-id")
                .unwrap_or_else(|| {
                    panic!(
                        "{}/{}@{} has no apizee-event-id",
                        message.topic(),
                        message.partition(),
                        message.offset()
                    )
                })
                .to_owned();
            (
                id,
                Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            )
        })
        .collect();
    let lost = reconcile("kafka", &load, &stored);
    if !lost.is_empty() {
        println!("the broker's log:\n{}", broker.nodes[0].log_tail(40));
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged events are not in {TOPIC}, first ones: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    bridge.stop().await;
}

/// One request to a frozen broker's bridge: status, Retry-After, how long.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    elapsed: Duration,
}

/// Freezes the broker behind `bridge` (SIGSTOP), sends [`FROZEN_EVENTS`]
/// webhooks and checks every answer and the process's memory, then resumes
/// the broker (SIGCONT). Returns once the broker runs again.
async fn frozen_broker(run: &'static str, bridge: &Bridge, pid: u32) {
    bridge.wait_ready().await;
    let before = post(bridge.addr, &event(run, 0))
        .await
        .unwrap_or_else(|e| panic!("{run}: {e}"));
    assert_eq!(before.status, 200, "{run}: {}", before.text());

    // Resumed on drop, so also when an assertion below fails.
    let frozen = Frozen::freeze(pid);

    // Samples the resident memory of the process all along.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let metrics_addr = bridge.metrics_addr;
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while sampling.load(Ordering::SeqCst) {
                if let Ok(reply) = get(metrics_addr, "/metrics").await {
                    peak = peak.max(metric_value(&reply.text(), RSS));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };

    let started = Instant::now();
    let addr = bridge.addr;
    let answers: Vec<Result<Answer, String>> = futures_util::stream::iter(1..=FROZEN_EVENTS)
        .map(|i| async move {
            let sent = Instant::now();
            let reply = post(addr, &event(run, i)).await?;
            Ok(Answer {
                status: reply.status,
                retry_after: reply.header("retry-after").map(str::to_owned),
                elapsed: sent.elapsed(),
            })
        })
        .buffer_unordered(FROZEN_CONCURRENCY)
        .collect()
        .await;
    let load_took = started.elapsed();
    let metrics = bridge.metrics().await;
    sampling.store(false, Ordering::SeqCst);
    let peak = sampler
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .max(metric_value(&metrics, RSS));

    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for answer in &answers {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("{run}: a webhook got no answer: {e}"));
        *statuses.entry(answer.status).or_default() += 1;
        slowest = slowest.max(answer.elapsed);
        assert!(
            answer
                .retry_after
                .as_deref()
                .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)),
            "{run}: {} without a valid Retry-After ({:?})",
            answer.status,
            answer.retry_after
        );
    }
    let outcome = |outcome: &str| {
        metric_value(
            &metrics,
            &format!(r#"apizee_bridge_publishes_total{{outcome="{outcome}",sink="{run}"}}"#),
        )
    };
    println!(
        "chaos frozen {run}: sent={FROZEN_EVENTS} statuses={statuses:?} slowest={slowest:?} \
         all answered in {load_took:?}, publishes timeout={} not_connected={} failed={}, \
         peak_rss={:.0}MiB",
        outcome("timeout"),
        outcome("not_connected"),
        outcome("failed"),
        peak / 1024.0 / 1024.0
    );
    assert_eq!(
        statuses.get(&503).copied().unwrap_or_default(),
        FROZEN_EVENTS,
        "{run}: every webhook to a frozen broker must get a 503: {statuses:?}"
    );
    assert!(
        slowest <= FROZEN_TIMEOUT + HANG_MARGIN,
        "{run}: an answer took {slowest:?}, over --publish-timeout {FROZEN_TIMEOUT:?} + \
         {HANG_MARGIN:?}"
    );
    assert!(peak > 0.0, "{RSS} missing from the metrics:\n{metrics}");
    assert!(
        peak < MEMORY_BOUND,
        "{run}: resident memory reached {:.0} MiB",
        peak / 1024.0 / 1024.0
    );
    frozen.thaw();
}

/// Posts a new webhook until one gets a 200, for at most
/// [`RECOVERY_DEADLINE`]; on failure, shows the answers and the publish
/// metrics.
async fn recovers(run: &str, bridge: &Bridge) {
    let resumed = Instant::now();
    let recovery = event(run, FROZEN_EVENTS + 1);
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        match post(bridge.addr, &recovery).await {
            Ok(reply) if reply.status == 200 => break,
            Ok(reply) => *refusals.entry(reply.status.to_string()).or_default() += 1,
            Err(e) => *refusals.entry(format!("no answer: {e}")).or_default() += 1,
        }
        if resumed.elapsed() >= RECOVERY_DEADLINE {
            let metrics = bridge.metrics().await;
            let publishes: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("apizee_bridge_publishes_total")
                        || l.starts_with("apizee_bridge_kafka_")
                        || l.starts_with("apizee_bridge_broker_connected")
                })
                .collect();
            panic!(
                "{run}: no 200 within {RECOVERY_DEADLINE:?} after the broker resumed; answers \
                 {refusals:?}; metrics:\n{}",
                publishes.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "chaos frozen {run}: 200 again {:?} after the broker resumed",
        resumed.elapsed()
    );
}

fn nats_bridge_args(nats: &NatsServer, timeout: &str) -> Vec<String> {
    [
        "--sink",
        "nats",
        "--nats-url",
        &nats.url(),
        "--nats-jetstream",
        "--nats-stream",
        "WEBHOOKS",
        "--publish-timeout",
        timeout,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn kafka_bridge_args(bootstrap: &str, timeout: &str) -> Vec<String> {
    [
        "--sink",
        "kafka",
        "--kafka-brokers",
        bootstrap,
        "--kafka-create-topics",
        "--kafka-partitions",
        "3",
        "--kafka-replication-factor",
        "1",
        "--publish-timeout",
        timeout,
    ]
    .map(str::to_owned)
    .to_vec()
}

async fn start_bridge(args: &[String]) -> Bridge {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Bridge::start(&args).await
}

/// Both brokers frozen at once, each under its own bridge. Recovery is
/// checked for NATS here and for Kafka in the next test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_that_never_acks_gets_503_within_the_timeout() {
    let timeout = format!("{}s", FROZEN_TIMEOUT.as_secs());
    let nats = NatsServer::start(true).await;
    let nats_bridge = start_bridge(&nats_bridge_args(&nats, &timeout)).await;
    let kafka = KafkaCluster::single().await;
    let kafka_bridge = start_bridge(&kafka_bridge_args(&kafka.bootstrap(), &timeout)).await;

    let nats_pid = nats
        .pid()
        .unwrap_or_else(|| panic!("nats-server is not running"));
    let kafka_pid = kafka
        .pid()
        .unwrap_or_else(|| panic!("the Kafka broker is not running"));
    tokio::join!(
        async {
            frozen_broker("nats", &nats_bridge, nats_pid).await;
            recovers("nats", &nats_bridge).await;
        },
        frozen_broker("kafka", &kafka_bridge, kafka_pid),
    );
    nats_bridge.stop().await;
    kafka_bridge.stop().await;
}

/// When a produce request times out in flight, librdkafka's idempotent
/// producer bumps its epoch locally (KIP-360, Kafka 2.5+), and the broker
/// must take the batches that follow. A broker that refuses the bumped
/// epoch (tansu 0.6 did, with PRODUCER_FENCED) would fail every later
/// publish while `/readyz` stays 200, unless the bridge replaces its
/// producer on such errors, which it does. Apache Kafka takes the bump:
/// 200s come back once the frozen broker resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_bridge_answers_200_again_after_a_frozen_broker_resumes() {
    let timeout = format!("{}s", FROZEN_TIMEOUT.as_secs());
    let kafka = KafkaCluster::single().await;
    let bridge = start_bridge(&kafka_bridge_args(&kafka.bootstrap(), &timeout)).await;
    let pid = kafka
        .pid()
        .unwrap_or_else(|| panic!("the Kafka broker is not running"));
    frozen_broker("kafka", &bridge, pid).await;
    recovers("kafka", &bridge).await;
    bridge.stop().await;
}
