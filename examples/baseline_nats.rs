//! Minimal NATS pipeline for `benches/load.sh`: the HTTP ceiling, plus a
//! JetStream publish of each body and a wait for its PubAck before the 200.
//! No validation, no headers, no `Nats-Msg-Id`, no metrics. With
//! `--headers`, it adds the bridge's headers and `Nats-Msg-Id`: not the
//! minimal pipeline any more, a variant for telling costs apart. Two more
//! split the broker's share of that cost: `--headers --no-message-id` (the
//! header block, no de-duplication) and `--message-id-only` (`Nats-Msg-Id`
//! and nothing else).
//!
//! Same subjects as the bridge (`apizee.<object>.<event>`, read from the
//! parsed body), and the same stream: at start-up it creates `--stream` on
//! `apizee.>` with the defaults the bridge's `--nats-stream` uses (file
//! storage), then listens. Client and JetStream context as the bridge
//! builds them where it matters for throughput: default client buffers,
//! `ContextBuilder::new().timeout(5 s)` (the bridge's default
//! `--publish-timeout`), default ack in-flight limit (5000).
//!
//! `cargo run --release --example baseline_nats -- --listen 127.0.0.1:8082 \
//!    --nats-url nats://127.0.0.1:4222 --stream BENCH`

use std::time::Duration;

use apizee_bridge::route::{event_id, header};
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::{HeaderMap, HeaderName};

#[path = "support/baseline.rs"]
mod baseline;

#[tokio::main]
async fn main() {
    let listen = baseline::required_flag("--listen")
        .parse()
        .unwrap_or_else(|e| panic!("--listen: {e}"));
    let url = baseline::required_flag("--nats-url");
    let stream = baseline::flag("--stream").unwrap_or_else(|| "BENCH".to_owned());
    let with_headers = baseline::switch("--headers");
    let message_id_only = baseline::switch("--message-id-only");
    let no_message_id = baseline::switch("--no-message-id");

    let client = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client);
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec!["apizee.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("cannot create stream {stream}: {e}"));

    baseline::serve(listen, move |body, value| {
        let js = js.clone();
        async move {
            let topic = baseline::topic(&value);
            let headers = with_headers.then(|| baseline::contract_headers(&body, &value));
            let ack = match headers {
                None if message_id_only => {
                    let id = event_id(&body);
                    let message = PublishMessage::build().payload(body).message_id(id);
                    js.send_publish(topic, message).await
                }
                None => js.publish(topic, body).await,
                Some(headers) => {
                    let id = headers
                        .iter()
                        .find(|(name, _)| *name == header::EVENT_ID)
                        .map(|(_, id)| id.clone())
                        .unwrap_or_default();
                    let mut map = HeaderMap::new();
                    for (name, value) in headers {
                        map.insert(HeaderName::from_static(name), value);
                    }
                    let mut message = PublishMessage::build().payload(body).headers(map);
                    if !no_message_id {
                        message = message.message_id(id);
                    }
                    js.send_publish(topic, message).await
                }
            }
            .map_err(|e| e.to_string())?;
            ack.await.map(drop).map_err(|e| e.to_string())
        }
    })
    .await;
}
