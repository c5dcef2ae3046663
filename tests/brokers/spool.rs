//! The durable spool: 202 when the broker cannot take a webhook, delivery in
//! order once it is back, a bounded size, and survival of `kill -9`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::support::answers::bridge_with;
use crate::support::process::BridgeProcess;
use crate::support::*;
use apizee_bridge::sink::PublishError;
use apizee_bridge::sink::memory::{Behaviour, MemorySink};
use async_nats::jetstream;
use bytes::Bytes;

fn ticket(id: u32, time: u32) -> String {
    format!(r#"{{"event":"update","time":{time},"object":"ticket","objectId":{id},"props":{{}}}}"#)
}

async fn spooling_bridge(dir: &std::path::Path, extra: &[&str]) -> (Bridge, Arc<MemorySink>) {
    let dir = dir.to_string_lossy().into_owned();
    let mut args = vec!["--spool-dir", dir.as_str(), "--publish-timeout", "300ms"];
    args.extend_from_slice(extra);
    bridge_with(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_means_202_then_delivery_in_order_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (bridge, sink) = spooling_bridge(dir.path(), &[]).await;
    sink.set_ready(false);
    sink.set_behaviour(Behaviour::Fail(PublishError::NotConnected));

    let bodies: Vec<String> = [(1, 1), (2, 1), (1, 2), (1, 3)]
        .into_iter()
        .map(|(id, time)| ticket(id, time))
        .collect();
    for body in &bodies {
        let reply = bridge.post(body).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
        assert_eq!(reply.json()["spooled"], true);
        assert_eq!(reply.json()["topic"], "apizee.ticket.update");
    }
    // The spool accepts, so the bridge stays in the load balancer.
    bridge.wait_ready().await;
    let metrics = bridge.metrics().await;
    assert_eq!(metric_value(&metrics, "apizee_bridge_spool_events"), 4.0);
    assert!(metric_value(&metrics, "apizee_bridge_spool_bytes") > 0.0);
    // Objects 1 and 2 found no broker; object 1's later events queued
    // behind its first.
    let spooled = |cause: &str| {
        metric_value(
            &metrics,
            &format!("apizee_bridge_spooled_total{{cause=\"{cause}\"}}"),
        )
    };
    assert_eq!(spooled("not_connected"), 2.0);
    assert_eq!(spooled("queued"), 2.0);
    // Four events spooled just now: the oldest has waited, but not long.
    let oldest = metric_value(&metrics, "apizee_bridge_spool_oldest_age_seconds");
    assert!(
        (0.0..60.0).contains(&oldest),
        "oldest spooled event: {oldest} s"
    );
    for name in [
        "apizee_bridge_spool_oldest_age_seconds",
        "apizee_bridge_spool_replay_failures_total",
    ] {
        assert!(metrics.contains(&format!("# TYPE {name} ")), "{name}");
    }
    assert!(sink.messages().is_empty());

    sink.set_behaviour(Behaviour::Accept);
    sink.set_ready(true);
    wait_until("the spool to drain into the broker", async || {
        sink.messages().len() == bodies.len()
    })
    .await;
    let delivered: Vec<Bytes> = sink.messages().into_iter().map(|m| m.payload).collect();
    let sent: Vec<Bytes> = bodies.iter().map(|b| Bytes::from(b.clone())).collect();
    assert_eq!(delivered, sent, "oldest first, exact bytes");

    let metrics_addr = bridge.metrics_addr;
    wait_until("the spool gauges to reach zero", async || {
        matches!(get(metrics_addr, "/metrics").await,
            Ok(r) if metric_value(&r.text(), "apizee_bridge_spool_events") == 0.0)
    })
    .await;
    let metrics = bridge.metrics().await;
    assert_eq!(
        metric_value(&metrics, "apizee_bridge_spool_replayed_total"),
        4.0
    );
    // With the spool empty, webhooks go straight to the broker again.
    let reply = bridge.post(&ticket(3, 1)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.json().get("spooled").is_none());
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_queue_behind_the_spool_to_keep_per_object_order() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (bridge, sink) = spooling_bridge(dir.path(), &[]).await;
    sink.set_behaviour(Behaviour::Hang); // no ack in time: spooled
    sink.set_ready(false); // and no replay yet
    assert_eq!(bridge.post(&ticket(1, 1)).await.status, 202);
    // The broker takes messages again, but the spool is not empty yet: the
    // next event for the same object must not overtake the first.
    sink.set_behaviour(Behaviour::Accept);
    assert_eq!(bridge.post(&ticket(1, 2)).await.status, 202);
    sink.set_ready(true);
    wait_until("both events delivered", async || sink.messages().len() == 2).await;
    let times: Vec<Bytes> = sink.messages().into_iter().map(|m| m.payload).collect();
    assert_eq!(
        times,
        [Bytes::from(ticket(1, 1)), Bytes::from(ticket(1, 2))]
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_means_503_and_a_refusal_is_never_spooled() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (bridge, sink) = spooling_bridge(dir.path(), &["--spool-max-bytes", "1000"]).await;
    sink.set_behaviour(Behaviour::Fail(PublishError::NotConnected));
    let mut statuses = Vec::new();
    for n in 0..20 {
        statuses.push(bridge.post(&ticket(n, n)).await.status);
    }
    assert_eq!(statuses[0], 202);
    assert!(statuses.contains(&503), "{statuses:?}");
    let first_503 = statuses.iter().position(|s| *s == 503).unwrap_or_default();
    assert!(
        statuses[first_503..].iter().all(|s| *s == 503),
        "{statuses:?}"
    );

    // A refusal says something about the message: it is not spooled.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (bridge, sink) = spooling_bridge(dir.path(), &[]).await;
    sink.set_behaviour(Behaviour::Fail(PublishError::Refused("too large".into())));
    let reply = bridge.post(&ticket(1, 1)).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(
        metric_value(&bridge.metrics().await, "apizee_bridge_spool_events"),
        0.0
    );
}

/// Posts `count` distinct webhooks, each of which must be spooled (202),
/// and returns their event ids in order.
async fn post_all_spooled(bridge: &BridgeProcess, count: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let reply = request(
            bridge.addr,
            "POST",
            "/webhooks",
            &[("content-type", "application/JSON")],
            Bytes::from(ticket(n, n)),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.status, 202, "{}", reply.text());
        ids.push(reply.json()["id"].as_str().unwrap_or_default().to_owned());
    }
    ids
}

/// Prints the counts and fails if any accepted event is missing.
fn assert_none_lost(broker: &str, accepted: &[String], found: &[String]) {
    let lost = accepted.iter().filter(|id| !found.contains(id)).count();
    println!(
        "spool kill -9 {broker}: accepted={} found={} duplicates={} lost={lost}",
        accepted.len(),
        found.len(),
        found.len().saturating_sub(accepted.len())
    );
    assert_eq!(lost, 0, "{broker}: accepted events missing after kill -9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_webhooks_survive_kill_9_of_the_bridge() {
    let mut nats = NatsServer::start(true).await;
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().to_string_lossy().into_owned();
    let args = [
        "--sink",
        "nats",
        "--nats-url",
        url.as_str(),
        "--nats-jetstream",
        "--nats-stream",
        "WEBHOOKS",
        "--publish-timeout",
        "500ms",
        "--spool-dir",
        spool.as_str(),
    ];
    let mut bridge = BridgeProcess::spawn_quiet(&args);
    bridge.wait_ready().await;
    // The stream exists now; stop the broker.
    nats.kill();

    let count = 50;
    let ids = post_all_spooled(&bridge, count).await;
    bridge.kill_9();

    nats.restart().await;
    let bridge = BridgeProcess::spawn_quiet(&args);
    bridge.wait_ready().await;
    let js = jetstream::new(nats.client().await);
    wait_until(
        "every spooled webhook to reach the stream",
        async || match js.get_stream("WEBHOOKS").await {
            Ok(mut stream) => stream
                .info()
                .await
                .is_ok_and(|info| info.state.messages >= u64::from(count)),
            Err(_) => false,
        },
    )
    .await;
    let found: Vec<String> = crate::support::nats::stream_contents(&js, "WEBHOOKS")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_none_lost("nats", &ids, &found);
    assert_eq!(found, ids, "delivered once each, in arrival order");
    drop(bridge);
}

/// A ticket update of 32 KiB: a group of them takes long enough to write
/// and sync that a kill often lands in a commit (with 200-byte bodies, a
/// commit is over before its first answer has crossed the socket).
fn padded_ticket(id: u32, time: u32) -> String {
    let pad = "x".repeat(32 * 1024);
    format!(
        r#"{{"event":"update","time":{time},"object":"ticket","objectId":{id},"props":{{"pad":"{pad}"}}}}"#
    )
}

/// (object, event id) of a webhook answered 202.
type Answered = Vec<(u32, String)>;

/// 32 senders, sender n posting object n's webhooks one after the other
/// (times from `first_time` on), until `bridge` has answered `count` of
/// them 202; then `kill -9` while they still post. Returns what was
/// answered 202, in answer order.
async fn post_until_killed(bridge: &mut BridgeProcess, first_time: u32, count: usize) -> Answered {
    let answered = Arc::new(std::sync::Mutex::new(Answered::new()));
    let lock = |answered: &std::sync::Mutex<Answered>| {
        answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    };
    let addr = bridge.addr;
    let senders: Vec<_> = (0..32)
        .map(|object| {
            let answered = answered.clone();
            tokio::spawn(async move {
                for time in first_time.. {
                    let body = Bytes::from(padded_ticket(object, time));
                    let headers = [("content-type", "application/json")];
                    let Ok(reply) = request(addr, "POST", "/webhooks", &headers, body).await else {
                        // The bridge is gone.
                        return;
                    };
                    assert_eq!(reply.status, 202, "{}", reply.text());
                    let id = reply.json()["id"].as_str().unwrap_or_default().to_owned();
                    answered
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((object, id));
                }
            })
        })
        .collect();
    wait_until("webhooks answered 202", async || {
        lock(&answered).len() >= count
    })
    .await;
    bridge.kill_9();
    for sender in senders {
        tokio::time::timeout(READY_DEADLINE, sender)
            .await
            .unwrap_or_else(|_| panic!("a sender still posts to a killed bridge"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    lock(&answered)
}

/// A bridge spooling in `spool`, publishing to the JetStream stream
/// WEBHOOKS at `nats`, configured by its environment alone so that the
/// test knows its metrics address (returned); its log goes to `log`.
pub(crate) fn spooling_nats_bridge(
    nats: &str,
    spool: &str,
    log: &Path,
) -> (BridgeProcess, SocketAddr) {
    let broker = [
        ("APIZEE_BRIDGE_SINK", "nats"),
        ("APIZEE_BRIDGE_NATS_URL", nats),
        ("APIZEE_BRIDGE_NATS_JETSTREAM", "true"),
        ("APIZEE_BRIDGE_NATS_STREAM", "WEBHOOKS"),
    ];
    spooling_bridge_process(&broker, spool, log)
}

/// The same on Kafka at `bootstrap`, creating the topics (3 partitions).
fn spooling_kafka_bridge(bootstrap: &str, spool: &str, log: &Path) -> (BridgeProcess, SocketAddr) {
    let broker = [
        ("APIZEE_BRIDGE_SINK", "kafka"),
        ("APIZEE_BRIDGE_KAFKA_BROKERS", bootstrap),
        ("APIZEE_BRIDGE_KAFKA_CREATE_TOPICS", "true"),
        ("APIZEE_BRIDGE_KAFKA_PARTITIONS", "3"),
        ("APIZEE_BRIDGE_KAFKA_REPLICATION_FACTOR", "1"),
    ];
    spooling_bridge_process(&broker, spool, log)
}

/// The binary with `broker`'s settings, a 500 ms `--publish-timeout` and
/// its spool in `spool`, on free ports: the process and its metrics
/// address.
fn spooling_bridge_process(
    broker: &[(&str, &str)],
    spool: &str,
    log: &Path,
) -> (BridgeProcess, SocketAddr) {
    let env = [
        ("APIZEE_BRIDGE_PUBLISH_TIMEOUT", "500ms"),
        ("APIZEE_BRIDGE_SPOOL_DIR", spool),
    ];
    BridgeProcess::spawn_on_free_ports(env.iter().chain(broker).copied(), log)
}

/// 32 senders post while the broker is down, so that their appends share
/// group commits, and the bridge is killed -9 while they still post; three
/// times, each time on the spool the last one left. Once a bridge is back
/// with the broker and its spool is empty, every webhook answered 202 is in
/// the stream, once, and each object's in the order they were answered; a
/// webhook without an answer may or may not be there. A kill lands between
/// an answer and its fsync only by chance, hence three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_answered_202_survive_kill_9_in_the_middle_of_group_commits() {
    let mut nats = NatsServer::start(true).await;
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().join("spool").to_string_lossy().into_owned();
    let log = dir.path().join("bridge.log");
    let (mut bridge, _) = spooling_nats_bridge(&url, &spool, &log);
    bridge.wait_ready().await;
    // The stream exists now; stop the broker.
    nats.kill();
    let mut answered = Answered::new();
    for round in 0..3 {
        if round > 0 {
            bridge = spooling_nats_bridge(&url, &spool, &log).0;
            // Ready on the spool's room alone: the broker is still down.
            bridge.wait_ready().await;
        }
        answered.extend(post_until_killed(&mut bridge, round * 1_000_000, 200).await);
    }

    nats.restart().await;
    let (bridge, metrics) = spooling_nats_bridge(&url, &spool, &log);
    bridge.wait_ready().await;
    wait_until("the spool to drain into the stream", async || {
        matches!(get(metrics, "/metrics").await,
            Ok(r) if metric_value(&r.text(), "apizee_bridge_spool_events") == 0.0)
    })
    .await;
    let found = stream_ids(&nats).await;
    assert_each_once_in_order("nats, 32 senders, 3 kills", &answered, &found);
    drop(bridge);
}

/// The event ids in the stream WEBHOOKS, in stream order.
pub(crate) async fn stream_ids(nats: &NatsServer) -> Vec<String> {
    let js = jetstream::new(nats.client().await);
    crate::support::nats::stream_contents(&js, "WEBHOOKS")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Every webhook answered 202 is in `found` once, and each object's in the
/// order they were answered.
fn assert_each_once_in_order(what: &str, answered: &Answered, found: &[String]) {
    let ids: Vec<String> = answered.iter().map(|(_, id)| id.clone()).collect();
    assert_none_lost(what, &ids, found);
    for id in &ids {
        let copies = found.iter().filter(|f| *f == id).count();
        assert_eq!(copies, 1, "{what}: {id} delivered {copies} times");
    }
    let objects: std::collections::BTreeSet<u32> = answered.iter().map(|(o, _)| *o).collect();
    for object in objects {
        let sent: Vec<&String> = answered
            .iter()
            .filter(|(o, _)| *o == object)
            .map(|(_, id)| id)
            .collect();
        let delivered: Vec<&String> = found.iter().filter(|id| sent.contains(id)).collect();
        assert_eq!(delivered, sent, "{what}: object {object} out of order");
    }
}

/// A series of the bridge's /metrics at `metrics`.
async fn bridge_metric(metrics: SocketAddr, series: &str) -> Option<f64> {
    let reply = get(metrics, "/metrics").await.ok()?;
    Some(metric_value(&reply.text(), series))
}

/// `kill -9` in the middle of a replay window: the broker is frozen
/// (SIGSTOP) as soon as the bridge has reached it, so that the replay's
/// first window (one 32 KiB webhook of each of the 32 objects) goes
/// unanswered; once a publish has timed out the bridge is killed and the
/// broker resumed. An event leaves the spool only once the broker
/// acknowledged it, so the next bridge replays every one the broker did
/// not store: each webhook answered 202 is in the stream, once, in its
/// object's order. A replayer that removed events when it sent them lost
/// 10 of the 32 (what the bridge's buffers still held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_answered_202_survive_kill_9_in_the_middle_of_a_replay_window() {
    let mut nats = NatsServer::start(true).await;
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().join("spool").to_string_lossy().into_owned();
    let log = dir.path().join("bridge.log");
    let (mut bridge, _) = spooling_nats_bridge(&url, &spool, &log);
    bridge.wait_ready().await;
    // The stream exists now; stop the broker and fill the spool.
    nats.kill();
    let answered = post_until_killed(&mut bridge, 0, 600).await;

    nats.restart().await;
    let (mut bridge, metrics) = spooling_nats_bridge(&url, &spool, &log);
    wait_until("the bridge to reach the broker", async || {
        bridge_metric(metrics, r#"apizee_bridge_broker_connected{sink="nats"}"#).await == Some(1.0)
    })
    .await;
    let broker = nats
        .pid()
        .unwrap_or_else(|| panic!("nats-server is not running"));
    let frozen = Frozen::freeze(broker);
    wait_until(
        "a replayed publish to time out on the frozen broker",
        async || {
            bridge_metric(metrics, "apizee_bridge_spool_replay_failures_total")
                .await
                .is_some_and(|failures| failures > 0.0)
        },
    )
    .await;
    let left = bridge_metric(metrics, "apizee_bridge_spool_events")
        .await
        .unwrap_or_default();
    bridge.kill_9();
    frozen.thaw();

    let (bridge, metrics) = spooling_nats_bridge(&url, &spool, &log);
    wait_until("the rest of the spool to reach the stream", async || {
        bridge_metric(metrics, "apizee_bridge_spool_events").await == Some(0.0)
    })
    .await;
    let found = stream_ids(&nats).await;
    eprintln!(
        "{} webhooks answered 202; {left} still spooled when the bridge was killed mid-replay; \
         {} in the stream",
        answered.len(),
        found.len()
    );
    assert_each_once_in_order("nats, kill -9 mid-replay", &answered, &found);
    drop(bridge);
}

/// Kafka's side of the kill -9 cases: 32 senders post while the broker is
/// down (their appends share group commits) and the bridge is killed -9
/// while they still post; the next bridge starts on that spool with the
/// broker still down, then the broker comes back. Once that bridge has
/// replayed at least every webhook answered 202 and its spool is empty, the
/// topic, read to its high watermarks, holds each of them once, and each
/// object's in the order they were answered (one object, one key, one
/// partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_webhooks_answered_202_survive_kill_9_once_each_in_order() {
    use crate::support::kafka::{KafkaCluster, header, read_all};

    let mut broker = KafkaCluster::single().await;
    let bootstrap = broker.bootstrap();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().join("spool").to_string_lossy().into_owned();
    let log = dir.path().join("bridge.log");
    let (mut bridge, _) = spooling_kafka_bridge(&bootstrap, &spool, &log);
    // Ready means the topics exist, stored by the broker: they outlive it.
    bridge.wait_ready().await;
    broker.nodes[0].kill();
    let answered = post_until_killed(&mut bridge, 0, 200).await;

    let (bridge, metrics) = spooling_kafka_bridge(&bootstrap, &spool, &log);
    broker.nodes[0].restart().await;
    let at_least = answered.len() as f64;
    wait_until("the spool to be replayed into Kafka", async || {
        let replayed = bridge_metric(metrics, "apizee_bridge_spool_replayed_total").await;
        let left = bridge_metric(metrics, "apizee_bridge_spool_events").await;
        replayed.is_some_and(|n| n >= at_least) && left == Some(0.0)
    })
    .await;
    let messages =
        tokio::task::spawn_blocking(move || read_all(&bootstrap, "apizee.ticket.update"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let found: Vec<String> = messages
        .iter()
        .filter_map(|m| header(m, "apizee-event-id").map(str::to_owned))
        .collect();
    assert_each_once_in_order("kafka, 32 senders, kill -9", &answered, &found);
    drop(bridge);
}
