//! End-to-end tests against a real Kafka-protocol broker (tansu) started by
//! each test on a free loopback port. Messages are read back with a separate
//! consumer.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::kafka::{Tansu, header, key, partition_count, read_topic};
use crate::support::*;
use bytes::Bytes;
use rdkafka::Message as _;

async fn start_bridge(broker: &Tansu, extra: &[&str]) -> Bridge {
    let bootstrap = broker.bootstrap();
    let mut args = vec![
        "--sink",
        "kafka",
        "--kafka-brokers",
        &bootstrap,
        "--kafka-create-topics",
        "--kafka-partitions",
        "3",
        "--kafka-replication-factor",
        "1",
    ];
    args.extend_from_slice(extra);
    let bridge = Bridge::start(&args).await;
    bridge.wait_ready().await;
    bridge
}

async fn read(broker: &Tansu, topic: &str, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let bootstrap = broker.bootstrap();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, count))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_samples_arrive_byte_for_byte_with_key_and_headers() {
    let broker = Tansu::start().await;
    let bridge = start_bridge(&broker, &[]).await;

    let bootstrap = broker.bootstrap();
    let created = tokio::task::spawn_blocking(move || {
        ["apizee.ticket.update", "apizee.conversationevent.delete"]
            .map(|topic| partition_count(&bootstrap, topic))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created, [3, 3], "--kafka-create-topics made every topic");

    for (sample, topic, object_id, time) in [
        (SPEC_TICKET, "apizee.ticket.update", "100", "1575976413"),
        (
            SPEC_CONVERSATION,
            "apizee.conversation.update",
            "734e3a7b-eb17-4d3f-901d-bcff178b",
            "1632144306",
        ),
    ] {
        let reply = bridge.post(sample).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["topic"], topic);
        let id = body["id"].as_str().unwrap_or_default().to_owned();

        let messages = read(&broker, topic, 1).await;
        assert_eq!(messages.len(), 1, "exactly one message on {topic}");
        let message = &messages[0];
        assert_eq!(message.topic(), topic);
        assert_eq!(key(message), object_id);
        assert_eq!(
            message.payload().map(Bytes::copy_from_slice),
            Some(Bytes::from_static(sample.as_bytes()))
        );
        assert_eq!(header(message, "content-type"), Some("application/json"));
        assert_eq!(header(message, "apizee-event"), Some("update"));
        assert_eq!(header(message, "apizee-object-id"), Some(object_id));
        assert_eq!(header(message, "apizee-time"), Some(time));
        assert_eq!(header(message, "apizee-event-id"), Some(id.as_str()));
        assert!(
            header(message, "apizee-received-at")
                .is_some_and(|t| humantime::parse_rfc3339(t).is_ok())
        );
        assert_eq!(
            header(message, "apizee-object"),
            topic.split('.').nth(1),
            "{topic}"
        );
    }

    let metrics = bridge.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"apizee_bridge_publishes_total{outcome="ok",sink="kafka"}"#
        ),
        2.0
    );
    // kafka_delivery_errors_total has a series only once an error happens:
    // tests/brokers/kafka_mock.rs provokes one.
    for name in [
        "apizee_bridge_kafka_queue_messages",
        "apizee_bridge_kafka_in_flight_messages",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{metrics}"
        );
    }
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_object_id_always_maps_to_one_partition() {
    let broker = Tansu::start().await;
    let bridge = start_bridge(&broker, &[]).await;

    let ids = ["7", "42", "1001", "\"734e3a7b-eb17\"", "\"x-1\"", "\"x-2\""];
    let mut sent = 0;
    for round in 0..5 {
        for id in ids {
            let body = format!(
                r#"{{"event":"update","time":{round},"object":"ticket","objectId":{id},"props":{{"state":"open"}}}}"#
            );
            let reply = bridge.post(&body).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            sent += 1;
        }
    }
    let messages = read(&broker, "apizee.ticket.update", sent).await;
    assert_eq!(messages.len(), sent, "every event once");

    let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    let mut times: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for message in &messages {
        partitions
            .entry(key(message).to_owned())
            .or_default()
            .insert(message.partition());
        times.entry(key(message).to_owned()).or_default().push(
            header(message, "apizee-time")
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(partitions.len(), ids.len());
    for (key, set) in &partitions {
        assert_eq!(set.len(), 1, "key {key} spread over partitions {set:?}");
    }
    // One partition per key also means per-object order is kept.
    for (key, seen) in &times {
        assert_eq!(seen, &["0", "1", "2", "3", "4"], "order of key {key}");
    }
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_publish_nothing() {
    let broker = Tansu::start().await;
    let bridge = start_bridge(&broker, &[]).await;
    for (body, status) in [
        ("{", 400),
        (
            r#"{"event":"update","time":1,"object":"ticket","objectId":-1,"props":{}}"#,
            422,
        ),
    ] {
        assert_eq!(bridge.post(body).await.status, status);
    }
    let marker = r#"{"event":"update","time":2,"object":"ticket","objectId":5,"props":{}}"#;
    assert_eq!(bridge.post(marker).await.status, 200);
    let messages = read(&broker, "apizee.ticket.update", 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].payload(), Some(marker.as_bytes()));
    bridge.stop().await;
}
