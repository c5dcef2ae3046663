//! The bridge against a 3-node Apache Kafka cluster (KRaft) under faults.
//!
//! Each case starts its own cluster on loopback (every node broker and
//! controller, topics with 3 replicas and `min.insync.replicas=2`, unclean
//! leader election off: `KafkaCluster::start(3, ..)`), makes the topic the
//! load writes to ([`TOPIC`], [`PARTITIONS`] partitions), and starts the
//! bridge binary given the three bootstrap addresses. [`SENDERS`] senders,
//! each on one keep-alive connection, post webhooks with unique objectIds,
//! retrying 503s as a real sender does, and one fault hits the cluster under
//! that load:
//!
//! - the leader of partition [`PARTITION`] is killed (SIGKILL), then started
//!   again [`DOWN_FOR`] later;
//! - that leader is stopped (SIGSTOP: its sockets stay open, nothing is
//!   answered, a broker that hangs rather than dies), then resumed;
//! - the active KRaft controller is killed, then started again;
//! - two of the three nodes are killed (the leader and another): every
//!   partition is below `min.insync.replicas`, and the controller quorum is
//!   lost with them; then both are started again [`TWO_DOWN_FOR`] later;
//! - with `--spool-dir`, the leader is killed, then started again.
//!
//! Then: no webhook answered 200 (or 202) is missing when the topic is read
//! back with a fresh consumer up to its high watermarks; every answer is
//! 200, or 503 with `Retry-After` (202 with a spool), and no request ever
//! lost its connection; 200s resume within [`RESUME_DEADLINE`] of the fault
//! (of the nodes' return, when two were down); while two are down, no
//! webhook sent meanwhile is answered 200; `/readyz` is 200 at the end.
//! Duplicates are printed, not refused: a webhook answered 503 may still
//! have been written (the sender's retry is then a second copy), and
//! librdkafka's idempotent producer can duplicate during a leader change
//! (librdkafka #4953).
//!
//! `/readyz` below the ISR minimum stays 200 (asserted): it says that the
//! bridge reaches the cluster, which every replica of the bridge does alike;
//! see the README's Kafka section.
//!
//! `APIZEE_BRIDGE_KAFKA_OPTION` in the test's environment is passed on to
//! the bridge, to compare producer settings on the same faults (the README's
//! Kafka section gives the figures and the command).
//!
//! The cases run one at a time ([`SERIAL`]): three JVMs, the bridge and
//! its senders per case already fill 2 cores, and a second case beside them
//! would slow the elections they time.

// A binary of its own: the cases time failovers, which other tests running
// beside them on 2 cores would slow.
mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use support::kafka::{KafkaCluster, KafkaRelease, create_topics, header, read_all};
use support::load::*;
use support::process::BridgeProcess;
use support::*;

/// The one topic every webhook of the load goes to (a ticket's `create`
/// under the default prefix), and its partitions: every objectId is new, so
/// the load spreads over all of them.
const TOPIC: &str = "apizee.ticket.create";
const PARTITIONS: i32 = 3;
/// The partition whose leader the faults hit.
const PARTITION: i32 = 0;
/// Senders working at once, each on one keep-alive connection.
const SENDERS: usize = 8;
/// Webhooks acknowledged before the fault, and after the cluster is whole
/// again: the load spans the whole failover.
const ACKED_BEFORE_FAULT: usize = 400;
const ACKED_AFTER_HEAL: usize = 300;
/// How long a node stays killed or stopped: the test's choice, not
/// something to wait on.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// How long two nodes stay killed: long enough past `--publish-timeout`
/// that webhooks sent meanwhile are answered before either is started
/// again. A node being started can replicate (and so complete an
/// acknowledgement) before its broker port opens, so only answers from
/// before the restarts begin are sure to come while nothing can be stored.
const TWO_DOWN_FOR: Duration = Duration::from_secs(12);
/// `--publish-timeout`: the bridge's default, written out because the
/// figures depend on it. With a spool, shorter: the point of a spool is a
/// quick 202, and a failover shorter than the timeout would spool nothing.
const PUBLISH_TIMEOUT: &str = "5s";
const SPOOL_PUBLISH_TIMEOUT: &str = "1s";
/// The promise: 200s again this soon after the fault (after the nodes are
/// back, when two were down). Generous for 2 busy cores: the failover itself
/// takes the broker's session timeout (4 s) and an election.
const RESUME_DEADLINE: Duration = Duration::from_secs(15);
/// How long a wait for something the promise bounds may run before the test
/// gives up on it (then the assertion on the figure says why).
const GIVE_UP: Duration = Duration::from_secs(90);
/// Between two webhooks of one sender, with a spool: once the spool holds
/// anything every webhook is answered 202 at once, and the replay, one
/// publish at a time to keep the order, must outpace the senders to empty it.
const SPOOL_PAUSE: Duration = Duration::from_millis(100);
/// What an answer may take beyond `--publish-timeout` on 2 busy cores: the
/// bridge must answer within its timeout, 503 if the cluster has not
/// acknowledged by then, whatever the fault.
const ANSWER_MARGIN: Duration = Duration::from_secs(3);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillLeader,
    FreezeLeader,
    KillController,
    /// The leader and one other node killed: below the ISR minimum.
    KillTwo,
}

impl Fault {
    fn case(self) -> &'static str {
        match self {
            Self::KillLeader => "kill-leader",
            Self::FreezeLeader => "freeze-leader",
            Self::KillController => "kill-controller",
            Self::KillTwo => "kill-two",
        }
    }
}

/// The bridge binary on free loopback ports against `bootstrap`, logging to
/// `log`, with its spool in `spool` if given: the process and its metrics
/// address.
fn start_bridge(bootstrap: &str, log: &Path, spool: Option<&Path>) -> (BridgeProcess, SocketAddr) {
    let spool = spool.map(|dir| dir.display().to_string());
    let options = std::env::var("APIZEE_BRIDGE_KAFKA_OPTION").unwrap_or_default();
    let mut env = vec![
        ("APIZEE_BRIDGE_SINK", "kafka"),
        ("APIZEE_BRIDGE_KAFKA_BROKERS", bootstrap),
        (
            "APIZEE_BRIDGE_PUBLISH_TIMEOUT",
            if spool.is_some() {
                SPOOL_PUBLISH_TIMEOUT
            } else {
                PUBLISH_TIMEOUT
            },
        ),
        ("APIZEE_BRIDGE_LOG_LEVEL", "info"),
    ];
    if !options.is_empty() {
        env.push(("APIZEE_BRIDGE_KAFKA_OPTION", options.as_str()));
    }
    if let Some(dir) = &spool {
        env.push(("APIZEE_BRIDGE_SPOOL_DIR", dir.as_str()));
    }
    BridgeProcess::spawn_on_free_ports(env, log)
}

/// The index of the node leading `partition` of [`TOPIC`], once the
/// metadata names one.
async fn leader_of(cluster: &KafkaCluster, partition: i32) -> usize {
    let mut leader = None;
    wait_until(&format!("a leader for {TOPIC}/{partition}"), async || {
        leader = tokio::task::block_in_place(|| cluster.leader(TOPIC, partition));
        leader.is_some()
    })
    .await;
    leader.unwrap_or_default()
}

/// The series of `name` with a value other than 0, one per line.
fn nonzero_series(metrics: &str, name: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.ends_with(" 0"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// With `spool`, the bridge runs with `--spool-dir`: every answer must be
/// 200 or 202, and every one of them must be in the topic once the spool
/// has been replayed.
async fn failover(fault: Fault, spool: bool) {
    let _serial = SERIAL.lock().await;
    let case: &'static str = if spool {
        Box::leak(format!("{}-with-spool", fault.case()).into_boxed_str())
    } else {
        fault.case()
    };
    let mut cluster = KafkaCluster::start(3, KafkaRelease::Current).await;
    let bootstrap = cluster.bootstrap();
    create_topics(&bootstrap, &[TOPIC], PARTITIONS, 3).await;

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let log = dir.path().join("bridge.log");
    let spool_dir = dir.path().join("spool");
    let (mut bridge, metrics_addr) =
        start_bridge(&bootstrap, &log, spool.then_some(spool_dir.as_path()));
    let addr = bridge.addr;
    bridge.wait_ready().await;

    let mut leaders = Vec::new();
    for partition in 0..PARTITIONS {
        leaders.push(leader_of(&cluster, partition).await);
    }
    let leader = leaders[PARTITION as usize];
    let mut controller = None;
    wait_until("an active KRaft controller", async || {
        controller = cluster.active_controller();
        controller.is_some()
    })
    .await;
    let controller = controller.unwrap_or_default();
    let targets = match fault {
        Fault::KillLeader | Fault::FreezeLeader => vec![leader],
        Fault::KillController => vec![controller],
        Fault::KillTwo => vec![leader, (leader + 1) % cluster.nodes.len()],
    };
    let names = |nodes: &[usize]| {
        nodes
            .iter()
            .map(|&i| format!("node {}", cluster.nodes[i].id))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    println!(
        "kafka cluster {case}: partition leaders {}, active controller {}, fault on {}",
        leaders
            .iter()
            .enumerate()
            .map(|(p, &i)| format!("{p}: node {}", cluster.nodes[i].id))
            .collect::<Vec<_>>()
            .join(", "),
        names(&[controller]),
        names(&targets)
    );

    let pause = if spool { SPOOL_PAUSE } else { Duration::ZERO };
    let load = Load::start(addr, case, SENDERS, pause);
    let tally = load.tally.clone();
    let warmed_up = load.reached(ACKED_BEFORE_FAULT, GIVE_UP).await;

    let faulted = Instant::now();
    let mut frozen = None;
    for &target in &targets {
        match fault {
            Fault::FreezeLeader => {
                let pid = cluster.nodes[target]
                    .pid()
                    .unwrap_or_else(|| panic!("{case}: node not running"));
                frozen = Some(Frozen::freeze(pid));
            }
            _ => cluster.nodes[target].kill(),
        }
    }
    // Every node the fault hits is down from here on.
    let all_down = Instant::now();
    let down_for = if fault == Fault::KillTwo {
        TWO_DOWN_FOR
    } else {
        DOWN_FOR
    };
    tokio::time::sleep(down_for.saturating_sub(faulted.elapsed())).await;
    let restarting = Instant::now();
    // When the first node the fault hit is back (its broker port open: it
    // is unfenced), and when all are.
    let mut first_back = None;
    match frozen.take() {
        Some(frozen) => frozen.thaw(),
        None => {
            for &target in &targets {
                cluster.nodes[target].restart().await;
                first_back.get_or_insert_with(Instant::now);
            }
        }
    }
    let back = Instant::now();
    let first_back = first_back.unwrap_or(back);
    let after = tally.acked() + ACKED_AFTER_HEAL;
    let finished = warmed_up && load.reached(after, GIVE_UP).await;
    let (samples, load_took) = load.stop().await;
    let final_readyz = get(addr, "/readyz").await.map_or(0, |r| r.status);
    let mut replayed = true;
    if spool {
        let replay_started = Instant::now();
        replayed = spool_emptied(metrics_addr, GIVE_UP).await.is_some();
        println!(
            "kafka cluster {case}: the spool was empty {:?} after the load stopped",
            replay_started.elapsed()
        );
    }
    let metrics = get(metrics_addr, "/metrics")
        .await
        .map(|r| r.text())
        .unwrap_or_default();

    // What the topic holds, once every broker is back in the metadata.
    cluster.wait_brokers(cluster.nodes.len()).await;
    let read_bootstrap = bootstrap.clone();
    let stored = tokio::task::spawn_blocking(move || read_all(&read_bootstrap, TOPIC))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let answers = std::mem::take(&mut *tally.answers.lock().unwrap_or_else(|e| e.into_inner()));
    let ids = tally.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let retried = tally
        .retried
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut copies: HashMap<String, usize> = HashMap::new();
    // Acknowledged event -> the partition it is in.
    let mut partition_of: HashMap<usize, i32> = HashMap::new();
    for message in &stored {
        let id = header(message, "apizee-event-id")
            .unwrap_or_else(|| {
                panic!(
                    "{case}: {}/{}@{} has no apizee-event-id",
                    message.topic(),
                    message.partition(),
                    message.offset()
                )
            })
            .to_owned();
        if let Some(&i) = ids.get(&id) {
            partition_of.insert(i, message.partition());
            assert_eq!(
                message.payload().unwrap_or_default(),
                event(case, i).as_bytes(),
                "{case}: the stored payload of event {i} differs from what was sent"
            );
        }
        *copies.entry(id).or_default() += 1;
    }
    let mut missing: Vec<usize> = ids
        .iter()
        .filter(|(id, _)| !copies.contains_key(id.as_str()))
        .map(|(_, &i)| i)
        .collect();
    missing.sort_unstable();
    let retried: HashSet<usize> = retried.into_iter().collect();
    let (mut duplicates, mut duplicates_retried) = (0, 0);
    for (id, &n) in &copies {
        if n > 1 {
            duplicates += n - 1;
            if ids.get(id).is_some_and(|i| retried.contains(i)) {
                duplicates_retried += n - 1;
            }
        }
    }
    let sent = tally.sent.load(Ordering::SeqCst);
    let count = |status: u16| answers.iter().filter(|a| a.status == Some(status)).count();
    let (ok_200, spooled_202, refused_503) = (count(200), count(202), count(503));
    let socket_errors: Vec<&Answer> = answers.iter().filter(|a| a.status.is_none()).collect();
    let expected = |a: &Answer| match a.status {
        Some(200) => true,
        Some(202) => spool,
        Some(503) => !spool && a.retry_after,
        _ => false,
    };
    let unexpected: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status.is_some() && !expected(a))
        .collect();
    let publish_timeout = humantime::parse_duration(if spool {
        SPOOL_PUBLISH_TIMEOUT
    } else {
        PUBLISH_TIMEOUT
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let slowest = answers
        .iter()
        .map(|a| a.answered - a.sent)
        .max()
        .unwrap_or_default();

    // The outage: the longest stretch without a 200 (or 202) that ends after
    // the fault and starts before the nodes are back. Measured between
    // answers rather than from requests sent after the fault, which a leader
    // still running for a few milliseconds after the signal may acknowledge.
    let outage_of = |partition: Option<i32>| {
        let mut acked_at: Vec<Instant> = answers
            .iter()
            .filter(|a| matches!(a.status, Some(200 | 202)))
            .filter(|a| partition.is_none() || partition_of.get(&a.event).copied() == partition)
            .map(|a| a.answered)
            .collect();
        acked_at.sort_unstable();
        acked_at
            .windows(2)
            .filter(|w| w[1] > faulted && w[0] < back)
            .map(|w| (w[0], w[1]))
            .max_by_key(|&(start, end)| end - start)
    };
    let outage = outage_of(None);
    // Each partition's own: a sender retries one event until it is taken,
    // so the slowest partition to come back is what senders wait for.
    let partition_resumed: Vec<Option<Duration>> = (0..PARTITIONS)
        .map(|p| outage_of(Some(p)).map(|(_, end)| end.saturating_duration_since(faulted)))
        .collect();
    let slowest_partition = partition_resumed
        .iter()
        .copied()
        .max()
        .flatten()
        .map(|after| faulted + after);
    let resumed_after = slowest_partition.map(|end| end.saturating_duration_since(faulted));
    // When two were down, 200s can only come back with the first of them.
    let resumed_after_back = slowest_partition.map(|end| end.saturating_duration_since(first_back));
    let outage_503 = outage.map_or(0, |(start, end)| {
        answers
            .iter()
            .filter(|a| a.status == Some(503) && a.answered >= start && a.answered <= end)
            .count()
    });
    // While two nodes are down, nothing can be acknowledged: a request sent
    // once both were down and answered before either was started again.
    let while_down: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent >= all_down && a.answered < restarting)
        .collect();
    let not_refused_while_down: Vec<String> = while_down
        .iter()
        .filter(|a| a.status != Some(503))
        .map(|a| {
            format!(
                "{:?} sent {:?} after both were down, answered {:?} before the restarts",
                a.status,
                a.sent - all_down,
                restarting - a.answered
            )
        })
        .collect();
    let acked_while_down = not_refused_while_down.len();
    let readyz_during = |from: Instant, to: Instant| {
        let during: Vec<u16> = samples
            .iter()
            .filter(|&&(t, _)| t >= from && t <= to)
            .map(|&(_, s)| s)
            .collect();
        let not_ready = during.iter().filter(|&&s| s != 200).count();
        (not_ready, during.len())
    };
    let (not_ready, sampled) = readyz_during(faulted, outage.map_or(back, |(_, end)| end));
    let (not_ready_down, sampled_down) = readyz_during(all_down, restarting);

    bridge.signal("TERM");
    bridge.wait_exit().await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let renewals = log_text
        .lines()
        .filter(|l| l.contains("Kafka producer unusable"))
        .count();
    println!(
        "kafka cluster {case}: sent={sent} 200={ok_200} 202={spooled_202} 503={refused_503} \
         acknowledged={} found={} missing={} duplicates={duplicates} ({duplicates_retried} of \
         events answered 503 or 202 first) socket errors={} connections={} slowest \
         answer={slowest:?}",
        ids.len(),
        ids.len() - missing.len(),
        missing.len(),
        socket_errors.len(),
        tally.connections.load(Ordering::SeqCst),
    );
    println!(
        "kafka cluster {case}: 200s resumed {resumed_after:?} after the fault on every partition \
         ({resumed_after_back:?} after the first node was back, {:?} after the fault; per \
         partition {partition_resumed:?}); the longest outage had {outage_503} 503s; /readyz not 200 in {not_ready} of {sampled} samples from the \
         fault to the first 200, {final_readyz} at the end; load took {load_took:?}, {} answers",
        first_back - faulted,
        answers.len(),
    );
    if fault == Fault::KillTwo {
        println!(
            "kafka cluster {case}: while both were down ({:?}): {} answers, {acked_while_down} of \
             them not 503; /readyz not 200 in {not_ready_down} of {sampled_down} samples",
            restarting - all_down,
            while_down.len()
        );
    }
    println!(
        "kafka cluster {case}: publishes: {}; delivery errors: {}; producer replaced {renewals} \
         times",
        nonzero_series(&metrics, "apizee_bridge_publishes_total"),
        nonzero_series(&metrics, "apizee_bridge_kafka_delivery_errors_total"),
    );
    // The probe's verdicts and librdkafka's own warnings, in order.
    let kafka_lines: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("Kafka brokers") || l.contains("librdkafka"))
        .collect();
    println!(
        "kafka cluster {case}: the bridge's Kafka lines ({}):\n{}",
        kafka_lines.len(),
        kafka_lines[..kafka_lines.len().min(40)].join("\n")
    );
    let failed = !finished || !missing.is_empty() || !unexpected.is_empty();
    if failed {
        println!("{case}: the bridge's log:\n{log_text}");
    }

    assert!(
        warmed_up,
        "{case}: only {} webhooks acknowledged before the fault",
        tally.acked()
    );
    assert!(
        replayed,
        "{case}: the spool was not replayed within {GIVE_UP:?}"
    );
    assert!(
        finished,
        "{case}: the load stalled at {} acknowledged",
        tally.acked()
    );
    assert!(
        missing.is_empty(),
        "{case}: {} acknowledged webhooks are not in {TOPIC}, first ones: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        socket_errors.is_empty(),
        "{case}: {} requests got no answer, first ones: {:?}",
        socket_errors.len(),
        socket_errors
            .iter()
            .take(5)
            .map(|a| &a.detail)
            .collect::<Vec<_>>()
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
    assert!(
        slowest <= publish_timeout + ANSWER_MARGIN,
        "{case}: an answer took {slowest:?}, over --publish-timeout {publish_timeout:?} + \
         {ANSWER_MARGIN:?}"
    );
    assert_eq!(final_readyz, 200, "{case}: /readyz at the end");
    if spool {
        // Every webhook the cluster could not take in time waited on disk:
        // there is no outage to time.
        assert!(spooled_202 > 0, "{case}: nothing was spooled");
        return;
    }
    if fault == Fault::KillTwo {
        assert!(
            !while_down.is_empty(),
            "{case}: no webhook was answered while both nodes were down (the 503s never came)"
        );
        assert!(
            not_refused_while_down.is_empty(),
            "{case}: webhooks sent while two of three nodes were down were not answered 503: \
             {not_refused_while_down:?}"
        );
        assert_eq!(
            not_ready_down, 0,
            "{case}: /readyz was not 200 while the surviving broker answered"
        );
        assert!(
            resumed_after_back.is_some_and(|d| d <= RESUME_DEADLINE),
            "{case}: 200s resumed {resumed_after_back:?} after the first node was back, over \
             {RESUME_DEADLINE:?}"
        );
    } else {
        assert!(
            resumed_after.is_some_and(|d| d <= RESUME_DEADLINE),
            "{case}: 200s resumed {resumed_after:?} after the fault, over {RESUME_DEADLINE:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_leader_killed_under_load() {
    failover(Fault::KillLeader, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_leader_stopped_under_load() {
    failover(Fault::FreezeLeader, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_controller_killed_under_load() {
    failover(Fault::KillController, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_nodes_killed_under_load() {
    failover(Fault::KillTwo, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_leader_killed_under_load_with_a_spool() {
    failover(Fault::KillLeader, true).await;
}
