//! A downstream service reading the bridge's webhooks from JetStream with a
//! durable pull consumer, processing each webhook once even when it is
//! delivered twice.
//!
//! A webhook can arrive twice: the platform retries one whose answer it
//! did not get, and the stream de-duplicates (`Nats-Msg-Id`) only within
//! its duplicate window (2 minutes by default); and a message whose ack is
//! lost is redelivered. Both copies carry the same `apizee-event-id`, a
//! hash of the body, so the consumer checks it before doing the work and
//! acknowledges only after the work is done: a crash in between means a
//! redelivery, never a loss.
//!
//! The set of ids seen here is in memory, which is enough for an example;
//! a service keeps them where its work goes (a unique key in its database,
//! written in the same transaction), for as long as duplicates can come.
//!
//! ```text
//! cargo run --example consumer_nats -- --nats-url nats://127.0.0.1:4222 \
//!     --stream APIZEE --durable tickets --subject 'apizee.ticket.>'
//! ```
//!
//! Prints `processed ID SUBJECT` or `duplicate ID SUBJECT` per message;
//! `--count N` stops after N messages (for tests).

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

struct Args {
    url: String,
    stream: String,
    durable: String,
    subject: String,
    count: Option<u64>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        url: "nats://127.0.0.1:4222".into(),
        stream: "APIZEE".into(),
        durable: "example".into(),
        subject: "apizee.>".into(),
        count: None,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || given.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--nats-url" => args.url = value()?,
            "--stream" => args.stream = value()?,
            "--durable" => args.durable = value()?,
            "--subject" => args.subject = value()?,
            "--count" => args.count = Some(value()?.parse().map_err(|e| format!("--count: {e}"))?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let args = args()?;
    let client = async_nats::connect(&args.url).await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&args.stream).await?;
    // Durable: a restarted service resumes where it left off.
    let consumer = stream
        .get_or_create_consumer(
            &args.durable,
            consumer::pull::Config {
                durable_name: Some(args.durable.clone()),
                filter_subject: args.subject.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await?;
    eprintln!(
        "consumer_nats: reading {} from {}",
        args.subject, args.stream
    );
    let mut seen: HashSet<String> = HashSet::new();
    let mut messages = consumer.messages().await?;
    let mut read = 0;
    while args.count.is_none_or(|n| read < n) {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message?;
        read += 1;
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("apizee-event-id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        if seen.contains(&id) {
            println!("duplicate {id} {}", message.subject);
        } else {
            // The work: here, printing; in a service, whatever the webhook
            // means to it, with the id recorded alongside.
            println!("processed {id} {}", message.subject);
            seen.insert(id);
        }
        // After the work: an ack lost now means a redelivery, which the
        // check above absorbs.
        message.ack().await?;
    }
    Ok(())
}
