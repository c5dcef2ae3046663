//! How a replica leaves and joins a load-balanced pool, in-process with a
//! memory sink: during `--drain-delay` it still serves but says it is
//! leaving (`/readyz` 503, `Connection: close`, idle keep-alive connections
//! closed), and a webhook that reaches a replica before its broker does
//! waits for it (up to `--startup-timeout`) instead of getting a 503.
//! `tests/deploy/topology.rs` runs the same through HAProxy with real brokers.

use std::sync::Arc;

use crate::support::*;
use apizee_bridge::sink::PublishError;
use apizee_bridge::sink::memory::{Behaviour, MemorySink};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;

fn ticket(n: u64) -> String {
    SPEC_TICKET.replace("1575976413", &(1575976413 + n).to_string())
}

async fn readyz(bridge: &Bridge) -> u16 {
    get(bridge.addr, "/readyz")
        .await
        .unwrap_or_else(|e| panic!("GET /readyz: {e}"))
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_drain_delay_the_bridge_serves_but_says_it_is_leaving() {
    let sink = Arc::new(MemorySink::new());
    let mut bridge = Bridge::with_sink(settings(&["--drain-delay", "30s"]), sink.clone()).await;

    // A pooled keep-alive connection, as a load balancer keeps one.
    let stream = TcpStream::connect(bridge.addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let (mut pooled, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("handshake: {e}"));
    let closed = tokio::spawn(connection);
    let request = http::Request::post("/webhooks")
        .header("host", "bridge")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(ticket(1))))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = pooled
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("POST on the pooled connection: {e}"));
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("connection").is_none());
    let _ = response.into_body().collect().await;

    bridge.begin_stop();
    wait_until("/readyz to answer 503", async || {
        readyz(&bridge).await == 503
    })
    .await;
    // The idle pooled connection is closed by the bridge, not left for the
    // balancer to send on after the listener is gone.
    tokio::time::timeout(READY_DEADLINE, closed)
        .await
        .unwrap_or_else(|_| panic!("the idle keep-alive connection is still open"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("the connection ended in an error: {e}"));
    // Still serving: what was on its way gets its 200, and is told to go.
    let reply = bridge.post(&ticket(2)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(sink.messages().len(), 2);
    assert!(
        TcpStream::connect(bridge.addr).await.is_ok(),
        "the listener closed before the delay was over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_drain_delay_the_listener_closes() {
    let sink = Arc::new(MemorySink::new());
    let mut bridge = Bridge::with_sink(settings(&["--drain-delay", "200ms"]), sink).await;
    let addr = bridge.addr;
    bridge.begin_stop();
    wait_until("the listener to close", async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_arrives_before_the_broker_waits_for_it() {
    let sink = Arc::new(MemorySink::new());
    sink.set_ready(false);
    let bridge = Bridge::with_sink(settings(&["--startup-timeout", "10m"]), sink.clone()).await;
    assert_eq!(readyz(&bridge).await, 503);
    let addr = bridge.addr;
    let early = tokio::spawn(async move {
        request(
            addr,
            "POST",
            "/webhooks",
            &[("content-type", "application/json")],
            Bytes::from(ticket(1)),
        )
        .await
    });
    wait_until("the webhook to be in flight", async || {
        metric_value(&bridge.metrics().await, "apizee_bridge_requests_in_flight") == 1.0
    })
    .await;
    assert!(sink.messages().is_empty());
    sink.set_ready(true);
    let reply = early
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(readyz(&bridge).await, 200);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_startup_timeout_an_unreachable_broker_gets_503() {
    let sink = Arc::new(MemorySink::new());
    sink.set_ready(false);
    sink.set_behaviour(Behaviour::Fail(PublishError::NotConnected));
    let bridge = Bridge::with_sink(settings(&["--startup-timeout", "300ms"]), sink.clone()).await;
    let reply = bridge.post(&ticket(1)).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.header("retry-after").is_some());

    // Once the broker has been reachable, start-up is over for good: a
    // webhook that finds it gone is answered 503 without waiting for it.
    sink.set_ready(true);
    sink.set_behaviour(Behaviour::Accept);
    assert_eq!(bridge.post(&ticket(2)).await.status, 200);
}
