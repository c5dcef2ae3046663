//! Refused traffic costs nothing, against real brokers: dead letters reach
//! a topic the bridge created (and a 401 or 413 never becomes one), a 4xx
//! never waits for its dead letter (even with the broker frozen or the
//! topic missing), refused requests give their in-flight slot back at once,
//! unsigned slow bodies cannot take the slots signed webhooks need, and
//! HTTP/1.1 requests without exactly one Host header are refused.

use std::net::SocketAddr;

use crate::support::kafka::{create_topics, header, partition_count, read_all, read_topic, shared};
use crate::support::*;
use async_nats::jetstream;
use futures_util::future::join_all;
use rdkafka::Message as _;
use ring::hmac;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// JSON, but no valid envelope: 422 and a dead letter.
const INVALID: &str = r#"{"event":"upsert","time":1,"object":"ticket","objectId":5,"props":{}}"#;

/// The `n`th of distinct invalid bodies: JetStream stores one message per
/// event id, and the id is derived from the body.
fn invalid(n: usize) -> String {
    INVALID.replace(r#""time":1"#, &format!(r#""time":{n}"#))
}

/// The `n`th of distinct valid ticket webhooks.
fn ticket(n: usize) -> String {
    SPEC_TICKET.replace("1575976413", &(1575976413 + n).to_string())
}

/// Longer than any test runs: a publish that waits on the broker never
/// ends during a test, so an answer that came proves it did not wait.
const NEVER: &str = "600s";

fn assert_refused(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

async fn metric(bridge: &Bridge, series: &str) -> f64 {
    metric_value(&bridge.metrics().await, series)
}

async fn wait_for_metric(bridge: &Bridge, series: &str, value: f64) {
    wait_until(&format!("{series} to be {value}"), async || {
        metric(bridge, series).await == value
    })
    .await;
}

const DEAD_LETTERS_OK: &str = r#"apizee_bridge_dead_letters_total{outcome="ok"}"#;
const DEAD_LETTERS_SHED: &str = r#"apizee_bridge_dead_letters_total{outcome="shed"}"#;
const DEAD_LETTERS_WAITING: &str = "apizee_bridge_dead_letter_queue_messages";

/// A bridge on the broker this binary shares, its topics named
/// `{prefix}.{object}.{event}`: each test keeps to a prefix of its own.
fn kafka_args<'a>(broker: &'a str, prefix: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--sink",
        "kafka",
        "--kafka-brokers",
        broker,
        "--topic-prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_create_topics_also_creates_the_dead_letter_topic() {
    let bootstrap = shared().await.bootstrap();
    let bridge = Bridge::start(&kafka_args(
        &bootstrap,
        "created",
        &[
            "--kafka-create-topics",
            "--kafka-partitions",
            "2",
            "--kafka-replication-factor",
            "1",
            "--dead-letter-topic",
            "rejected-webhooks",
        ],
    ))
    .await;
    bridge.wait_ready().await;

    assert_refused(&bridge.post(INVALID).await, 422, "invalid_envelope");
    wait_for_metric(&bridge, DEAD_LETTERS_OK, 1.0).await;
    let topic_partitions = {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || partition_count(&bootstrap, "rejected-webhooks"))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(topic_partitions, 2, "created with the template's settings");
    let dead = tokio::task::spawn_blocking(move || read_all(&bootstrap, "rejected-webhooks"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload(), Some(INVALID.as_bytes()));
    assert_eq!(
        header(&dead[0], "apizee-rejection-reason"),
        Some("invalid_envelope")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_that_exists_is_used_as_it_is() {
    let bootstrap = shared().await.bootstrap();
    create_topics(&bootstrap, &["existing.dead-letter"], 1, 1).await;
    let bridge = Bridge::start(&kafka_args(
        &bootstrap,
        "existing",
        &[
            "--kafka-create-topics",
            "--kafka-partitions",
            "3",
            "--kafka-replication-factor",
            "1",
            "--dead-letter-topic",
            "existing.dead-letter",
            "--dead-letter-malformed",
        ],
    ))
    .await;
    bridge.wait_ready().await;

    assert_refused(&bridge.post("{not json").await, 400, "malformed_json");
    let dead = {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, "existing.dead-letter", 1))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload(), Some(&b"{not json"[..]));
    let partitions =
        tokio::task::spawn_blocking(move || partition_count(&bootstrap, "existing.dead-letter"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(partitions, 1, "the existing topic was left as it was");
}

/// The issue's case: a cluster that never creates topics on demand, the
/// template's topics made by hand and the dead-letter topic forgotten, so
/// every dead letter waits out its publish. Refused requests are still
/// answered at once, give their slot back, and cannot keep a valid webhook
/// out; past the queue, dead letters are shed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_stuck_on_a_missing_topic_cost_the_senders_nothing() {
    let bootstrap = shared().await.bootstrap();
    let template =
        apizee_bridge::route::TopicTemplate::parse(apizee_bridge::route::DEFAULT_TEMPLATE, "stuck")
            .unwrap_or_else(|e| panic!("{e}"));
    let topics = template.all_topics().unwrap_or_default();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    create_topics(&bootstrap, &topics, 1, 1).await;
    let bridge = Bridge::start(&kafka_args(
        &bootstrap,
        "stuck",
        &[
            "--dead-letter-topic",
            "stuck.forgotten",
            "--max-in-flight",
            "4",
            "--dead-letter-queue",
            "8",
            "--publish-timeout",
            NEVER,
        ],
    ))
    .await;
    bridge.wait_ready().await;

    // Twice --max-in-flight at once (a burst the queue holds): each is
    // answered, none with 429.
    let replies = join_all((0..8).map(|_| bridge.post(INVALID))).await;
    for reply in &replies {
        assert_refused(reply, 422, "invalid_envelope");
    }
    // Their dead letters are all still waiting on the broker ...
    assert_eq!(metric(&bridge, DEAD_LETTERS_WAITING).await, 8.0);
    // ... and a valid webhook gets a slot and its 200.
    let reply = bridge.post(SPEC_TICKET).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // More than the worker's publishes and the queue hold: the newest are
    // shed, and still answered at once.
    for _ in 0..24 {
        assert_refused(&bridge.post(INVALID).await, 422, "invalid_envelope");
    }
    let shed = metric(&bridge, DEAD_LETTERS_SHED).await;
    assert!(shed >= 1.0, "nothing shed");
    assert_eq!(metric(&bridge, DEAD_LETTERS_WAITING).await, 32.0 - shed);
    assert_eq!(metric(&bridge, DEAD_LETTERS_OK).await, 0.0);
    assert_eq!(
        metric(
            &bridge,
            r#"apizee_bridge_in_flight_refusals_total{budget="max_in_flight"}"#
        )
        .await,
        0.0
    );
}

async fn start_nats_bridge(nats: &NatsServer, extra: &[&str]) -> Bridge {
    let url = nats.url();
    let mut args = vec!["--sink", "nats", "--nats-url", &url, "--nats-jetstream"];
    args.extend_from_slice(extra);
    let bridge = Bridge::start(&args).await;
    bridge.wait_ready().await;
    bridge
}

async fn stream_subjects(nats: &NatsServer, name: &str) -> Vec<String> {
    let js = jetstream::new(nats.client().await);
    let mut stream = js
        .get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"));
    let info = stream
        .info()
        .await
        .unwrap_or_else(|e| panic!("stream {name} info: {e}"));
    info.config.subjects.clone()
}

async fn stored_on(nats: &NatsServer, stream: &str, subject: &str) -> u64 {
    let js = jetstream::new(nats.client().await);
    let stream = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    let info = stream
        .info_with_subjects(subject)
        .await
        .unwrap_or_else(|e| panic!("stream info: {e}"));
    use futures_util::TryStreamExt;
    let counts: Vec<(String, usize)> = info
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("subjects: {e}"));
    counts
        .into_iter()
        .find(|(name, _)| name == subject)
        .map_or(0, |(_, count)| count as u64)
}

/// A frozen nats-server (SIGSTOP: sockets open, nothing answered) holds
/// every dead letter, yet each 422 comes back; the dead letters reach the
/// stream, which also captures a dead-letter subject outside the prefix,
/// once the server runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_answered_while_the_broker_is_frozen() {
    let nats = NatsServer::start(true).await;
    let bridge = start_nats_bridge(
        &nats,
        &[
            "--nats-stream",
            "APIZEE",
            "--dead-letter-topic",
            "dead-letters.apizee",
            "--publish-timeout",
            NEVER,
        ],
    )
    .await;
    assert_eq!(
        stream_subjects(&nats, "APIZEE").await,
        ["apizee.>", "dead-letters.apizee"]
    );
    assert_eq!(bridge.post(SPEC_TICKET).await.status, 200);

    let pid = nats
        .pid()
        .unwrap_or_else(|| panic!("nats-server not running"));
    let frozen = Frozen::freeze(pid);
    for n in 0..3 {
        assert_refused(&bridge.post(&invalid(n)).await, 422, "invalid_envelope");
    }
    assert_eq!(metric(&bridge, DEAD_LETTERS_WAITING).await, 3.0);
    frozen.thaw();

    wait_for_metric(&bridge, DEAD_LETTERS_OK, 3.0).await;
    assert_eq!(metric(&bridge, DEAD_LETTERS_WAITING).await, 0.0);
    assert_eq!(
        stored_on(&nats, "APIZEE", "dead-letters.apizee").await,
        3,
        "every dead letter is in the stream"
    );
}

/// A stream made by hand that leaves the dead-letter subject out: dead
/// letters are refused by the server and counted, while readiness and the
/// webhooks carry on (the bridge does not take it for a missing stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_the_dead_letter_subject_loses_only_dead_letters() {
    let nats = NatsServer::start(true).await;
    jetstream::new(nats.client().await)
        .create_stream(jetstream::stream::Config {
            name: "APIZEE".into(),
            subjects: vec!["apizee.>".into()],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create stream: {e}"));
    let bridge = start_nats_bridge(
        &nats,
        &[
            "--nats-stream",
            "APIZEE",
            "--dead-letter-topic",
            "dead-letters.apizee",
        ],
    )
    .await;
    for n in 0..3 {
        assert_refused(&bridge.post(&invalid(n)).await, 422, "invalid_envelope");
    }
    wait_for_metric(
        &bridge,
        r#"apizee_bridge_dead_letters_total{outcome="refused"}"#,
        3.0,
    )
    .await;
    assert_eq!(
        stream_subjects(&nats, "APIZEE").await,
        ["apizee.>"],
        "left as its operator made it"
    );
    assert_eq!(
        get(bridge.addr, "/readyz")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .status,
        200
    );
    assert_eq!(bridge.post(SPEC_TICKET).await.status, 200);
}

/// Refusals that come before the envelope is read are never dead letters,
/// even with `--dead-letter-malformed`: a 401 (a missing token, checked
/// before the body; a wrong signature, checked once it is in) and a 413 (a
/// declared length over the limit; a chunked body past it), each with a body
/// that would be a dead letter if it were read as an envelope. Absence is
/// shown by what comes after them: the 422 sent last is the one dead letter
/// published, and once it is in the stream nothing else is queued or being
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_oversized_requests_are_never_dead_lettered() {
    const TOKEN: &str = "the-token";
    const KEY: &str = "the-key";
    const DEAD_LETTERS: &str = "apizee.dead-letter";
    let nats = NatsServer::start(true).await;
    let bridge = start_nats_bridge(
        &nats,
        &[
            "--nats-stream",
            "APIZEE",
            "--dead-letter-topic",
            DEAD_LETTERS,
            "--dead-letter-malformed",
            "--auth-header",
            "X-Apizee-Secret",
            "--auth-token",
            TOKEN,
            "--hmac-secret",
            KEY,
            "--max-body-bytes",
            "1024",
        ],
    )
    .await;
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let addr = bridge.addr;
        async move {
            let mut all = vec![("content-type", "application/json".to_owned())];
            all.extend(headers);
            let all: Vec<(&str, &str)> = all.iter().map(|(n, v)| (*n, v.as_str())).collect();
            request(addr, "POST", "/webhooks", &all, bytes::Bytes::from(body))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let token = || ("x-apizee-secret", TOKEN.to_owned());

    let unsigned = invalid(1);
    let reply = post(vec![("x-signature", signature(KEY, &unsigned))], unsigned).await;
    assert_refused(&reply, 401, "unauthorized");
    let wrongly_signed = invalid(2);
    let reply = post(
        vec![
            token(),
            ("x-signature", signature("not-the-key", &wrongly_signed)),
        ],
        wrongly_signed,
    )
    .await;
    assert_refused(&reply, 401, "unauthorized");
    let oversized = INVALID.replace("{}", &format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000)));
    let reply = post(
        vec![token(), ("x-signature", signature(KEY, &oversized))],
        oversized.clone(),
    )
    .await;
    assert_refused(&reply, 413, "payload_too_large");
    let chunks: String = oversized
        .as_bytes()
        .chunks(256)
        .map(|chunk| {
            format!(
                "{:x}\r\n{}\r\n",
                chunk.len(),
                String::from_utf8_lossy(chunk)
            )
        })
        .collect();
    let chunked = format!(
        "POST /webhooks HTTP/1.1\r\nhost: bridge\r\ncontent-type: application/json\r\n\
         x-apizee-secret: {TOKEN}\r\nx-signature: {}\r\ntransfer-encoding: chunked\r\n\
         connection: close\r\n\r\n{chunks}0\r\n\r\n",
        signature(KEY, &oversized)
    );
    let answer = raw_exchange(bridge.addr, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "chunked: {answer}");

    // The marker: read, authenticated, refused as an envelope.
    let marker = invalid(3);
    let reply = post(
        vec![token(), ("x-signature", signature(KEY, &marker))],
        marker.clone(),
    )
    .await;
    assert_refused(&reply, 422, "invalid_envelope");
    wait_until("the 422's dead letter to be published", async || {
        metric(&bridge, DEAD_LETTERS_OK).await >= 1.0
            && metric(&bridge, DEAD_LETTERS_WAITING).await == 0.0
    })
    .await;
    let js = jetstream::new(nats.client().await);
    let stored: Vec<bytes::Bytes> = stream_contents(&js, "APIZEE")
        .await
        .into_iter()
        .map(|(_, payload)| payload)
        .collect();
    assert_eq!(
        stored,
        [bytes::Bytes::from(marker)],
        "only the 422's dead letter is in the stream"
    );
}

fn signature(key: &str, body: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    let mac: String = hmac::sign(&key, body.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={mac}")
}

/// A connection that sends a webhook's headers and one byte of its body,
/// then nothing: the body is never complete, and unsigned anyway.
async fn trickle(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .write_all(
            b"POST /webhooks HTTP/1.1\r\nhost: bridge\r\ncontent-type: application/json\r\n\
              x-signature: sha256=00\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_slow_bodies_cannot_take_the_slots_of_signed_webhooks() {
    let nats = NatsServer::start(true).await;
    let bridge = start_nats_bridge(
        &nats,
        &[
            "--nats-stream",
            "APIZEE",
            "--hmac-secret",
            "the-key",
            "--max-in-flight",
            "4",
            "--max-unauthenticated-in-flight",
            "8",
            "--body-read-timeout",
            NEVER,
        ],
    )
    .await;
    let signed = |bridge: &Bridge, body: String| {
        let signature = signature("the-key", &body);
        let addr = bridge.addr;
        async move {
            request(
                addr,
                "POST",
                "/webhooks",
                &[
                    ("content-type", "application/json"),
                    ("x-signature", &signature),
                ],
                bytes::Bytes::from(body),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
        }
    };

    // More slow unsigned bodies than --max-in-flight.
    let mut slow = Vec::new();
    for _ in 0..6 {
        slow.push(trickle(bridge.addr).await);
    }
    wait_for_metric(&bridge, "apizee_bridge_requests_in_flight", 6.0).await;
    let reply = signed(&bridge, ticket(1)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Past their own budget, they are refused and counted by budget.
    for _ in 0..2 {
        slow.push(trickle(bridge.addr).await);
    }
    wait_for_metric(&bridge, "apizee_bridge_requests_in_flight", 8.0).await;
    let mut refused = trickle(bridge.addr).await;
    let mut answer = String::new();
    tokio::time::timeout(READY_DEADLINE, refused.read_to_string(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer within {READY_DEADLINE:?}; read so far: {answer}"))
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains(r#""error":"too_many_requests""#),
        "{answer}"
    );
    // The message names the budget that was spent (tests/edge/answers.rs:
    // the other one).
    let body: serde_json::Value = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or_else(|| panic!("no JSON body: {answer}"));
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("bodies are already being read before authentication"),
        "{message}"
    );
    assert_eq!(
        metric(
            &bridge,
            r#"apizee_bridge_in_flight_refusals_total{budget="max_unauthenticated_in_flight"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &bridge,
            r#"apizee_bridge_in_flight_refusals_total{budget="max_in_flight"}"#
        )
        .await,
        0.0
    );

    // Once they go away, their slots come back.
    drop(slow);
    wait_for_metric(&bridge, "apizee_bridge_requests_in_flight", 0.0).await;
    let reply = signed(&bridge, ticket(2)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(stored_on(&nats, "APIZEE", "apizee.ticket.update").await, 2);
}

/// Sends raw bytes on a fresh connection and reads the answer to its end.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .write_all(request)
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut answer = Vec::new();
    tokio::time::timeout(READY_DEADLINE, stream.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer within {READY_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("read: {e}"));
    String::from_utf8_lossy(&answer).into_owned()
}

fn raw_post(version: &str, hosts: &[&str], body: &str) -> Vec<u8> {
    let mut head = format!("POST /webhooks {version}\r\n");
    for host in hosts {
        head.push_str(&format!("host: {host}\r\n"));
    }
    format!(
        "{head}content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_requests_need_exactly_one_host_header() {
    let nats = NatsServer::start(true).await;
    let bridge = start_nats_bridge(&nats, &["--nats-stream", "APIZEE"]).await;

    for (hosts, found) in [(&[][..], "needs a Host header"), (&["a", "b"][..], "has 2")] {
        let answer = raw_exchange(bridge.addr, &raw_post("HTTP/1.1", hosts, SPEC_TICKET)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{hosts:?}: {answer}");
        assert!(
            answer.contains("content-type: application/json"),
            "{answer}"
        );
        assert!(answer.contains(r#""error":"invalid_host""#), "{answer}");
        assert!(answer.contains(found), "{answer}");
    }
    assert_eq!(
        metric(
            &bridge,
            r#"apizee_bridge_rejections_total{reason="invalid_host"}"#
        )
        .await,
        2.0
    );
    assert_eq!(stored_on(&nats, "APIZEE", "apizee.ticket.update").await, 0);

    // HTTP/1.0 may leave Host out, and one Host is what HTTP/1.1 wants.
    let answer = raw_exchange(bridge.addr, &raw_post("HTTP/1.0", &[], &ticket(1))).await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let answer = raw_exchange(bridge.addr, &raw_post("HTTP/1.1", &["bridge"], &ticket(2))).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(stored_on(&nats, "APIZEE", "apizee.ticket.update").await, 2);
}
