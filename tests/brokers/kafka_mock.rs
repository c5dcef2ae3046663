//! Kafka fault tests with librdkafka's in-process mock cluster: brokers that
//! go down and come back, and acknowledgements that come too late.

use std::time::{Duration, Instant};

use crate::support::kafka::{key, read_all, read_topic};
use crate::support::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const TOPIC: &str = "apizee.ticket.update";

fn ticket(id: u32) -> String {
    format!(r#"{{"event":"update","time":{id},"object":"ticket","objectId":{id},"props":{{}}}}"#)
}

async fn bridge_for(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    timeout: &str,
) -> Bridge {
    let bootstrap = cluster.bootstrap_servers();
    Bridge::start(&[
        "--sink",
        "kafka",
        "--kafka-brokers",
        &bootstrap,
        "--publish-timeout",
        timeout,
        "--retry-after",
        "2s",
    ])
    .await
}

fn mock_cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap_or_else(|e| panic!("mock cluster: {e}"));
    cluster
        .create_topic(TOPIC, 3, 1)
        .unwrap_or_else(|e| panic!("create {TOPIC}: {e}"));
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_is_503_and_nothing_is_published_twice() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let bridge = bridge_for(&cluster, "2s").await;
    bridge.wait_ready().await;
    assert_eq!(bridge.post(&ticket(1)).await.status, 200);

    cluster.broker_down(1).unwrap_or_else(|e| panic!("{e}"));
    bridge.wait_not_ready().await;
    let reply = bridge.post(&ticket(2)).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("retry-after"), Some("2"));
    assert_eq!(reply.json()["error"], "broker_unavailable");

    cluster.broker_up(1).unwrap_or_else(|e| panic!("{e}"));
    bridge.wait_ready().await;
    assert_eq!(bridge.post(&ticket(3)).await.status, 200);

    let messages = tokio::task::spawn_blocking(move || read_topic(&bootstrap, TOPIC, 2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut keys: Vec<&str> = messages.iter().map(key).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["1", "3"],
        "the refused event must never arrive, the others once"
    );

    let metrics = bridge.metrics().await;
    assert!(
        metrics.contains(r#"apizee_bridge_publishes_total{outcome="ok",sink="kafka"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"apizee_bridge_publishes_total{outcome="not_connected",sink="kafka"} 1"#),
        "{metrics}"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_later_than_the_publish_timeout_is_503_without_hanging() {
    let cluster = mock_cluster();
    let bridge = bridge_for(&cluster, "500ms").await;
    bridge.wait_ready().await;
    // The first produce also fetches the producer id and the topic's
    // metadata, which can take longer than this short timeout on a busy
    // machine: warm up until one webhook goes through.
    accepts_again(&bridge).await;

    // Slower than the publish timeout, faster than the readiness probe's own
    // timeout: the broker looks up, but acks too late.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(1500))
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let reply = bridge.post(&ticket(2)).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.header("retry-after").is_some());
    // Bounded by the timeout, not by the broker: generous margin, this only
    // rules out a hang.
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    let metrics = bridge.metrics().await;
    let timeouts = metric_value(
        &metrics,
        r#"apizee_bridge_publishes_total{outcome="timeout",sink="kafka"}"#,
    );
    assert!(timeouts >= 1.0, "{metrics}");

    cluster
        .broker_round_trip_time(1, Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    accepts_again(&bridge).await;
    bridge.stop().await;
}

async fn accepts_again(bridge: &Bridge) {
    let addr = bridge.addr;
    wait_until("a webhook to be accepted", async || {
        matches!(
            request(addr, "POST", "/webhooks", &[], bytes::Bytes::from(ticket(3))).await,
            Ok(r) if r.status == 200
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refusal_is_503_and_counted_by_error_kind() {
    let cluster = mock_cluster();
    let bridge = bridge_for(&cluster, "2s").await;
    bridge.wait_ready().await;
    // Exported before any error, so that a panel or an alert on it has a
    // series to see.
    let metrics = bridge.metrics().await;
    for error in ["MessageSizeTooLarge", "MessageTimedOut"] {
        let series = format!(r#"apizee_bridge_kafka_delivery_errors_total{{error="{error}"}}"#);
        assert_eq!(metric_value(&metrics, &series), 0.0, "{series}");
    }
    // A non-retriable answer to the produce request: librdkafka reports it
    // at once instead of retrying until the timeout.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let reply = bridge.post(&ticket(1)).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    let metrics = bridge.metrics().await;
    for line in [
        r#"apizee_bridge_kafka_delivery_errors_total{error="MessageSizeTooLarge"} 1"#,
        r#"apizee_bridge_publishes_total{outcome="refused",sink="kafka"} 1"#,
        "apizee_bridge_kafka_queue_messages ",
        "apizee_bridge_kafka_in_flight_messages 0",
        r#"apizee_bridge_broker_connected{sink="kafka"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    // The next publish goes through: the error was for that request only.
    assert_eq!(bridge.post(&ticket(2)).await.status, 200);
    bridge.stop().await;
}

/// librdkafka's idempotent producer reports a message delivered without
/// the broker confirming it ("implicitly acked", with no offset) when the
/// request that carried it failed with a retriable error and a later
/// request on the same partition, already in flight, succeeded: it takes
/// that as proof that the first was written. A broker that holds no state
/// for the producer on that partition (its first writes there: a replica
/// just started, a topic just created) accepts the later request whatever
/// its sequence, so the first was never written. The mock, like such a
/// broker, checks no sequence. Seen in tests/deploy/topology.rs: the first
/// webhooks after start-up, answered 200, missing from the topic, their
/// delivery reports at offset -1001. A webhook is answered 200 only with
/// an offset from the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_the_broker_never_confirmed_is_not_answered_200() {
    let cluster = MockCluster::new(1).unwrap_or_else(|e| panic!("mock cluster: {e}"));
    // One partition: both webhooks below go to it.
    cluster
        .create_topic(TOPIC, 1, 1)
        .unwrap_or_else(|e| panic!("create {TOPIC}: {e}"));
    let bootstrap = cluster.bootstrap_servers();
    let bridge = bridge_for(&cluster, "5s").await;
    bridge.wait_ready().await;
    // The producer id and the topic's metadata first, so that the next
    // webhook's request leaves at once.
    accepts_again(&bridge).await;

    // Answers come late, so a second request is sent while the first is in
    // flight; the first fails with an error librdkafka retries.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(500))
        .unwrap_or_else(|e| panic!("{e}"));
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS],
    );
    let addr = bridge.addr;
    let post = |id: u32| {
        tokio::spawn(async move {
            let body = bytes::Bytes::from(ticket(id));
            request(addr, "POST", "/webhooks", &[], body)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        })
    };
    let first = post(10);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = post(11);
    let first = first.await.unwrap_or_else(|e| panic!("{e}"));
    let second = second.await.unwrap_or_else(|e| panic!("{e}"));
    cluster
        .broker_round_trip_time(1, Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));

    let messages = tokio::task::spawn_blocking(move || read_all(&bootstrap, TOPIC))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stored: Vec<&str> = messages.iter().map(key).collect();
    for (id, reply) in [("10", &first), ("11", &second)] {
        if reply.status == 200 {
            assert!(
                stored.contains(&id),
                "objectId {id} answered 200 but not in {TOPIC}, which holds {stored:?}"
            );
        }
    }
    // Not vacuous: the first request did fail, and its webhook was not
    // stored; it gets what a sender retries.
    assert!(!stored.contains(&"10"), "{stored:?}");
    assert_eq!(first.status, 503, "{}", first.text());
    assert_eq!(second.status, 200, "{}", second.text());
    bridge.stop().await;
}
