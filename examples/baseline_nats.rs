//! Minimal NATS pipeline for `benches/load.sh`: the HTTP ceiling, plus a
//! JetStream publish of each body and a wait for its PubAck before the 200.
//! No validation, no headers, no `Nats-Msg-Id`, no metrics. With
//! `--headers`, it adds the bridge's headers and `Nats-Msg-Id`: not the
//! minimal pipeline any more, a variant for telling costs apart. Two more
//! split the broker's share of that cost: `--headers --no-message-id` (the
//! header block, no de-duplication) and `--message-id-only` (`Nats-Msg-Id`
//! and nothing else). `--fast-batch` is the contract pipeline coalescing
//! concurrent webhooks into JetStream fast batches (see [`fast`]).
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

/// `--fast-batch`, the coalescing experiment of issue 17 (item 3): the
/// webhooks waiting at a moment go to nats-server as one JetStream fast
/// batch (ADR-50, nats-server 2.14 and later, on a stream with
/// `allow_batched`), and each waits for the batch's PubAck instead of its
/// own. async-nats 0.51 has no API for it, so it is core publishes whose
/// reply subject carries the batch:
/// `<inbox>.<batch id>.<flow>.fail.<seq>.<op>.$FI`, op 0 for the first
/// message, 1 for the next ones, 2 (commit) for the last; the commit's
/// PubAck means the whole batch is stored ("gap: fail"). Duplicate
/// `Nats-Msg-Id`s are skipped by the server without failing the batch, so
/// de-duplication holds.
///
/// One batch is in flight at a time: with more than one open on a stream,
/// the server asks for a flow acknowledgement after every message, which
/// is the per-message ack again. Whatever arrives meanwhile forms the next
/// batch. Every 2,000 batches it prints their mean size on stderr.
mod fast {
    use std::time::Duration;

    use async_nats::{Client, HeaderMap};
    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::sync::{mpsc, oneshot};

    pub struct Pending {
        pub subject: String,
        pub headers: HeaderMap,
        pub payload: Bytes,
        pub done: oneshot::Sender<Result<(), String>>,
    }

    /// The most webhooks in one batch, and the flow value asked for (the
    /// server acknowledges every `flow` messages; a batch never reaches it).
    const MAX_BATCH: usize = 256;
    const ACK_TIMEOUT: Duration = Duration::from_secs(5);

    pub async fn batcher(client: Client, mut queue: mpsc::Receiver<Pending>) {
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(format!("{inbox}.>"))
            .await
            .unwrap_or_else(|e| panic!("cannot subscribe to the batch replies: {e}"));
        // Batch ids are per stream, so unique across publishers.
        let prefix = format!("{:016x}", rand::random::<u64>());
        let mut number: u64 = 0;
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        let (mut batches, mut messages) = (0usize, 0usize);
        while let Some(first) = queue.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            number += 1;
            let id = format!("{prefix}{number}");
            let outcome = match send(&client, &inbox, &id, &batch).await {
                Ok(()) => committed(&mut replies, &id).await,
                Err(e) => Err(e),
            };
            (batches, messages) = (batches + 1, messages + batch.len());
            if batches == 2000 {
                eprintln!(
                    "fast batch: mean size {:.1}",
                    messages as f64 / batches as f64
                );
                (batches, messages) = (0, 0);
            }
            for pending in batch.drain(..) {
                let _ = pending.done.send(outcome.clone());
            }
        }
    }

    async fn send(client: &Client, inbox: &str, id: &str, batch: &[Pending]) -> Result<(), String> {
        for (i, pending) in batch.iter().enumerate() {
            let seq = i + 1;
            let op = match seq {
                _ if seq == batch.len() => 2,
                1 => 0,
                _ => 1,
            };
            let reply = format!("{inbox}.{id}.{MAX_BATCH}.fail.{seq}.{op}.$FI");
            client
                .publish_with_reply_and_headers(
                    pending.subject.clone(),
                    reply,
                    pending.headers.clone(),
                    pending.payload.clone(),
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Waits for batch `id`'s PubAck. Replies of earlier batches that timed
    /// out are skipped; flow messages (`{"type":...}`) are not the end.
    async fn committed(replies: &mut async_nats::Subscriber, id: &str) -> Result<(), String> {
        loop {
            let reply = match tokio::time::timeout(ACK_TIMEOUT, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err("the reply subscription ended".to_owned()),
                Err(_) => return Err("no PubAck for the batch in time".to_owned()),
            };
            if !reply.subject.contains(id) {
                continue;
            }
            let text = String::from_utf8_lossy(&reply.payload);
            if text.contains("\"error\"") {
                return Err(text.into_owned());
            }
            if !text.contains("\"type\"") {
                return Ok(());
            }
        }
    }
}

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
    let fast_batch = baseline::switch("--fast-batch");

    let client = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client.clone());
    if fast_batch {
        // async-nats builds `allow_batched` only with its server_2_14
        // feature, which the bridge does not enable: the request is sent
        // as JSON.
        let config = format!(
            r#"{{"name":"{stream}","subjects":["apizee.>"],"storage":"file","allow_batched":true}}"#
        );
        let answer = client
            .request(format!("$JS.API.STREAM.CREATE.{stream}"), config.into())
            .await
            .unwrap_or_else(|e| panic!("cannot create stream {stream}: {e}"));
        let text = String::from_utf8_lossy(&answer.payload);
        assert!(
            text.contains(r#""allow_batched":true"#),
            "cannot create stream {stream}: {text}"
        );
    }
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec!["apizee.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("cannot create stream {stream}: {e}"));

    if fast_batch {
        let (tx, rx) = tokio::sync::mpsc::channel::<fast::Pending>(4096);
        tokio::spawn(fast::batcher(client.clone(), rx));
        baseline::serve(listen, move |body, value| {
            let tx = tx.clone();
            async move {
                let topic = baseline::topic(&value);
                let (mut map, id) = header_map(baseline::contract_headers(&body, &value));
                map.insert("Nats-Msg-Id", id);
                let (done, answer) = tokio::sync::oneshot::channel();
                tx.send(fast::Pending {
                    subject: topic,
                    headers: map,
                    payload: body,
                    done,
                })
                .await
                .map_err(|_| "batcher gone".to_owned())?;
                answer.await.map_err(|_| "batcher dropped".to_owned())?
            }
        })
        .await;
        return;
    }

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
                    let (map, id) = header_map(headers);
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

/// The contract's headers as a NATS header map, and the event id among
/// them (what `Nats-Msg-Id` carries).
fn header_map(headers: Vec<(&'static str, String)>) -> (HeaderMap, String) {
    let mut map = HeaderMap::new();
    let mut id = String::new();
    for (name, value) in headers {
        if name == header::EVENT_ID {
            id.clone_from(&value);
        }
        map.insert(HeaderName::from_static(name), value);
    }
    (map, id)
}
