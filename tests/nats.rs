//! End-to-end tests against a real nats-server started by the test.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_smoke() {
    let nats = NatsServer::start(false).await;
    let bridge = Bridge::start(&["--sink", "nats", "--nats-url", &nats.url()]).await;
    bridge.wait_ready().await;
    let reply = bridge.post(SPEC_TICKET).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    bridge.stop().await;
}
