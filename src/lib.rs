//! apizee-bridge receives Apizee (ApiRTC) webhooks and publishes each one to
//! a message broker, answering the sender only once the broker has it.
//!
//! ```text
//! bytes ──► envelope::parse ──► route::build_message ──► Sink::publish ──► ack ──► 200
//!   │            │                                            │
//!   413/415/401  400/422                                      503 + Retry-After
//! ```
//!
//! - [`config`]: flags and env vars, validated once into [`config::Settings`].
//! - [`envelope`]: body bytes to a validated envelope, or every problem found.
//! - [`route`]: envelope to topic, key, headers and the untouched payload.
//! - [`sink`]: the one trait every broker implements (stdout, NATS, Kafka).
//! - [`http`]: listener, limits, graceful drain, and the status mapping.
//! - [`tls`]: the listener's optional TLS configuration and its reloading.
//! - [`metrics`]: every Prometheus metric, with bounded labels.
//!
//! The pure middle (`envelope`, `route`) has no I/O and is unit-tested; the
//! edges take their listeners and shutdown signal as values, so tests can run
//! the whole service in-process on port 0.

pub mod auth;
pub mod config;
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

use crate::config::{Settings, SinkSettings};
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
        settings.shutdown_timeout,
        shutdown,
    )
    .await;
    Ok(())
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
/// `shutdown` resolves; then drains in-flight requests (bounded by
/// `shutdown_timeout`), flushes the sink, and stops the metrics listener.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    metrics_listener: TcpListener,
    shutdown_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    serve_with_tls(
        app,
        listener,
        metrics_listener,
        None,
        shutdown_timeout,
        shutdown,
    )
    .await;
}

/// [`serve`], with webhooks over TLS when `tls` is given; its files are
/// reloaded on SIGHUP and when they change, until shutdown.
pub async fn serve_with_tls(
    app: Arc<App>,
    listener: TcpListener,
    metrics_listener: TcpListener,
    tls: Option<Arc<tls::ServerTls>>,
    shutdown_timeout: Duration,
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
    let metrics_task = tokio::spawn(http::server::serve_metrics(
        metrics_listener,
        app.metrics().clone(),
        app.delivery().clone(),
        async move {
            let _ = metrics_stopped.await;
        },
    ));

    http::server::serve_webhooks(listener, app.clone(), tls, shutdown_timeout, shutdown).await;

    // Events still spooled stay on disk for the next start.
    replay.abort();
    reload.abort();
    match tokio::time::timeout(SINK_FLUSH_TIMEOUT, app.delivery().sink().flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing the sink at shutdown failed"),
        Err(_) => tracing::warn!("flushing the sink at shutdown timed out"),
    }
    let _ = stop_metrics.send(());
    let _ = metrics_task.await;
    tracing::info!("apizee-bridge stopped");
}
