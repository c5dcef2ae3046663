//! Minimal Kafka pipeline for `benches/load.sh`: the HTTP ceiling, plus a
//! produce of each body with rdkafka's `FutureProducer` and a wait for its
//! delivery report before the 200. No validation, no headers, no metrics,
//! no readiness probe. With `--headers`, it adds the bridge's headers: not
//! the minimal pipeline any more, a variant for telling costs apart.
//!
//! Same topics and keys as the bridge (`apizee.<object>.<event>`, keyed by
//! objectId, read from the parsed body), so records spread over the same
//! partitions: at start-up it creates the 15 topics with `--partitions`
//! (3, the bridge's `--kafka-partitions` default) and replication factor 1
//! (the single Apache Kafka node of `benches/load.sh`, whose auto-creation
//! is off), then listens. Producer properties are the bridge's defaults,
//! taken from `apizee_bridge::sink::kafka::default_properties` so they
//! cannot drift apart, since each changes acked throughput (`acks=all`,
//! `enable.idempotence=true`, linger, compression), with the bridge's
//! default `--publish-timeout` (5 s) as `message.timeout.ms`. Like the
//! bridge, it uses `send_result`, which fails at once on a full local queue
//! instead of waiting.
//!
//! `--producers N` (1 by default) is the experiment of issue 17 on the
//! idempotent producer's window (measured then on tansu, see
//! docs/performance.md): N idempotent producers, each webhook sent through
//! the one its objectId hashes to, so that each keeps the 5 requests in
//! flight that idempotence allows, on a connection of its own.
//!
//! `cargo run --release --example baseline_kafka -- --listen 127.0.0.1:8083 \
//!    --brokers 127.0.0.1:9092`

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use apizee_bridge::envelope::{Event, ObjectKind};
use apizee_bridge::sink::kafka::config::KafkaSettings;
use apizee_bridge::sink::kafka::default_properties;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[path = "support/baseline.rs"]
mod baseline;

#[tokio::main]
async fn main() {
    let listen = baseline::required_flag("--listen")
        .parse()
        .unwrap_or_else(|e| panic!("--listen: {e}"));
    let brokers = baseline::required_flag("--brokers");
    let partitions = baseline::flag("--partitions")
        .map(|p| p.parse().unwrap_or_else(|e| panic!("--partitions: {e}")))
        .unwrap_or(3);

    create_topics(&brokers, partitions).await;
    let mut config = ClientConfig::new();
    for (key, value) in default_properties(&KafkaSettings {
        brokers: brokers.clone(),
        probe_topic: None,
        options: Vec::new(),
        create_topics: None,
        publish_timeout: Duration::from_secs(5),
    }) {
        config.set(key, value);
    }
    let with_headers = baseline::switch("--headers");
    let lanes: usize = baseline::flag("--producers")
        .map(|p| p.parse().unwrap_or_else(|e| panic!("--producers: {e}")))
        .unwrap_or(1);
    let producers: Arc<[FutureProducer]> = Arc::from(
        (0..lanes.max(1))
            .map(|_| {
                config
                    .create()
                    .unwrap_or_else(|e| panic!("cannot create the producer: {e}"))
            })
            .collect::<Vec<_>>(),
    );

    baseline::serve(listen, move |body, value| {
        let producers = producers.clone();
        async move {
            let topic = baseline::topic(&value);
            let key = baseline::key(&value);
            // One objectId always goes through one producer: its events
            // keep their order, and idempotence holds per producer.
            let mut hasher = DefaultHasher::new();
            key.hash(&mut hasher);
            let producer = &producers[(hasher.finish() % producers.len() as u64) as usize];
            let headers = with_headers.then(|| {
                baseline::contract_headers(&body, &value).iter().fold(
                    OwnedHeaders::new(),
                    |all, (name, value)| {
                        all.insert(Header {
                            key: name,
                            value: Some(value.as_bytes()),
                        })
                    },
                )
            });
            let mut record = FutureRecord::to(&topic).key(&key).payload(body.as_ref());
            if let Some(headers) = headers {
                record = record.headers(headers);
            }
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| e.to_string())?;
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e.to_string()),
                Err(_) => Err("delivery report dropped".to_owned()),
            }
        }
    })
    .await;
}

/// Creates the bridge's 15 topics, retrying until the broker answers.
async fn create_topics(brokers: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap_or_else(|e| panic!("cannot create the admin client: {e}"));
    // The object types and events as the bridge declares them.
    let names: Vec<String> = ObjectKind::ALL
        .iter()
        .flat_map(|object| {
            Event::ALL
                .iter()
                .map(move |event| format!("apizee.{}.{}", object.as_str(), event.as_str()))
        })
        .collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for _ in 0..50 {
        match admin.create_topics(&topics, &options).await {
            Ok(results)
                if results.iter().all(|r| {
                    matches!(r, Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)))
                }) =>
            {
                return;
            }
            Ok(results) => eprintln!("creating topics: {results:?}"),
            Err(e) => eprintln!("creating topics: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot create the topics on {brokers}");
}
