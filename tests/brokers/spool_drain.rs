//! No event stranded, with nats-server and JetStream: `apizee-bridge spool
//! drain` delivers a spool a bridge left behind, and a bridge stopped with
//! its broker reachable delivers its own spool before it exits.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::spool::spooling_nats_bridge;
use crate::support::process::run_within;
use crate::support::*;
use apizee_bridge::spool::Spool;
use bytes::Bytes;

fn ticket(object: u32, time: u32) -> String {
    format!(
        r#"{{"event":"update","time":{time},"object":"ticket","objectId":{object},"props":{{}}}}"#
    )
}

/// Posts `per_object` webhooks for each of `objects` objectIds, one sender
/// per objectId posting its webhooks one after the other, as the platform
/// does; each must be answered 202 (spooled). Returns each object's event
/// ids in the order they were answered.
async fn spool_webhooks(
    addr: std::net::SocketAddr,
    objects: u32,
    per_object: u32,
) -> Vec<Vec<String>> {
    let senders: Vec<_> = (0..objects)
        .map(|object| {
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for time in 0..per_object {
                    let reply = request(
                        addr,
                        "POST",
                        "/webhooks",
                        &[("content-type", "application/json")],
                        Bytes::from(ticket(object, time)),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("POST: {e}"));
                    assert_eq!(reply.status, 202, "{}", reply.text());
                    ids.push(reply.json()["id"].as_str().unwrap_or_default().to_owned());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for sender in senders {
        ids.push(sender.await.unwrap_or_else(|e| panic!("{e}")));
    }
    ids
}

/// How many events the spool in `dir` holds, opened as the bridge opens it.
fn spooled(dir: &str) -> u64 {
    Spool::open(Path::new(dir), 1 << 30)
        .unwrap_or_else(|e| panic!("{e}"))
        .len()
}

/// `apizee-bridge spool drain ARGS` with the settings the bridge of
/// `spooling_nats_bridge` runs with, from the environment as a Job gives
/// them; it must exit within `within`.
async fn spool_drain(nats: &str, spool: &str, args: &[&str], within: Duration) -> Output {
    let env: Vec<(String, String)> = [
        ("APIZEE_BRIDGE_SINK", "nats"),
        ("APIZEE_BRIDGE_NATS_URL", nats),
        ("APIZEE_BRIDGE_NATS_JETSTREAM", "true"),
        ("APIZEE_BRIDGE_NATS_STREAM", "WEBHOOKS"),
        ("APIZEE_BRIDGE_PUBLISH_TIMEOUT", "500ms"),
        ("APIZEE_BRIDGE_SPOOL_DIR", spool),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut all = vec!["spool".to_owned(), "drain".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        run_within(
            &args,
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            within,
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every event id of `sent` in the stream once, each object's in order.
async fn assert_delivered_once_in_order(nats: &NatsServer, sent: &[Vec<String>]) {
    let found = crate::spool::stream_ids(nats).await;
    let total: usize = sent.iter().map(Vec::len).sum();
    assert_eq!(
        found.len(),
        total,
        "each spooled webhook once in the stream"
    );
    for (object, ids) in sent.iter().enumerate() {
        let delivered: Vec<&String> = found.iter().filter(|id| ids.contains(id)).collect();
        let ids: Vec<&String> = ids.iter().collect();
        assert_eq!(
            delivered, ids,
            "object {object}: missing, twice or out of order"
        );
    }
}

/// A bridge spools webhooks with its broker down and is killed -9 (a
/// replica gone for good). `spool drain` refuses the directory while that
/// bridge still runs on it, gives up within its --timeout while the broker
/// is down (exit 1, every event still on disk), and once the broker is back
/// delivers them all, once, in order per objectId, leaving the spool empty
/// (exit 0); a second run finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_drain_delivers_the_spool_a_killed_bridge_left_once_the_broker_is_back() {
    let mut nats = NatsServer::start(true).await;
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().join("spool").to_string_lossy().into_owned();
    let log = dir.path().join("bridge.log");
    let (mut bridge, _) = spooling_nats_bridge(&url, &spool, &log);
    bridge.wait_ready().await;
    // The stream exists now; stop the broker.
    nats.kill();
    let (objects, per_object) = (16, 25);
    let sent = spool_webhooks(bridge.addr, objects, per_object).await;
    let count = u64::from(objects * per_object);

    // The bridge holds the spool's lock.
    let locked = spool_drain(&url, &spool, &[], READY_DEADLINE).await;
    assert_eq!(locked.status.code(), Some(1), "{}", text(&locked));
    let said = String::from_utf8_lossy(&locked.stderr);
    assert!(
        said.contains(&format!("the spool in {spool} is locked"))
            && said.contains("stop that bridge first"),
        "{}",
        text(&locked)
    );
    bridge.kill_9();
    assert_eq!(spooled(&spool), count, "the refused drain changed nothing");

    // The broker is still down: out within --timeout, nothing lost.
    let started = Instant::now();
    let down = spool_drain(&url, &spool, &["--timeout", "2s"], READY_DEADLINE).await;
    let took = started.elapsed();
    assert_eq!(down.status.code(), Some(1), "{}", text(&down));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(
        said.contains("was not reachable within --timeout 2s")
            && said.contains(&format!("the {count} webhooks left stay in {spool}")),
        "{}",
        text(&down)
    );
    assert!(
        String::from_utf8_lossy(&down.stdout).contains(&format!("delivered 0, left {count}")),
        "{}",
        text(&down)
    );
    assert_eq!(spooled(&spool), count, "the events stay on disk");

    nats.restart().await;
    let started = Instant::now();
    let drained = spool_drain(&url, &spool, &["--timeout", "60s"], Duration::from_secs(90)).await;
    let took = started.elapsed();
    assert_eq!(drained.status.code(), Some(0), "{}", text(&drained));
    let report = String::from_utf8_lossy(&drained.stdout);
    assert!(
        report.contains(&format!("delivered {count}, left 0")),
        "{}",
        text(&drained)
    );
    println!("spool drain: {count} webhooks delivered in {took:?} (the process's whole run)");
    assert_eq!(spooled(&spool), 0, "the spool is empty");
    assert_delivered_once_in_order(&nats, &sent).await;

    let again = spool_drain(&url, &spool, &[], READY_DEADLINE).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("empty, nothing to deliver"),
        "{}",
        text(&again)
    );
}

/// A directory that never held a spool is left as it was (no spool made
/// there): nothing to deliver, exit 0, without a broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_drain_of_a_directory_without_a_spool_changes_nothing() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().join("spool").to_string_lossy().into_owned();
    let out = spool_drain("nats://127.0.0.1:1", &spool, &[], READY_DEADLINE).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("there is no spool here"),
        "{}",
        text(&out)
    );
    assert!(!Path::new(&spool).exists(), "{spool} was made");
}

/// A bridge stopped (SIGTERM) with its broker reachable and its spool full
/// delivers the spool before it exits: many webhooks spooled while the
/// broker was down, the broker back, SIGTERM as soon as the bridge has
/// reached it, before its replayer can have delivered them. After exit 0,
/// every webhook is in the stream once and in order per objectId, the spool
/// is empty, and the log says the shutdown's drain delivered what the
/// replayer (stopped at SIGTERM) had not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_stopped_with_its_broker_back_delivers_its_spool_before_it_exits() {
    let mut nats = NatsServer::start(true).await;
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().join("spool").to_string_lossy().into_owned();
    let log = dir.path().join("bridge.log");
    let (mut bridge, metrics) = spooling_nats_bridge(&url, &spool, &log);
    bridge.wait_ready().await;
    nats.kill();
    let (objects, per_object) = (SIGTERM_OBJECTS, SIGTERM_PER_OBJECT);
    let sent = spool_webhooks(bridge.addr, objects, per_object).await;
    let count = objects * per_object;

    nats.restart().await;
    let connected = r#"apizee_bridge_broker_connected{sink="nats"}"#;
    let mut at_sigterm = 0.0;
    wait_until(
        "the bridge to reach its broker again",
        async || match get(metrics, "/metrics").await {
            Ok(r) if metric_value(&r.text(), connected) == 1.0 => {
                at_sigterm = metric_value(&r.text(), "apizee_bridge_spool_events");
                true
            }
            _ => false,
        },
    )
    .await;
    let stopping = Instant::now();
    bridge.signal("TERM");
    let status = bridge.wait_exit().await;
    let took = stopping.elapsed();
    assert!(status.success(), "{status}");

    let log = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{e}"));
    let drained = log
        .lines()
        .find(|line| line.contains("delivered every spooled webhook before stopping"))
        .unwrap_or_else(|| panic!("the shutdown did not deliver the spool:\n{log}"));
    let delivered: u32 = drained
        .split("delivered=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delivered= in {drained}"));
    println!(
        "SIGTERM with {at_sigterm} of {count} webhooks spooled: the shutdown delivered \
         {delivered}, exit after {took:?}"
    );
    assert!(delivered > 0, "{drained}");
    assert_eq!(spooled(&spool), 0, "the spool is empty");
    assert_delivered_once_in_order(&nats, &sent).await;
}

/// Enough webhooks that the replayer, which has the broker back a moment
/// before SIGTERM, cannot have delivered them all, and few enough that the
/// shutdown's drain (about 4 s) delivers the rest on a busy machine.
const SIGTERM_OBJECTS: u32 = 32;
const SIGTERM_PER_OBJECT: u32 = 200;
