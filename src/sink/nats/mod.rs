//! NATS sink: core NATS (answer after the write is flushed to the server) or
//! JetStream (answer after the stream's PubAck).
//!
//! The client reconnects forever in the background. While it is not
//! connected, publishes fail at once with [`PublishError::NotConnected`]
//! instead of queueing in the client's reconnect buffer: a message the sender
//! was told failed must not show up on the broker later. A JetStream publish
//! still waiting for its PubAck when the connection drops fails at once too:
//! the ack would have come on the lost connection, so waiting out
//! `--publish-timeout` would only hold the sender.
//!
//! With JetStream, the event id goes in `Nats-Msg-Id`, so a webhook retried
//! within the stream's duplicate window (2 minutes by default) is stored once,
//! including the case where an ack was lost and the sender got a 503.
//!
//! With `--nats-stream`, `stream.rs` keeps the stream in existence and tells
//! a missing stream (created again) from one whose replicas are electing a
//! leader (left alone; not ready until it has one). A publish only tells it
//! what it saw: no responder, no answer, or an acknowledgement.

pub mod config;

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, HeaderName, ServerAddr, Subject};
use tokio::sync::watch;

use super::{Acknowledgement, BoxFuture, PublishError, Sink};
use crate::route::Message;
use crate::shutdown::Tasks;
use config::{NatsAuth, NatsSettings};

pub mod check;
pub mod redrive;
mod stream;
pub mod tap;

use stream::StreamKeeper;

pub struct NatsSink {
    client: Client,
    jetstream: Option<jetstream::Context>,
    /// Keeps `--nats-stream` in existence; `None` when no stream is managed.
    stream: Option<Arc<StreamKeeper>>,
    publish_timeout: Duration,
    /// Counts the connections lost, so a publish can tell that its own was.
    disconnects: Arc<watch::Sender<u64>>,
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
    /// The stream keeper, if any, runs in `tasks`.
    pub async fn start(settings: &NatsSettings, tasks: &Tasks) -> Result<Self, NatsSetupError> {
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

        let disconnects = Arc::new(watch::Sender::new(0));
        let options = connect_options(settings, disconnects.clone()).await?;
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
                let keeper = Arc::new(StreamKeeper::new(stream));
                let keep = stream::Keep {
                    js: js.clone(),
                    client: client.clone(),
                    settings: stream.clone(),
                    keeper: keeper.clone(),
                    timeout: settings.publish_timeout,
                };
                tasks.spawn_until_stopped(keep.run());
                Some(keeper)
            }
            _ => None,
        };

        Ok(Self {
            client,
            jetstream,
            stream,
            publish_timeout: settings.publish_timeout,
            disconnects,
        })
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}

/// One connection for a tool (`check`, `tail`, `redrive`): unlike
/// serving's, not retried, so the first error (an authentication refused
/// above all) is the answer, within `within`.
async fn connect_once(settings: &NatsSettings, within: Duration) -> Result<Client, String> {
    let urls = settings.urls.join(",");
    let servers = settings
        .urls
        .iter()
        .map(|url| {
            url.parse::<ServerAddr>()
                .map_err(|e| format!("invalid --nats-url {url:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = auth_options(settings)
        .await
        .map_err(|e| e.to_string())?
        .connection_timeout(within);
    match tokio::time::timeout(within, options.connect(servers)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot connect to {urls}: {e}")),
        Err(_) => Err(format!(
            "no server at {urls} answered within {within:?}: is it running and reachable?"
        )),
    }
}

/// The credentials and TLS every connection uses, serving's or a tool's.
async fn auth_options(settings: &NatsSettings) -> Result<ConnectOptions, NatsSetupError> {
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
    Ok(options.name("apizee-bridge"))
}

/// The longest wait between two attempts to reach a NATS server that is
/// down. async-nats's own backoff doubles up to 4 s, so a server back after
/// an outage of more than a few seconds waited up to 4 s more for the
/// bridge: 200s, and the spool's replay, that much later. A refused
/// connection a second is nothing to a server (the Kafka sink's
/// `reconnect.backoff.max.ms` is 1 s for the same reason).
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);

/// 0 for the first attempt, then 2, 4, 8 ms... up to
/// [`RECONNECT_DELAY_MAX`].
fn reconnect_delay(attempts: usize) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
    match attempts {
        0 | 1 => Duration::ZERO,
        _ => Duration::from_millis(2_u64.saturating_pow(doublings)).min(RECONNECT_DELAY_MAX),
    }
}

/// Serving's connection: retried from the start and forever, its drops
/// counted so a waiting publish learns its own connection went.
async fn connect_options(
    settings: &NatsSettings,
    disconnects: Arc<watch::Sender<u64>>,
) -> Result<ConnectOptions, NatsSetupError> {
    Ok(auth_options(settings)
        .await?
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .connection_timeout(Duration::from_secs(5))
        // Publishes are refused while disconnected, so nothing needs to wait
        // in the client's buffer beyond what is in flight.
        .event_callback(move |event| {
            let disconnects = disconnects.clone();
            async move {
                match event {
                    Event::Connected => tracing::info!("connected to NATS"),
                    Event::Disconnected => {
                        disconnects.send_modify(|count| *count += 1);
                        tracing::warn!("disconnected from NATS; reconnecting")
                    }
                    Event::LameDuckMode => {
                        tracing::warn!("NATS server entered lame duck mode; it will close soon")
                    }
                    other => tracing::warn!(event = %other, "NATS client event"),
                }
            }
        }))
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
    /// The keeper of the managed stream, if it captures `subject`: only
    /// then does a publish there say anything about the stream.
    fn keeper_of(&self, subject: &str) -> Option<&StreamKeeper> {
        self.stream.as_deref().filter(|k| k.captures(subject))
    }

    fn jetstream_error(&self, subject: &str, e: jetstream::context::PublishError) -> PublishError {
        match e.kind() {
            PublishErrorKind::TimedOut => {
                if let Some(keeper) = self.keeper_of(subject) {
                    keeper.unanswered();
                }
                PublishError::Timeout(self.publish_timeout)
            }
            PublishErrorKind::BrokenPipe => PublishError::NotConnected,
            // async-nats reports "no responders" as this: nobody listens on
            // the subject, which is not yet proof that no stream captures it.
            PublishErrorKind::StreamNotFound => match self.keeper_of(subject) {
                Some(keeper) => {
                    keeper.no_responders();
                    PublishError::Unavailable(format!(
                        "no JetStream server took subject {subject}: stream {} has no leader \
                         or is gone (the bridge checks which and logs it)",
                        keeper.name()
                    ))
                }
                None => PublishError::Refused(format!(
                    "no JetStream stream captures subject {subject}; create one or set --nats-stream"
                )),
            },
            PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence => PublishError::Refused(e.to_string()),
            _ => PublishError::Failed(e.to_string()),
        }
    }

    /// Sends to JetStream and returns the wait for its PubAck.
    async fn send_jetstream<'a>(
        &'a self,
        js: &'a jetstream::Context,
        message: &Message,
    ) -> Result<Acknowledgement<'a>, PublishError> {
        // Shared, not copied, by the publish and the wait (which outlives
        // the message).
        let subject = Subject::from(message.topic.as_str());
        // The caller's timeout may drop either wait before the client's own
        // fires: that too is a publish nobody answered.
        let mut unanswered = Unanswered {
            sink: self,
            subject: subject.clone(),
            armed: true,
        };
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(nats_headers(message))
            .message_id(&message.event_id);
        let mut disconnects = self.disconnects.subscribe();
        let sent = tokio::select! {
            sent = js.send_publish(subject.clone(), publish) => sent,
            _ = disconnects.changed() => {
                unanswered.armed = false;
                return Err(PublishError::NotConnected);
            }
        };
        let ack = match sent {
            Ok(ack) => ack,
            Err(e) => {
                unanswered.armed = false;
                return Err(self.jetstream_error(&subject, e));
            }
        };
        Ok(Box::pin(async move {
            // The guard itself moves in, not a copy of its flag: it must
            // fire if this wait is dropped.
            let mut unanswered = unanswered;
            let outcome = tokio::select! {
                outcome = ack => outcome,
                // Lost with the connection; the sender retries, and
                // Nats-Msg-Id keeps one copy should the server have stored
                // it after all.
                _ = disconnects.changed() => {
                    unanswered.armed = false;
                    return Err(PublishError::NotConnected);
                }
            };
            unanswered.armed = false;
            match outcome {
                Ok(_) => {
                    // Only a subject the stream captures proves it has a
                    // leader; read only while not ready, so a healthy
                    // publish takes no lock.
                    if let Some(keeper) = self.stream.as_deref().filter(|k| !k.is_ready())
                        && keeper.captures(&subject)
                    {
                        keeper.acknowledged();
                    }
                    Ok(())
                }
                Err(e) => Err(self.jetstream_error(&subject, e)),
            }
        }))
    }
}

/// Tells the stream keeper about a JetStream publish dropped before it got
/// an answer.
struct Unanswered<'a> {
    sink: &'a NatsSink,
    subject: Subject,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Some(keeper) = self.sink.keeper_of(&self.subject)
        {
            keeper.unanswered();
        }
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn send<'a, 'm>(
        &'a self,
        message: &'m Message,
    ) -> BoxFuture<'m, Result<Acknowledgement<'a>, PublishError>>
    where
        'a: 'm,
    {
        Box::pin(async move {
            if !self.connected() {
                return Err(PublishError::NotConnected);
            }
            match &self.jetstream {
                Some(js) => self.send_jetstream(js, message).await,
                None => {
                    self.client
                        .publish_with_headers(
                            message.topic.clone(),
                            nats_headers(message),
                            message.payload.clone(),
                        )
                        .await
                        .map_err(|e| PublishError::Failed(e.to_string()))?;
                    // Core NATS has no acknowledgement: a flushed write is
                    // the most it can say.
                    let flushed: Acknowledgement<'a> = Box::pin(async move {
                        self.client
                            .flush()
                            .await
                            .map_err(|e| PublishError::Failed(e.to_string()))
                    });
                    Ok(flushed)
                }
            }
        })
    }

    /// With 8,192 JetStream publishes in flight, nats-server 2.15 left some
    /// unanswered (the spool's replay then crawled at 1,000 events/s through
    /// timeouts); with 4,096 it replayed a 50,000-event backlog at about
    /// 40,000/s (`benches/spool.sh --phases replay`).
    fn pipeline_depth(&self) -> usize {
        4096
    }

    fn is_ready(&self) -> bool {
        self.connected() && self.stream.as_ref().is_none_or(|keeper| keeper.is_ready())
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

    #[test]
    fn reconnection_backs_off_to_a_second_at_most() {
        let delays: Vec<u128> = [1, 2, 3, 10, 11, 64, usize::MAX]
            .map(|attempts| reconnect_delay(attempts).as_millis())
            .to_vec();
        assert_eq!(delays, [0, 2, 4, 512, 1000, 1000, 1000]);
    }

    /// `nats_headers` skips the client's name check, so the names must pass it here.
    #[test]
    fn every_header_name_is_valid_for_nats() {
        let names = header::ALL
            .iter()
            .chain(&[header::REJECTION_REASON, header::REJECTION_DETAILS])
            .chain(&[crate::trace::TRACEPARENT, crate::trace::TRACESTATE]);
        for name in names {
            assert!(name.parse::<HeaderName>().is_ok(), "{name}");
        }
    }
}
