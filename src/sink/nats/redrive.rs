//! `apizee-bridge redrive` for NATS: the dead letters the stream that
//! captures the dead-letter subject holds, read with an ephemeral consumer
//! that acknowledges nothing, and deleted from that stream only once their
//! republish was acknowledged.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

use super::config::NatsSettings;
use crate::route::header;
use crate::sink::redrive::{Position, Stored};

async fn stream(
    settings: &NatsSettings,
    subject: &str,
    within: Duration,
) -> Result<jetstream::stream::Stream, String> {
    let client = super::connect_once(settings, within).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(within)
        .build(client);
    let name = match &settings.stream {
        Some(managed) => managed.name.clone(),
        None => js.stream_by_subject(subject).await.map_err(|e| {
            format!("no stream captures {subject}, so no dead letter was kept: {e}")
        })?,
    };
    js.get_stream(&name)
        .await
        .map_err(|e| format!("stream {name}: {e}"))
}

pub async fn read(
    settings: &NatsSettings,
    subject: &str,
    limit: usize,
    within: Duration,
) -> Result<Vec<Stored>, String> {
    let stream = stream(settings, subject, within).await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            // Ephemeral: the server removes it soon after this run.
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read {subject}: {e}"))?;
    let mut stored = Vec::new();
    while stored.len() < limit {
        let mut batch = consumer
            .fetch()
            .max_messages((limit - stored.len()).min(256))
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| format!("reading {subject}: {e}"))?;
        let mut pending = 0;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| format!("reading {subject}: {e}"))?;
            let info = message.info().map_err(|e| e.to_string())?;
            pending = info.pending;
            got += 1;
            stored.push(Stored {
                position: Position::Sequence(info.stream_sequence),
                reason: message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(header::REJECTION_REASON))
                    .map(|v| v.as_str().to_owned()),
                payload: message.payload.clone(),
            });
        }
        if got == 0 || pending == 0 {
            break;
        }
    }
    Ok(stored)
}

/// Deletes the dead letters at `positions` from their stream.
pub async fn remove(
    settings: &NatsSettings,
    subject: &str,
    positions: &[Position],
    within: Duration,
) -> Result<(), String> {
    if positions.is_empty() {
        return Ok(());
    }
    let stream = stream(settings, subject, within).await?;
    for position in positions {
        if let Position::Sequence(sequence) = position {
            stream.delete_message(*sequence).await.map_err(|e| {
                format!("republished, but cannot delete dead letter {sequence}: {e}")
            })?;
        }
    }
    Ok(())
}
