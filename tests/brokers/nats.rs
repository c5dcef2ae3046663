//! End-to-end tests against a real nats-server started by the test: what a
//! consumer receives (subject, bytes, headers), JetStream deduplication, and
//! the promise the bridge makes to the sender: a 503 means the event is not
//! on the broker, now or later.
//!
//! Every case runs twice, as `current::<case>` against the pinned current
//! nats-server (2.15) and as `oldest::<case>` against Debian's 2.9.10, the
//! oldest supported: what the bridge asks of the server (the stream it
//! creates, `Nats-Msg-Id` de-duplication, headers, the stream checks after
//! a publish nobody answered) must hold on both.
//!
//! Each test owns its server on its own port, so they run in parallel.

use std::time::Duration;

use crate::support::nats::{next_message, subscribe};
use crate::support::*;
use async_nats::Message;
use async_nats::jetstream::{self, message::StreamMessage, stream};
use bytes::Bytes;
use serde_json::json;

on_both_releases!(
    NatsRelease:
    core_nats_delivers_the_body_byte_for_byte_with_headers,
    jetstream_creates_the_stream_and_stores_a_retried_webhook_once,
    jetstream_without_a_stream_for_the_subject_answers_503,
    core_nats_refused_while_down_is_never_published_later,
    jetstream_refused_while_down_is_never_stored_later,
    becomes_ready_when_the_server_comes_up,
    rejected_requests_publish_nothing,
    nats_user_and_password,
    nats_token,
    jetstream_stream_deleted_under_the_bridge_is_created_again,
    jetstream_unanswered_publishes_leave_the_stream_alone,
);

/// An event that none of the other bodies in a test equals, posted to prove
/// that nothing was published before it.
const MARKER: &str =
    r#"{"event":"create","time":1700000000,"object":"smsmessage","objectId":"marker","props":{}}"#;

fn nats_args(nats: &NatsServer) -> Vec<String> {
    vec![
        "--sink".into(),
        "nats".into(),
        "--nats-url".into(),
        nats.url(),
    ]
}

async fn start_bridge(nats: &NatsServer, extra: &[&str]) -> Bridge {
    let mut args = nats_args(nats);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Bridge::start(&args).await
}

fn accepted_id(reply: &Reply, topic: &str) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["topic"], topic, "{body}");
    body["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("no id in {body}"))
        .to_owned()
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

fn assert_broker_unavailable(reply: &Reply) {
    assert_eq!(reply.status, 503, "{}", reply.text());
    let retry_after = reply.header("retry-after").unwrap_or_default();
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After {retry_after:?}"
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["error"], "broker_unavailable", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    let mut stream = js
        .get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"));
    stream
        .info()
        .await
        .unwrap_or_else(|e| panic!("stream {name} info: {e}"))
        .state
        .messages
}

async fn stored_message(js: &jetstream::Context, name: &str, sequence: u64) -> StreamMessage {
    js.get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"))
        .get_raw_message(sequence)
        .await
        .unwrap_or_else(|e| panic!("stream {name} message {sequence}: {e}"))
}

async fn core_nats_delivers_the_body_byte_for_byte_with_headers(release: NatsRelease) {
    let nats = NatsServer::start_release(release, false).await;
    let bridge = start_bridge(&nats, &[]).await;
    bridge.wait_ready().await;
    let consumer = nats.client().await;
    let mut subscriber = subscribe(&consumer, "apizee.>").await;

    let cases = [
        (
            SPEC_TICKET,
            "apizee.ticket.update",
            "ticket",
            "100",
            "1575976413",
        ),
        (
            SPEC_CONVERSATION,
            "apizee.conversation.update",
            "conversation",
            "734e3a7b-eb17-4d3f-901d-bcff178b",
            "1632144306",
        ),
    ];
    for (body, subject, object, object_id, time) in cases {
        let reply = bridge.post(body).await;
        let id = accepted_id(&reply, subject);
        let message = next_message(&mut subscriber).await;
        assert_eq!(message.subject.as_str(), subject);
        assert_eq!(message.payload, Bytes::from_static(body.as_bytes()));
        assert_eq!(header(&message, "content-type"), Some("application/json"));
        assert_eq!(header(&message, "apizee-event"), Some("update"));
        assert_eq!(header(&message, "apizee-object"), Some(object));
        assert_eq!(header(&message, "apizee-object-id"), Some(object_id));
        assert_eq!(header(&message, "apizee-time"), Some(time));
        assert_eq!(header(&message, "apizee-event-id"), Some(id.as_str()));
        let received_at = header(&message, "apizee-received-at").unwrap_or_default();
        assert!(
            humantime::parse_rfc3339(received_at).is_ok(),
            "apizee-received-at {received_at:?} is not RFC 3339"
        );
    }
    bridge.stop().await;
}

async fn jetstream_creates_the_stream_and_stores_a_retried_webhook_once(release: NatsRelease) {
    let nats = NatsServer::start_release(release, true).await;
    let bridge = start_bridge(&nats, &["--nats-jetstream", "--nats-stream", "WEBHOOKS"]).await;
    bridge.wait_ready().await;
    let js = jetstream::new(nats.client().await);

    let info = js
        .get_stream("WEBHOOKS")
        .await
        .unwrap_or_else(|e| panic!("the bridge did not create the stream: {e}"))
        .get_info()
        .await
        .unwrap_or_else(|e| panic!("stream info: {e}"));
    assert_eq!(info.config.subjects, vec!["apizee.>".to_owned()]);
    assert_eq!(info.state.messages, 0);
    // The server's defaults, which the bridge relies on: a file store that
    // survives a restart, one replica, and the 2-minute duplicate window
    // that makes a retried webhook one message.
    assert_eq!(info.config.storage, stream::StorageType::File);
    assert_eq!(info.config.retention, stream::RetentionPolicy::Limits);
    assert_eq!(info.config.num_replicas, 1);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));

    let first = accepted_id(&bridge.post(SPEC_TICKET).await, "apizee.ticket.update");
    let second = accepted_id(&bridge.post(SPEC_TICKET).await, "apizee.ticket.update");
    assert_eq!(first, second, "a retried webhook must keep its id");
    assert_eq!(stream_messages(&js, "WEBHOOKS").await, 1);

    let stored = stored_message(&js, "WEBHOOKS", 1).await;
    assert_eq!(stored.subject.as_str(), "apizee.ticket.update");
    assert_eq!(stored.payload, Bytes::from_static(SPEC_TICKET.as_bytes()));
    let stored_header = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(stored_header("Nats-Msg-Id"), Some(first.clone()));
    assert_eq!(stored_header("apizee-event-id"), Some(first.clone()));
    assert_eq!(stored_header("apizee-object-id").as_deref(), Some("100"));

    let other = accepted_id(
        &bridge.post(SPEC_CONVERSATION).await,
        "apizee.conversation.update",
    );
    assert_ne!(other, first);
    assert_eq!(stream_messages(&js, "WEBHOOKS").await, 2);
    let stored = stored_message(&js, "WEBHOOKS", 2).await;
    assert_eq!(
        stored.payload,
        Bytes::from_static(SPEC_CONVERSATION.as_bytes())
    );
    bridge.stop().await;
}

async fn jetstream_without_a_stream_for_the_subject_answers_503(release: NatsRelease) {
    let nats = NatsServer::start_release(release, true).await;
    let bridge = start_bridge(&nats, &["--nats-jetstream"]).await;
    bridge.wait_ready().await;
    let reply = bridge.post(SPEC_TICKET).await;
    assert_broker_unavailable(&reply);
    assert!(
        bridge
            .metrics()
            .await
            .contains(r#"apizee_bridge_publishes_total{outcome="refused",sink="nats"} 1"#),
        "a missing stream should count as refused"
    );
    bridge.stop().await;
}

/// Kills the server under a ready bridge and checks what the bridge reports
/// while its broker is down.
async fn kill_and_assert_down(nats: &mut NatsServer, bridge: &Bridge) {
    bridge.wait_ready().await;
    let metrics = bridge.metrics().await;
    assert!(
        metrics.contains(r#"apizee_bridge_broker_connected{sink="nats"} 1"#),
        "{metrics}"
    );
    nats.kill();
    bridge.wait_not_ready().await;
    let reply = bridge.post(SPEC_TICKET).await;
    assert_broker_unavailable(&reply);
    let metrics = bridge.metrics().await;
    assert!(
        metrics.contains(r#"apizee_bridge_publishes_total{outcome="not_connected",sink="nats"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"apizee_bridge_broker_connected{sink="nats"} 0"#),
        "{metrics}"
    );
}

async fn core_nats_refused_while_down_is_never_published_later(release: NatsRelease) {
    // Core NATS keeps nothing, so a subscriber that can only attach after
    // the restart would miss an event the client flushed on reconnect. A
    // stream capturing the bridge's subjects is the witness: anything the
    // bridge sends after reconnecting is stored, in order, before the marker.
    // `apizee.*.*` leaves out the subscriber's two-token probe.
    let mut nats = NatsServer::start_release(release, true).await;
    let js = jetstream::new(nats.client().await);
    js.create_stream(stream::Config {
        name: "WITNESS".into(),
        subjects: vec!["apizee.*.*".into()],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create the witness stream: {e}"));
    drop(js);

    let bridge = start_bridge(&nats, &[]).await;
    kill_and_assert_down(&mut nats, &bridge).await;

    nats.restart().await;
    bridge.wait_ready().await;
    let consumer = nats.client().await;
    let mut subscriber = subscribe(&consumer, "apizee.>").await;
    accepted_id(&bridge.post(MARKER).await, "apizee.smsmessage.create");
    let first = next_message(&mut subscriber).await;
    assert_eq!(first.payload, Bytes::from_static(MARKER.as_bytes()));

    let js = jetstream::new(consumer);
    assert_eq!(stream_messages(&js, "WITNESS").await, 1);
    let stored = stored_message(&js, "WITNESS", 1).await;
    assert_eq!(stored.payload, Bytes::from_static(MARKER.as_bytes()));
    bridge.stop().await;
}

async fn jetstream_refused_while_down_is_never_stored_later(release: NatsRelease) {
    let mut nats = NatsServer::start_release(release, true).await;
    let bridge = start_bridge(&nats, &["--nats-jetstream", "--nats-stream", "WEBHOOKS"]).await;
    kill_and_assert_down(&mut nats, &bridge).await;

    nats.restart().await;
    bridge.wait_ready().await;
    accepted_id(&bridge.post(MARKER).await, "apizee.smsmessage.create");
    let js = jetstream::new(nats.client().await);
    assert_eq!(stream_messages(&js, "WEBHOOKS").await, 1);
    let stored = stored_message(&js, "WEBHOOKS", 1).await;
    assert_eq!(stored.payload, Bytes::from_static(MARKER.as_bytes()));
    bridge.stop().await;
}

async fn becomes_ready_when_the_server_comes_up(release: NatsRelease) {
    let mut nats = NatsServer::reserve_release(release, false, ServerAuth::None);
    // A webhook waits this long for a broker that has never been reachable.
    let bridge = start_bridge(&nats, &["--startup-timeout", "100ms"]).await;
    let readyz = get(bridge.addr, "/readyz")
        .await
        .unwrap_or_else(|e| panic!("GET /readyz: {e}"));
    assert_eq!(readyz.status, 503, "{}", readyz.text());
    assert_broker_unavailable(&bridge.post(SPEC_TICKET).await);

    nats.start_now().await;
    bridge.wait_ready().await;
    let consumer = nats.client().await;
    let mut subscriber = subscribe(&consumer, "apizee.>").await;
    accepted_id(&bridge.post(MARKER).await, "apizee.smsmessage.create");
    let first = next_message(&mut subscriber).await;
    assert_eq!(first.payload, Bytes::from_static(MARKER.as_bytes()));
    bridge.stop().await;
}

async fn rejected_requests_publish_nothing(release: NatsRelease) {
    let nats = NatsServer::start_release(release, false).await;
    let bridge = start_bridge(&nats, &["--max-body-bytes", "1024"]).await;
    bridge.wait_ready().await;
    let consumer = nats.client().await;
    let mut subscriber = subscribe(&consumer, ">").await;

    let json = [("content-type", "application/json")];
    let rejected = [
        (400, &json[..], Bytes::from_static(b"{\"event\":")),
        (
            422,
            &json[..],
            Bytes::from(json!({"event": "update", "object": "ticket"}).to_string()),
        ),
        (
            415,
            &[("content-type", "text/plain")][..],
            Bytes::from_static(SPEC_TICKET.as_bytes()),
        ),
        (
            413,
            &json[..],
            Bytes::from(
                json!({
                    "event": "update", "time": 1, "object": "ticket", "objectId": 1,
                    "props": {"padding": "x".repeat(2048)}
                })
                .to_string(),
            ),
        ),
    ];
    for (status, headers, body) in rejected {
        let reply = bridge.request("POST", "/webhooks", headers, body).await;
        assert_eq!(reply.status, status, "{}", reply.text());
    }

    accepted_id(&bridge.post(MARKER).await, "apizee.smsmessage.create");
    let first = next_message(&mut subscriber).await;
    assert_eq!(first.subject.as_str(), "apizee.smsmessage.create");
    assert_eq!(first.payload, Bytes::from_static(MARKER.as_bytes()));
    bridge.stop().await;
}

/// The bridge connects with the credentials it is given and publishes; with
/// wrong ones it stays not ready and answers 503.
async fn check_auth(release: NatsRelease, auth: ServerAuth, good: &[&str], bad: &[&str]) {
    let mut nats = NatsServer::reserve_release(release, false, auth);
    nats.start_now().await;

    let bad: Vec<&str> = bad
        .iter()
        .copied()
        .chain(["--startup-timeout", "100ms"])
        .collect();
    let refused = start_bridge(&nats, &bad).await;
    let readyz = get(refused.addr, "/readyz")
        .await
        .unwrap_or_else(|e| panic!("GET /readyz: {e}"));
    assert_eq!(readyz.status, 503, "wrong credentials: {}", readyz.text());
    assert_broker_unavailable(&refused.post(SPEC_TICKET).await);
    refused.stop().await;

    let bridge = start_bridge(&nats, good).await;
    bridge.wait_ready().await;
    let consumer = nats.client().await;
    let mut subscriber = subscribe(&consumer, "apizee.>").await;
    let id = accepted_id(&bridge.post(SPEC_TICKET).await, "apizee.ticket.update");
    let message = next_message(&mut subscriber).await;
    assert_eq!(message.payload, Bytes::from_static(SPEC_TICKET.as_bytes()));
    assert_eq!(header(&message, "apizee-event-id"), Some(id.as_str()));
    bridge.stop().await;
}

async fn nats_user_and_password(release: NatsRelease) {
    check_auth(
        release,
        ServerAuth::user_password("u", "p"),
        &["--nats-user", "u", "--nats-password", "p"],
        &["--nats-user", "u", "--nats-password", "wrong"],
    )
    .await;
}

async fn nats_token(release: NatsRelease) {
    check_auth(
        release,
        ServerAuth::Token("tok".into()),
        &["--nats-token", "tok"],
        &["--nats-token", "wrong"],
    )
    .await;
}

async fn jetstream_stream_deleted_under_the_bridge_is_created_again(release: NatsRelease) {
    let nats = NatsServer::start_release(release, true).await;
    let bridge = start_bridge(&nats, &["--nats-jetstream", "--nats-stream", "WEBHOOKS"]).await;
    bridge.wait_ready().await;
    let js = jetstream::new(nats.client().await);
    js.delete_stream("WEBHOOKS")
        .await
        .unwrap_or_else(|e| panic!("delete the stream: {e}"));

    // The first publish finds the stream gone: refused, never stored.
    assert_broker_unavailable(&bridge.post(SPEC_TICKET).await);
    bridge.wait_ready().await;
    accepted_id(&bridge.post(MARKER).await, "apizee.smsmessage.create");
    assert_eq!(stream_messages(&js, "WEBHOOKS").await, 1);
    let stored = stored_message(&js, "WEBHOOKS", 1).await;
    assert_eq!(stored.payload, Bytes::from_static(MARKER.as_bytes()));
    bridge.stop().await;
}

/// A frozen server (SIGSTOP) lets publishes time out: the bridge answers
/// 503, reports not ready once its check of the stream gets no answer
/// either, and is ready again when the server runs again, with the same
/// stream (not one created anew) and nothing stored from the 503s.
async fn jetstream_unanswered_publishes_leave_the_stream_alone(release: NatsRelease) {
    let nats = NatsServer::start_release(release, true).await;
    let bridge = start_bridge(
        &nats,
        &[
            "--nats-jetstream",
            "--nats-stream",
            "WEBHOOKS",
            "--publish-timeout",
            "300ms",
        ],
    )
    .await;
    bridge.wait_ready().await;
    let js = jetstream::new(nats.client().await);
    let created = js
        .get_stream("WEBHOOKS")
        .await
        .unwrap_or_else(|e| panic!("stream: {e}"))
        .cached_info()
        .created;

    let pid = nats
        .pid()
        .unwrap_or_else(|| panic!("nats-server is not running"));
    let frozen = Frozen::freeze(pid);
    let reply = bridge.post(SPEC_TICKET).await;
    assert_broker_unavailable(&reply);
    bridge.wait_not_ready().await;
    frozen.thaw();
    bridge.wait_ready().await;

    accepted_id(&bridge.post(MARKER).await, "apizee.smsmessage.create");
    let info = js
        .get_stream("WEBHOOKS")
        .await
        .unwrap_or_else(|e| panic!("stream: {e}"))
        .cached_info()
        .clone();
    assert_eq!(info.created, created, "the stream was created again");
    // The timed-out publish may have reached the server before it froze,
    // so it may be stored; the marker must be.
    let last = stored_message(&js, "WEBHOOKS", info.state.last_sequence).await;
    assert_eq!(last.payload, Bytes::from_static(MARKER.as_bytes()));
    bridge.stop().await;
}
