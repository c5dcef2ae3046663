//! NATS sink: core NATS (answer after the write is flushed to the server) or
//! JetStream (answer after the stream's PubAck).
//!
//! The client reconnects forever in the background. While it is not
//! connected, publishes fail at once with [`PublishError::NotConnected`]
//! instead of queueing in the client's reconnect buffer: a message the sender
//! was told failed must not show up on the broker later.
//!
//! With JetStream, the event id goes in `Nats-Msg-Id`, so a webhook retried
//! within the stream's duplicate window (2 minutes by default) is stored once,
//! including the case where an ack was lost and the sender got a 503.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, HeaderName, ServerAddr};

use super::{BoxFuture, PublishError, Sink};
use crate::config::{NatsAuth, NatsSettings, StreamSettings};
use crate::route::{Message, subject_matches};

pub struct NatsSink {
    client: Client,
    jetstream: Option<jetstream::Context>,
    /// Keeps `--nats-stream` in existence; `None` when no stream is managed.
    stream: Option<Arc<StreamKeeper>>,
    publish_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum NatsSetupError {
    #[error("invalid --nats-url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot read --nats-creds-file {path}: {reason}")]
    CredsFile { path: String, reason: String },
    #[error("cannot start the NATS client: {0}")]
    Connect(String),
}

impl NatsSink {
    /// Starts the client. It returns without waiting for the server: the
    /// bridge starts, reports not ready, and connects when NATS is up.
    pub async fn start(settings: &NatsSettings) -> Result<Self, NatsSetupError> {
        let servers = settings
            .urls
            .iter()
            .map(|url| {
                url.parse::<ServerAddr>()
                    .map_err(|e| NatsSetupError::InvalidUrl {
                        url: url.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let options = connect_options(settings).await?;
        let client = options
            .connect(servers)
            .await
            .map_err(|e| NatsSetupError::Connect(e.to_string()))?;

        let jetstream = settings.jetstream.then(|| {
            jetstream::ContextBuilder::new()
                .timeout(settings.publish_timeout)
                .build(client.clone())
        });

        let stream = match (&jetstream, &settings.stream) {
            (Some(js), Some(stream)) => {
                let keeper = Arc::new(StreamKeeper::default());
                tokio::spawn(keep_stream(js.clone(), stream.clone(), keeper.clone()));
                Some(keeper)
            }
            _ => None,
        };

        Ok(Self {
            client,
            jetstream,
            stream,
            publish_timeout: settings.publish_timeout,
        })
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}

async fn connect_options(settings: &NatsSettings) -> Result<ConnectOptions, NatsSetupError> {
    let mut options =
        match &settings.auth {
            NatsAuth::None => ConnectOptions::new(),
            NatsAuth::CredsFile(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| NatsSetupError::CredsFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?,
            NatsAuth::NkeySeed(seed) => ConnectOptions::with_nkey(seed.expose().to_owned()),
            NatsAuth::Token(token) => ConnectOptions::with_token(token.expose().to_owned()),
            NatsAuth::UserPassword { user, password } => {
                ConnectOptions::with_user_and_password(user.clone(), password.expose().to_owned())
            }
        };
    if let Some(ca) = &settings.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &settings.client_cert {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(options
        .name("apizee-bridge")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        // Publishes are refused while disconnected, so nothing needs to wait
        // in the client's buffer beyond what is in flight.
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("connected to NATS"),
                Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                Event::LameDuckMode => {
                    tracing::warn!("NATS server entered lame duck mode; it will close soon")
                }
                other => tracing::warn!(event = %other, "NATS client event"),
            }
        }))
}

/// Whether the managed stream is known to exist, which subjects it was
/// found capturing, and a way to ask for it to be created again when a
/// publish finds it gone (a server that came back with an empty store, an
/// operator who deleted it).
#[derive(Default)]
struct StreamKeeper {
    ready: AtomicBool,
    /// The stream's subjects as the server reported them.
    captured: RwLock<Vec<String>>,
    missing: Notify,
}

impl StreamKeeper {
    /// Whether "no stream" for `subject` means the managed stream is gone.
    /// A subject it was never found capturing (a dead-letter subject left
    /// out of a stream made by hand) says nothing about it.
    fn captures(&self, subject: &str) -> bool {
        self.captured
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|filter| subject_matches(filter, subject))
    }
}

/// Creates the stream if it does not exist, retrying until the server
/// answers, then waits until a publish reports it missing and starts over.
/// An existing stream is left as its operator configured it; a subject it
/// does not capture is logged, since what is published there is lost.
async fn keep_stream(js: jetstream::Context, settings: StreamSettings, keeper: Arc<StreamKeeper>) {
    let name = &settings.name;
    loop {
        let mut delay = Duration::from_millis(100);
        let stream = loop {
            let config = jetstream::stream::Config {
                name: name.clone(),
                subjects: settings.subjects.clone(),
                ..Default::default()
            };
            match js.get_or_create_stream(config).await {
                Ok(stream) => break stream,
                Err(e) => {
                    tracing::warn!(stream = %name, error = %e, "cannot create JetStream stream yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let captured = stream.cached_info().config.subjects.clone();
        for wanted in &settings.subjects {
            if !captured
                .iter()
                .any(|filter| subject_matches(filter, wanted))
            {
                tracing::error!(
                    stream = %name,
                    subject = %wanted,
                    captured = ?captured,
                    "the existing JetStream stream does not capture this subject, so what the \
                     bridge publishes there is refused; add the subject to the stream \
                     (nats stream edit {name} --subjects ...) or name another --nats-stream"
                );
            }
        }
        tracing::info!(stream = %name, subjects = ?captured, "JetStream stream ready");
        *keeper
            .captured
            .write()
            .unwrap_or_else(PoisonError::into_inner) = captured;
        keeper.ready.store(true, Ordering::SeqCst);
        keeper.missing.notified().await;
        tracing::warn!(stream = %name, "JetStream stream is gone; creating it again");
    }
}

fn nats_headers(message: &Message) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        // Our names are static and valid: `from_static` neither checks nor
        // copies them, where inserting a `&str` would do both per message.
        headers.insert(HeaderName::from_static(name), value.as_str());
    }
    headers
}

impl NatsSink {
    fn jetstream_error(&self, subject: &str, e: jetstream::context::PublishError) -> PublishError {
        match e.kind() {
            PublishErrorKind::TimedOut => PublishError::Timeout(self.publish_timeout),
            PublishErrorKind::BrokenPipe => PublishError::NotConnected,
            PublishErrorKind::StreamNotFound => {
                if let Some(keeper) = self.stream.as_ref().filter(|k| k.captures(subject)) {
                    // Not ready from this moment, not from when the keeper
                    // task next runs.
                    keeper.ready.store(false, Ordering::SeqCst);
                    keeper.missing.notify_one();
                }
                PublishError::Refused(format!(
                    "no JetStream stream captures subject {subject}; create one or set --nats-stream"
                ))
            }
            PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence => PublishError::Refused(e.to_string()),
            _ => PublishError::Failed(e.to_string()),
        }
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn publish<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            if !self.connected() {
                return Err(PublishError::NotConnected);
            }
            let headers = nats_headers(message);
            match &self.jetstream {
                Some(js) => {
                    let publish = PublishMessage::build()
                        .payload(message.payload.clone())
                        .headers(headers)
                        .message_id(&message.event_id);
                    let ack = js
                        .send_publish(message.topic.clone(), publish)
                        .await
                        .map_err(|e| self.jetstream_error(&message.topic, e))?;
                    ack.await
                        .map(drop)
                        .map_err(|e| self.jetstream_error(&message.topic, e))
                }
                None => {
                    self.client
                        .publish_with_headers(
                            message.topic.clone(),
                            headers,
                            message.payload.clone(),
                        )
                        .await
                        .map_err(|e| PublishError::Failed(e.to_string()))?;
                    self.client
                        .flush()
                        .await
                        .map_err(|e| PublishError::Failed(e.to_string()))
                }
            }
        })
    }

    fn is_ready(&self) -> bool {
        self.connected()
            && self
                .stream
                .as_ref()
                .is_none_or(|keeper| keeper.ready.load(Ordering::SeqCst))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            if !self.connected() {
                return Ok(());
            }
            self.client
                .flush()
                .await
                .map_err(|e| PublishError::Failed(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::header;

    /// `nats_headers` skips the client's name check, so the names must pass it here.
    #[test]
    fn every_header_name_is_valid_for_nats() {
        let names = header::ALL
            .iter()
            .chain(&[header::REJECTION_REASON, header::REJECTION_DETAILS]);
        for name in names {
            assert!(name.parse::<HeaderName>().is_ok(), "{name}");
        }
    }
}
