//! apizee-bridge receives Apizee (ApiRTC) webhooks and publishes each one to
//! a message broker, answering the sender only once the broker has it.
//!
//! ```text
//! request ─► http::server ─► http::handler
//!            (accept, TLS,     │ auth on the headers ─► a budget slot ─► media type, length
//!             drain)           │ read the body (≤ --max-body-bytes) ─► auth on the signature
//!                              │      └─► 400/401/403/404/405/408/413/415/429, JSON body
//!                              ▼
//!   envelope::parse ─► route::build_message ─► delivery ─► sink::publish ─► ack ─► 200
//!        │ 400/422                               │   └─► spool (fsync) ──────────► 202
//!        ▼                                       │        └─► replayed in order once the broker is back
//!   dead_letter: queued, published               └─► 503 + Retry-After
//!   in the background through delivery
//! ```
//!
//! Every refusal is an [`http::rejection::Rejection`], whose kind declares
//! its answer; [`metrics`] counts what each part reports.
//!
//! - [`config`]: flags and env vars, validated once into [`config::Settings`].
//! - [`http`]: the listeners ([`http::server`]: accept loop, TLS handshakes,
//!   the drain), the request handler, the in-flight budgets, rejections.
//! - [`auth`]: who may send: checks on the headers, then the body's signature.
//! - [`envelope`]: body bytes to a validated envelope, or every problem found.
//! - [`route`]: envelope to topic, key, headers and the untouched payload.
//! - [`delivery`]: the bounded publish, the start-up wait, the spool and its
//!   replay.
//! - [`spool`]: the durable, fsynced queue on local disk (redb).
//! - [`dead_letter`]: refused requests, queued and published in the background.
//! - [`sink`]: the one trait every broker implements (stdout, NATS, Kafka, and
//!   a memory sink for tests).
//! - [`tls`]: the listener's optional TLS configuration and its reloading.
//! - [`metrics`]: every Prometheus metric, with bounded labels.
//! - [`logging`]: text or JSON logs on stderr.
//! - [`shutdown`]: the SIGTERM / SIGINT signal.
//!
//! The pure middle (`envelope`, `route`) has no I/O and is unit-tested; the
//! edges take their listeners and shutdown signal as values, so tests can run
//! the whole service in-process on port 0.

pub mod auth;
pub mod config;
pub mod dead_letter;
pub mod delivery;
pub mod envelope;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod route;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{Drain, Settings, SinkSettings};
use crate::http::App;
use crate::metrics::Metrics;
use crate::sink::Sink;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {flag} {addr}: {source}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Nats(#[from] sink::nats::NatsSetupError),
    #[error(transparent)]
    Kafka(#[from] sink::kafka::KafkaSetupError),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// How long the sink may take to flush at shutdown before we give up.
const SINK_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the sink, binds both listeners and serves until `shutdown`
/// resolves; then drains and returns.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new()?);
    let sink = start_sink(&settings.sink, &metrics).await?;
    let listener = bind("--listen", settings.listen).await?;
    let metrics_listener = bind("--metrics-listen", settings.metrics_listen).await?;
    tracing::info!(
        listen = %settings.listen,
        path = %settings.http.path,
        metrics = %settings.metrics_listen,
        sink = sink.name(),
        tls = settings.tls.is_some(),
        "apizee-bridge started"
    );
    if let Some(dead_letter) = &settings.http.dead_letter {
        tracing::info!(
            topic = %dead_letter.topic,
            malformed = dead_letter.malformed,
            queue = dead_letter.queue,
            "dead letters (refused requests) go to {}; {}",
            dead_letter.topic,
            dead_letter_home(&settings.sink),
        );
    }
    let spool = match &settings.spool {
        Some((dir, max_bytes)) => {
            metrics.register_spool()?;
            let spool = spool::Spool::open(dir, *max_bytes)?;
            if !spool.is_empty() {
                tracing::info!(
                    events = spool.len(),
                    "spooled webhooks from a previous run will be delivered"
                );
            }
            Some(Arc::new(spool))
        }
        None => None,
    };
    let tls = match settings.tls {
        Some(tls) => {
            metrics.register_tls()?;
            Some(tls::ServerTls::new(tls, metrics.clone()))
        }
        None => None,
    };
    let app = Arc::new(App::with_spool(settings.http, sink, spool, metrics));
    serve_with_tls(
        app,
        listener,
        metrics_listener,
        tls,
        settings.drain,
        shutdown,
    )
    .await;
    Ok(())
}

/// Where the dead-letter topic comes from, for the start-up log: an
/// operator reading it should know whether dead letters can arrive.
fn dead_letter_home(sink: &SinkSettings) -> String {
    match sink {
        SinkSettings::Stdout => "printed with the webhooks".into(),
        SinkSettings::Kafka(kafka) if kafka.create_topics.is_some() => {
            "the topic is created with the template's topics (--kafka-create-topics)".into()
        }
        SinkSettings::Kafka(_) => {
            "the topic must exist, or the cluster must create topics on demand".into()
        }
        SinkSettings::Nats(nats) => match &nats.stream {
            Some(stream) => format!(
                "stream {} captures it (created with subjects {:?} when missing)",
                stream.name, stream.subjects
            ),
            None if nats.jetstream => "a JetStream stream must capture the subject".into(),
            None => "published on core NATS, stored only if a subscriber or stream takes it".into(),
        },
    }
}

/// Starts the configured sink. Broker clients connect in the background, so
/// this returns before the broker is reachable; `Sink::is_ready` tells when.
pub async fn start_sink(
    settings: &SinkSettings,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Sink>, RunError> {
    Ok(match settings {
        SinkSettings::Stdout => {
            tracing::warn!(
                "sink is stdout: messages are printed, not stored; nothing is durable. \
                 Use --sink nats in production"
            );
            Arc::new(sink::stdout::StdoutSink::new())
        }
        SinkSettings::Nats(nats) => Arc::new(sink::nats::NatsSink::start(nats).await?),
        SinkSettings::Kafka(kafka) => {
            metrics.register_kafka()?;
            Arc::new(sink::kafka::KafkaSink::start(kafka, metrics.clone())?)
        }
    })
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { flag, addr, source })
}

/// Serves webhooks and metrics on listeners the caller bound, until
/// `shutdown` resolves; then drains (see [`config::Drain`]), flushes the
/// sink, and stops the metrics listener.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    metrics_listener: TcpListener,
    drain: Drain,
    shutdown: impl Future<Output = ()>,
) {
    serve_with_tls(app, listener, metrics_listener, None, drain, shutdown).await;
}

/// [`serve`], with webhooks over TLS when `tls` is given; its files are
/// reloaded on SIGHUP and when they change, until shutdown.
pub async fn serve_with_tls(
    app: Arc<App>,
    listener: TcpListener,
    metrics_listener: TcpListener,
    tls: Option<Arc<tls::ServerTls>>,
    drain: Drain,
    shutdown: impl Future<Output = ()>,
) {
    // SIGHUP is taken over before the first connection is accepted: it
    // reloads the TLS files, or without TLS is logged, never fatal.
    let hangup = tls::ReloadSignal::register();
    let reload = match tls.clone() {
        Some(tls) => tokio::spawn(tls.watch(hangup)),
        None => tokio::spawn(hangup.ignore()),
    };
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let replay = tokio::spawn(app.delivery().clone().replay());
    let startup = tokio::spawn(app.delivery().clone().watch_startup());
    let dead_letters = app
        .dead_letters()
        .map(|dead_letters| tokio::spawn(dead_letters.clone().run(app.delivery().clone())));
    let metrics_task = tokio::spawn(http::server::serve_metrics(
        metrics_listener,
        app.metrics().clone(),
        app.delivery().clone(),
        async move {
            let _ = metrics_stopped.await;
        },
    ));

    http::server::serve_webhooks(listener, app.clone(), tls, drain, shutdown).await;

    // Events still spooled stay on disk for the next start.
    replay.abort();
    startup.abort();
    reload.abort();
    // No request is left to refuse: what the dead-letter queue holds goes
    // out before the sink is flushed.
    if let (Some(queue), Some(worker)) = (app.dead_letters(), dead_letters) {
        queue.close();
        if tokio::time::timeout(SINK_FLUSH_TIMEOUT, worker)
            .await
            .is_err()
        {
            tracing::warn!(
                "publishing the queued dead letters at shutdown timed out; dropped them"
            );
        }
    }
    match tokio::time::timeout(SINK_FLUSH_TIMEOUT, app.delivery().sink().flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing the sink at shutdown failed"),
        Err(_) => tracing::warn!("flushing the sink at shutdown timed out"),
    }
    let _ = stop_metrics.send(());
    let _ = metrics_task.await;
    tracing::info!("apizee-bridge stopped");
}
