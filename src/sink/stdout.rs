//! The embedded development sink: one JSON line per message on standard
//! output. Nothing is durable; start-up says so.

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::{Acknowledgement, BoxFuture, PublishError, Sink};
use crate::route::Message;

pub struct StdoutSink {
    // One writer at a time, so concurrent lines never interleave.
    out: Mutex<tokio::io::Stdout>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self {
            out: Mutex::new(tokio::io::stdout()),
        }
    }
}

impl StdoutSink {
    pub fn new() -> Self {
        Self::default()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    key: &'a str,
    headers: serde_json::Map<String, serde_json::Value>,
    /// The body as a JSON string: exact bytes, and always one line even when
    /// the sender pretty-printed its JSON.
    payload: &'a str,
}

/// Renders the line written for one message, newline included.
pub fn render_line(message: &Message) -> Result<Vec<u8>, PublishError> {
    // Bodies reach a sink only after parsing as JSON, which implies UTF-8.
    let payload = std::str::from_utf8(&message.payload)
        .map_err(|e| PublishError::Failed(format!("payload is not UTF-8: {e}")))?;
    let headers = message
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
        .collect();
    let mut line = serde_json::to_vec(&Line {
        topic: &message.topic,
        key: &message.key,
        headers,
        payload,
    })
    .map_err(|e| PublishError::Failed(e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn send<'a, 'm>(
        &'a self,
        message: &'m Message,
    ) -> BoxFuture<'m, Result<Acknowledgement<'a>, PublishError>>
    where
        'a: 'm,
    {
        Box::pin(async move {
            let line = render_line(message)?;
            let mut out = self.out.lock().await;
            out.write_all(&line)
                .await
                .map_err(|e| PublishError::Failed(format!("writing to stdout: {e}")))?;
            out.flush()
                .await
                .map_err(|e| PublishError::Failed(format!("flushing stdout: {e}")))?;
            let written: Acknowledgement<'a> = Box::pin(std::future::ready(Ok(())));
            Ok(written)
        })
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            self.out
                .lock()
                .await
                .flush()
                .await
                .map_err(|e| PublishError::Failed(format!("flushing stdout: {e}")))
        })
    }
}
