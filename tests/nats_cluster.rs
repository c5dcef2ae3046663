//! The bridge against a 3-node nats-server cluster under faults.
//!
//! Each case starts its own cluster on loopback (JetStream, free ports,
//! routes between the nodes, a store per node), a stream with 3 replicas on
//! `apizee.>`, and the bridge binary given all three URLs. Senders post
//! webhooks with unique objectIds, retrying 503s as a real sender does, and
//! one fault hits the cluster under that load:
//!
//! - the stream leader's server is killed (SIGKILL), then started again;
//! - the stream leader's server is stopped (SIGSTOP: its sockets stay open,
//!   nothing is answered, as in a partition), then resumed (SIGCONT);
//! - the server the bridge is connected to is killed, then started again.
//!
//! The leader is first moved off the bridge's server, so that each case is
//! the one fault it names. Then: no webhook answered 200 is missing from the
//! stream; every answer is 200, or 503 with `Retry-After`; 200s resume
//! within [`RESUME_DEADLINE`] of the fault (before the node is back, when
//! it is the bridge's own server that died); `/readyz` is 503 during a
//! leaderless outage and 200 again once 200s resume (how long after is
//! printed; [`READY_HANG_GUARD`] only catches a `/readyz` stuck at 503);
//! the bridge never takes the leaderless stream for a missing one (its log
//! says "no leader" once per episode, never "creating it again").
//!
//! The cases run one at a time ([`SERIAL`]): three clusters, three bridges
//! and their senders at once on 2 cores would slow the elections they time.

// A binary of its own: the cases time elections, which other tests
// running beside them on 2 cores would slow past the limits measured here.
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use support::load::*;
use support::process::BridgeProcess;
use support::*;

const STREAM: &str = "APIZEE";
/// Senders working at once, each on a fresh connection per request.
const SENDERS: usize = 8;
/// Webhooks acknowledged before the fault, after it, and after the node is
/// back: the load spans the whole failover.
const ACKED_BEFORE_FAULT: usize = 400;
const ACKED_DURING_FAULT: usize = 200;
const ACKED_AFTER_HEAL: usize = 200;
/// A killed or stopped node stays so for at least this long: the length of
/// the fault is the test's choice, not something to wait on.
const DOWN_AT_LEAST: Duration = Duration::from_secs(3);
/// `--publish-timeout`: how long a webhook waits for a PubAck.
const PUBLISH_TIMEOUT: &str = "2s";
/// The promise: 200s again this soon after the fault.
const RESUME_DEADLINE: Duration = Duration::from_secs(10);
/// How long a wait for something the promise bounds may run before the test
/// gives up on it (then the assertion on the figure says why).
const GIVE_UP: Duration = Duration::from_secs(60);
/// Between two webhooks of one sender, with a spool: 8 senders then post
/// at most 80 a second. The replay publishes one event at a time, waits
/// for its ack and removes it with an fsync, so it gains on arrivals only
/// slowly (issue 25): at 200 a second (a 40 ms pause) the 200s came back
/// 47 s after the fault here and not within 60 s on CI.
const SPOOL_PAUSE: Duration = Duration::from_millis(100);
/// `/readyz` answers 200 again well within a second of the 200s resuming
/// (it is sampled every [`READYZ_EVERY`]); the figure is printed, and only
/// a lag this long fails the test: a hang guard, not a measure of speed.
const READY_HANG_GUARD: Duration = Duration::from_secs(10);
/// The bridge logs each episode once; a few episodes (an election, then the
/// node's return moving the leader again) are allowed, a line per webhook
/// is not.
const MAX_EPISODE_LINES: usize = 6;

/// The bridge's lines when it begins spooling, and when the spool is empty.
const SPOOLING: &str = "spooling webhooks";
const SPOOL_EMPTIED: &str = "spool empty:";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillLeader,
    FreezeLeader,
    KillBridgeServer,
}

impl Fault {
    fn case(self) -> &'static str {
        match self {
            Self::KillLeader => "kill-leader",
            Self::FreezeLeader => "freeze-leader",
            Self::KillBridgeServer => "kill-bridge-server",
        }
    }
}

/// The bridge binary on free loopback ports against `urls`, logging to `log`,
/// with its spool in `spool` if given; the process and its metrics address.
fn start_bridge(urls: &str, log: &Path, spool: Option<&Path>) -> (BridgeProcess, SocketAddr) {
    let spool = spool.map(|dir| dir.display().to_string());
    let mut env = vec![
        ("APIZEE_BRIDGE_SINK", "nats"),
        ("APIZEE_BRIDGE_NATS_URL", urls),
        ("APIZEE_BRIDGE_NATS_JETSTREAM", "true"),
        ("APIZEE_BRIDGE_NATS_STREAM", STREAM),
        ("APIZEE_BRIDGE_PUBLISH_TIMEOUT", PUBLISH_TIMEOUT),
        (
            "APIZEE_BRIDGE_LOG_LEVEL",
            "info,apizee_bridge::sink::nats=debug",
        ),
    ];
    if let Some(dir) = &spool {
        env.push(("APIZEE_BRIDGE_SPOOL_DIR", dir.as_str()));
    }
    BridgeProcess::spawn_on_free_ports(env, log)
}

/// With `spool`, the bridge runs with `--spool-dir`: every answer must be
/// 200 or 202 (a webhook the stream cannot take during the election waits
/// on disk), and every one of them must be in the stream once the spool has
/// been replayed. Its log is held to the same checks as without a spool,
/// and must say when spooling began and when the spool was empty again,
/// once per episode.
async fn failover(fault: Fault, spool: bool) {
    let _serial = SERIAL.lock().await;
    let case: &'static str = if spool {
        Box::leak(format!("{}-with-spool", fault.case()).into_boxed_str())
    } else {
        fault.case()
    };
    let mut cluster = NatsCluster::start(3).await;
    let js = jetstream::new(cluster.client().await);
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["apizee.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create the stream: {e}"));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let log = dir.path().join("bridge.log");
    let spool_dir = dir.path().join("spool");
    let (mut bridge, metrics_addr) =
        start_bridge(&cluster.urls(), &log, spool.then_some(spool_dir.as_path()));
    let addr = bridge.addr;
    bridge.wait_ready().await;
    let mut bridge_server = None;
    wait_until("the bridge's connection in /connz", async || {
        bridge_server = cluster.node_of_client("apizee-bridge").await;
        bridge_server.is_some()
    })
    .await;
    let bridge_server = bridge_server.unwrap_or_default();
    cluster.move_stream_leader_off(STREAM, bridge_server).await;
    let leader = cluster.wait_stream_leader(STREAM).await;
    let target = match fault {
        Fault::KillLeader | Fault::FreezeLeader => leader,
        Fault::KillBridgeServer => bridge_server,
    };
    println!(
        "nats cluster {case}: bridge on {}, stream leader {}, fault on {}",
        cluster.name(bridge_server),
        cluster.name(leader),
        cluster.name(target)
    );

    // Without a spool the senders go flat out. With one, each pauses
    // between webhooks: once the spool holds anything, every webhook is
    // answered 202 in a fraction of a millisecond, far faster than the
    // replay, which publishes one at a time to keep the order, could empty
    // it; unpaused, the spool would only grow (see the README's Reliability).
    let pause = if spool { SPOOL_PAUSE } else { Duration::ZERO };
    let load = Load::start(addr, case, SENDERS, pause);
    let tally = load.tally.clone();
    assert!(
        load.reached(ACKED_BEFORE_FAULT, GIVE_UP).await,
        "{case}: only {} webhooks acknowledged before the fault",
        tally.acked()
    );

    let faulted = Instant::now();
    let mut frozen = None;
    match fault {
        Fault::KillLeader | Fault::KillBridgeServer => cluster.nodes[target].kill(),
        Fault::FreezeLeader => {
            let pid = cluster.nodes[target]
                .pid()
                .unwrap_or_else(|| panic!("{case}: node not running"));
            frozen = Some(Frozen::freeze(pid));
        }
    }
    let resumed = {
        let tally = tally.clone();
        within(GIVE_UP, move || tally.acked_since(faulted)).await
    };
    let during = tally.acked() + ACKED_DURING_FAULT;
    let kept_up = resumed && load.reached(during, GIVE_UP).await;

    // Heal: the node runs again, then the load goes on until it has been
    // part of the cluster for a while.
    tokio::time::sleep(DOWN_AT_LEAST.saturating_sub(faulted.elapsed())).await;
    let healed = Instant::now();
    match frozen.take() {
        Some(frozen) => frozen.thaw(),
        None => cluster.nodes[target].restart().await,
    }
    let after = tally.acked() + ACKED_AFTER_HEAL;
    let finished = kept_up && load.reached(after, GIVE_UP).await;
    let (samples, load_took) = load.stop().await;
    let final_readyz = get(addr, "/readyz").await.map_or(0, |r| r.status);
    let mut replayed = true;
    let replay_started = Instant::now();
    if spool {
        replayed = spool_emptied(metrics_addr, GIVE_UP).await.is_some();
        println!(
            "nats cluster {case}: the spool was empty {:?} after the load stopped",
            replay_started.elapsed()
        );
        // The replay logs the end of the episode when its next round finds
        // the spool empty, a moment after the last removal the metric
        // counts: the line is waited for here and checked with the others.
        if replayed {
            let emptied =
                || std::fs::read_to_string(&log).is_ok_and(|text| text.contains(SPOOL_EMPTIED));
            within(READY_DEADLINE, emptied).await;
        }
    }

    // What the stream holds, once every node is current again.
    for node in 0..cluster.nodes.len() {
        let name = cluster.name(node).to_owned();
        wait_until(&format!("{name} to be healthy"), async || {
            cluster.monitor(node, "/healthz").await.is_some()
        })
        .await;
    }
    let stored = stream_contents(&js, STREAM).await;

    let answers = std::mem::take(&mut *tally.answers.lock().unwrap_or_else(|e| e.into_inner()));
    let ids = tally.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for (id, payload) in &stored {
        *copies.entry(id.as_str()).or_default() += 1;
        if let Some(&i) = ids.get(id) {
            assert_eq!(
                payload,
                event(case, i).as_bytes(),
                "{case}: the stored payload of event {i} differs from what was sent"
            );
        }
    }
    let mut lost: Vec<usize> = ids
        .iter()
        .filter(|(id, _)| !copies.contains_key(id.as_str()))
        .map(|(_, &i)| i)
        .collect();
    lost.sort_unstable();
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    let sent = tally.sent.load(Ordering::SeqCst);
    let refused_503 = answers.iter().filter(|a| a.status == Some(503)).count();
    let spooled_202 = answers.iter().filter(|a| a.status == Some(202)).count();
    let expected = |a: &Answer| match a.status {
        Some(200) => true,
        Some(202) => spool,
        Some(503) => !spool && a.retry_after,
        _ => false,
    };
    let unexpected: Vec<&Answer> = answers.iter().filter(|a| !expected(a)).collect();

    let mut acked_at: Vec<Instant> = answers
        .iter()
        .filter(|a| a.status == Some(200))
        .map(|a| a.answered)
        .collect();
    acked_at.sort_unstable();
    let longest_gap = acked_at
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    // The outage: the longest stretch without a 200 that ends after the
    // fault and starts before the node is back. Measured between answers
    // rather than from requests sent after the fault, which a leader still
    // running for a few milliseconds after the signal may acknowledge. The
    // node's return can itself cause a pause of a few milliseconds (the
    // cluster's routes reconnect); when the fault caused none longer, that
    // pause is not the fault's outage.
    let outage = acked_at
        .windows(2)
        .filter(|w| w[1] > faulted && w[0] < healed)
        .map(|w| (w[0], w[1]))
        .max_by_key(|&(start, end)| end - start);
    let resumed_after = outage.map(|(_, end)| end.saturating_duration_since(faulted));
    let not_ready_during_outage = outage.is_some_and(|(start, end)| {
        samples
            .iter()
            .any(|&(t, status)| t >= start && t <= end && status != 200)
    });
    let ready_again_after = outage.and_then(|(_, end)| {
        samples
            .iter()
            .find(|&&(t, status)| t >= end && status == 200)
            .map(|&(t, _)| t.saturating_duration_since(end))
    });

    bridge.signal("TERM");
    bridge.wait_exit().await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    // The stream keeper's own lines; each failed webhook's line and the
    // spooling line (which carry the publish error) are left out.
    let episode_lines: Vec<&str> = log_text
        .lines()
        .filter(|l| {
            l.contains("JetStream") && !l.contains("webhook not published") && !l.contains(SPOOLING)
        })
        .collect();
    let count = |needle: &str| episode_lines.iter().filter(|l| l.contains(needle)).count();
    let missing_lines = log_text
        .lines()
        .filter(|l| l.contains("no JetStream stream captures"))
        .count();
    let creating_lines = count("creating it again");
    let no_leader_lines = count("has no leader");
    // With a spool: a line when spooling begins (or its cause changes),
    // one when the spool is empty again, never a line per webhook.
    let spool_lines: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains(SPOOLING) || l.contains(SPOOL_EMPTIED))
        .collect();
    let spool_count = |needle: &str| spool_lines.iter().filter(|l| l.contains(needle)).count();
    let spooling_lines = spool_count(SPOOLING);
    let emptied_lines = spool_count(SPOOL_EMPTIED);
    println!(
        "nats cluster {case}: sent={} acked={} 503={refused_503} 202={spooled_202} found={} \
         lost={} duplicates={duplicates} longest gap={longest_gap:?}",
        sent,
        ids.len(),
        ids.len() - lost.len(),
        lost.len(),
    );
    println!(
        "nats cluster {case}: 200s resumed {resumed_after:?} after the fault; /readyz not 200 \
         during the outage: {not_ready_during_outage}, 200 again {ready_again_after:?} after the \
         outage, {final_readyz} at the end; node back {:?} after the fault; load took \
         {load_took:?}, {} answers; bridge log: {no_leader_lines} \"has no leader\", \
         {missing_lines} \"no stream captures\", {creating_lines} \"creating it again\"",
        healed - faulted,
        answers.len(),
    );
    println!(
        "nats cluster {case}: the bridge's JetStream lines:\n{}",
        episode_lines.join("\n")
    );
    if spool {
        println!(
            "nats cluster {case}: the bridge's spool lines:\n{}",
            spool_lines.join("\n")
        );
    }
    if !finished || !lost.is_empty() || !unexpected.is_empty() {
        for node in 0..cluster.nodes.len() {
            println!(
                "{}'s log, last lines:\n{}",
                cluster.name(node),
                cluster.log_tail(node, 30)
            );
        }
    }

    if !replayed {
        println!("{case}: the bridge's log:\n{log_text}");
    }
    assert!(
        replayed,
        "{case}: the spool was not replayed within {GIVE_UP:?}"
    );
    assert!(resumed, "{case}: no 200 within {GIVE_UP:?} of the fault");
    assert!(
        finished,
        "{case}: the load stalled at {} acknowledged",
        tally.acked()
    );
    assert!(
        lost.is_empty(),
        "{case}: {} webhooks answered 200 are not in the stream, first ones: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(
        unexpected.is_empty(),
        "{case}: {} answers were neither 200 nor {}, first ones: {:?}",
        unexpected.len(),
        if spool { "202" } else { "503 with Retry-After" },
        unexpected
            .iter()
            .take(5)
            .map(|a| (a.status, &a.detail))
            .collect::<Vec<_>>()
    );
    assert_eq!(duplicates, 0, "{case}: Nats-Msg-Id lets no retry in twice");
    if spool {
        // The 200s come back once the replay has caught up, and /readyz
        // stays 200 while the spool has room: there is no outage to time.
        assert!(spooled_202 > 0, "{case}: nothing was spooled");
        assert!(
            spooling_lines >= 1,
            "{case}: {spooled_202} webhooks answered 202, and the bridge's log does not say it \
             spooled"
        );
        assert!(
            spooling_lines <= MAX_EPISODE_LINES,
            "{case}: {spooling_lines} lines say webhooks are spooled: logged per webhook, not \
             per episode"
        );
        assert!(
            emptied_lines >= 1,
            "{case}: the spool was replayed, and the bridge's log does not say it is empty"
        );
    } else {
        assert!(
            resumed_after.is_some_and(|d| d <= RESUME_DEADLINE),
            "{case}: 200s resumed {resumed_after:?} after the fault, over {RESUME_DEADLINE:?}"
        );
        // A bridge whose server died reconnects to another at once, and
        // fails the publishes that were waiting for an ack on the lost
        // connection instead of letting them wait out --publish-timeout:
        // 200s are back while the node is still down, not because it came
        // back. Counted in the second half of that time, since answers to
        // acks that came before the kill may still go out just after it.
        if fault == Fault::KillBridgeServer {
            let down_for = healed - faulted;
            let while_down = acked_at
                .iter()
                .filter(|&&t| t > faulted + down_for / 2 && t < healed)
                .count();
            assert!(
                while_down > 0,
                "{case}: no 200 in the second half of the {down_for:?} the bridge's server was \
                 down (200s resumed {resumed_after:?} after the fault)"
            );
        } else {
            assert!(
                not_ready_during_outage,
                "{case}: /readyz stayed 200 while the stream had no leader"
            );
        }
        assert!(
            ready_again_after.is_some_and(|d| d <= READY_HANG_GUARD),
            "{case}: /readyz not 200 again within the {READY_HANG_GUARD:?} hang guard after \
             200s resumed: {ready_again_after:?} (None: not before the load stopped)"
        );
    }
    assert_eq!(final_readyz, 200, "{case}: /readyz at the end");
    assert_eq!(
        missing_lines, 0,
        "{case}: the bridge took the stream for a missing one"
    );
    assert_eq!(
        creating_lines, 0,
        "{case}: the bridge tried to create the stream again"
    );
    if fault != Fault::KillBridgeServer {
        assert!(
            no_leader_lines >= 1,
            "{case}: the bridge's log does not say that the stream had no leader"
        );
    }
    assert!(
        no_leader_lines <= MAX_EPISODE_LINES,
        "{case}: {no_leader_lines} lines say the stream has no leader: logged per webhook, not \
         per episode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_killed_under_load() {
    failover(Fault::KillLeader, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_killed_under_load_with_a_spool() {
    failover(Fault::KillLeader, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_stopped_under_load() {
    failover(Fault::FreezeLeader, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_server_killed_under_load() {
    failover(Fault::KillBridgeServer, false).await;
}
