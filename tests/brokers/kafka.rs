//! End-to-end tests against Apache Kafka, each run on the newest release
//! (`current::`) and on the oldest the bridge supports (`oldest::`): the
//! broker of that release this test binary shares, each test with topics of
//! its own (`--topic-prefix`). Messages are read back with a separate
//! consumer, up to the high watermarks.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::kafka::{
    KafkaRelease, header, key, partition_count, read_topic, shared_release,
};
use crate::support::*;
use bytes::Bytes;
use rdkafka::Message as _;

on_both_releases!(
    KafkaRelease:
    spec_samples_arrive_byte_for_byte_with_key_and_headers,
    one_object_id_always_maps_to_one_partition,
    rejected_requests_publish_nothing,
);

/// A bridge publishing to `bootstrap`, its topics named `{prefix}.{object}.{event}`
/// and created at start-up.
async fn start_bridge(bootstrap: &str, prefix: &str, extra: &[&str]) -> Bridge {
    let mut args = vec![
        "--sink",
        "kafka",
        "--kafka-brokers",
        bootstrap,
        "--topic-prefix",
        prefix,
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

async fn read(bootstrap: &str, topic: &str, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, count))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn spec_samples_arrive_byte_for_byte_with_key_and_headers(release: KafkaRelease) {
    let (bootstrap, prefix) = (&shared_release(release).await.bootstrap(), "samples");
    let bridge = start_bridge(bootstrap, prefix, &[]).await;

    let (probe, ticket, conversation_event) = (
        bootstrap.to_owned(),
        format!("{prefix}.ticket.update"),
        format!("{prefix}.conversationevent.delete"),
    );
    let created = tokio::task::spawn_blocking(move || {
        [ticket, conversation_event].map(|topic| partition_count(&probe, &topic))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created, [3, 3], "--kafka-create-topics made every topic");

    for (sample, topic, object_id, time) in [
        (SPEC_TICKET, "ticket.update", "100", "1575976413"),
        (
            SPEC_CONVERSATION,
            "conversation.update",
            "734e3a7b-eb17-4d3f-901d-bcff178b",
            "1632144306",
        ),
    ] {
        let topic = format!("{prefix}.{topic}");
        let topic = topic.as_str();
        let reply = bridge.post(sample).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["topic"], topic);
        let id = body["id"].as_str().unwrap_or_default().to_owned();

        let messages = read(bootstrap, topic, 1).await;
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
    for name in [
        "apizee_bridge_kafka_delivery_errors_total",
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

async fn one_object_id_always_maps_to_one_partition(release: KafkaRelease) {
    let bootstrap = shared_release(release).await.bootstrap();
    let bridge = start_bridge(&bootstrap, "partitions", &[]).await;

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
    let messages = read(&bootstrap, "partitions.ticket.update", sent).await;
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

async fn rejected_requests_publish_nothing(release: KafkaRelease) {
    let bootstrap = shared_release(release).await.bootstrap();
    let bridge = start_bridge(&bootstrap, "rejected", &[]).await;
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
    let messages = read(&bootstrap, "rejected.ticket.update", 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].payload(), Some(marker.as_bytes()));
    bridge.stop().await;
}
