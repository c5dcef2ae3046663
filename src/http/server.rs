//! Accept loops for the webhook and metrics listeners, and the graceful
//! drain: on shutdown, `/readyz` turns 503 and connections are asked to
//! close while the listener still serves for `--drain-delay` (so a load
//! balancer sees the replica leave), then the listener closes and in-flight
//! requests get up to `--shutdown-timeout` to finish.
//!
//! With TLS, each connection does its handshake in its own task (bounded by
//! `--header-read-timeout`, inside its `--max-connections` permit), then
//! speaks HTTP/2 or HTTP/1.1 as ALPN decided. HTTP/2 has no header read
//! timeout of its own, so an HTTP/2 connection with no request open for
//! `--header-read-timeout` is closed the same way an idle HTTP/1.1 one is.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::config::{Drain, Limits};
use super::handler::{self, App};
use super::metrics::Metrics;
use super::rejection::{Answering, Rejection};
use crate::delivery::Delivery;
use crate::tls::ServerTls;

/// On the metrics listener: a scraper that has not sent its headers by then
/// is dropped, so idle half-open connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Streams one HTTP/2 connection may have open at once. Each may hold a body
/// of up to --max-body-bytes, and --max-in-flight bounds the total anyway;
/// 100 is the lowest value RFC 9113 recommends advertising.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// Serves webhooks until `shutdown` resolves, then drains. With `tls`, over
/// TLS with HTTP/2 or HTTP/1.1 by ALPN; without, HTTP/1.1 in the clear.
///
/// The drain has two steps. For `drain.delay` the listener still accepts,
/// but `/readyz` answers 503, every connection is asked to close (idle
/// keep-alive ones at once, busy ones after the answer they are writing,
/// HTTP/2 ones with GOAWAY) and new ones serve one request with
/// `Connection: close`: a load balancer polling `/readyz` sees the replica
/// leave while it still answers whatever was already on its way. Then the
/// listener closes and in-flight requests get `drain.timeout` to finish.
pub async fn serve_webhooks(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<ServerTls>>,
    drain: Drain,
    shutdown: impl Future<Output = ()>,
) {
    let limits = app.limits();
    let mut accepting = Acceptor::new(app.clone(), tls, &limits);
    tokio::pin!(shutdown);
    accepting.serve(&listener, &mut shutdown).await;

    app.begin_drain();
    accepting.draining.send_replace(true);
    // Polled from now on: asks every connection so far to close gracefully.
    let earlier = tokio::spawn(std::mem::take(&mut accepting.graceful).shutdown());
    if !drain.delay.is_zero() {
        tracing::info!(
            delay = ?drain.delay,
            "shutting down: /readyz answers 503; still serving, with Connection: close, so \
             load balancers see this replica leave"
        );
        accepting.http1.keep_alive(false);
        accepting
            .serve(&listener, tokio::time::sleep(drain.delay))
            .await;
    }
    drop(listener);
    tracing::info!("shutting down: listener closed, draining in-flight requests");
    let later = accepting.graceful.shutdown();
    let drained = async {
        let _ = earlier.await;
        later.await;
    };
    if tokio::time::timeout(drain.timeout, drained).await.is_err() {
        tracing::warn!(
            timeout = ?drain.timeout,
            "some requests did not finish within --shutdown-timeout; closing them"
        );
    }
}

/// What each accepted connection is served with.
struct Acceptor {
    app: Arc<App>,
    tls: Option<Arc<ServerTls>>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Every connection accepted is watched, so the drain waits for it.
    graceful: GracefulShutdown,
    /// HTTP/2 connections learn of the drain here (see `serve_h2`); the
    /// `graceful` watcher each one holds still makes the drain wait for it.
    draining: watch::Sender<bool>,
    connections: Arc<Semaphore>,
}

impl Acceptor {
    fn new(app: Arc<App>, tls: Option<Arc<ServerTls>>, limits: &Limits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_header_size(limits.max_header_bytes)
            .keep_alive(true);
        Self {
            http2: http2_builder(limits),
            http1,
            app,
            tls,
            graceful: GracefulShutdown::new(),
            draining: watch::channel(false).0,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
        }
    }

    /// Accepts and serves connections until `stop` resolves.
    async fn serve(&self, listener: &TcpListener, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            // Past --max-connections, stop accepting: new clients wait in the
            // kernel's backlog instead of costing memory here.
            let permit = tokio::select! {
                biased;
                () = &mut stop => return,
                permit = self.connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut stop => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of
                        // spinning, and keep serving open connections.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            self.spawn(stream, peer, permit);
        }
    }

    fn spawn(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        // Responses are small and written once; waiting for more data to
        // coalesce would only add latency.
        let _ = stream.set_nodelay(true);
        let app = self.app.clone();
        if let Some(tls) = &self.tls {
            let connection = TlsConnection {
                // A snapshot: a reload from now on does not touch this one.
                acceptor: tls.acceptor(),
                tls: tls.clone(),
                app,
                peer,
                http1: self.http1.clone(),
                http2: self.http2.clone(),
                watcher: self.graceful.watcher(),
                draining: self.draining.subscribe(),
            };
            tokio::spawn(async move {
                connection.serve(stream).await;
                drop(permit);
            });
            return;
        }
        let metrics = app.metrics().clone();
        let service = service_fn(move |request| handler::handle(app.clone(), peer, request));
        let connection = self
            .graceful
            .watch(self.http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                connection_failed(&metrics, peer, &e);
            }
            drop(permit);
        });
    }
}

/// Counts a connection that ended in an error by its kind. Malformed or
/// oversized request heads are answered by hyper itself (400 or 431, no
/// JSON body) and never reach the handler, so this is the only place they
/// show up in the metrics.
fn connection_failed(metrics: &Metrics, peer: SocketAddr, error: &hyper::Error) {
    let kind = ConnectionError::of(error);
    metrics.connection_error(kind);
    tracing::debug!(%peer, kind = kind.as_str(), %error, "connection closed with an error");
}

named_enum! {
    /// How a webhook connection ended in an error: the `kind` label of
    /// `apizee_bridge_connection_errors_total`.
    pub enum ConnectionError {
        HeadTooLarge => "head_too_large",
        MalformedHead => "malformed_head",
        HeaderTimeout => "header_timeout",
        IncompleteMessage => "incomplete_message",
        Other => "other",
    }
}

impl ConnectionError {
    fn of(error: &hyper::Error) -> Self {
        if error.is_parse_too_large() {
            ConnectionError::HeadTooLarge
        } else if error.is_parse() {
            ConnectionError::MalformedHead
        } else if error.is_timeout() {
            ConnectionError::HeaderTimeout
        } else if error.is_incomplete_message() {
            ConnectionError::IncompleteMessage
        } else {
            ConnectionError::Other
        }
    }
}

fn http2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        // Pings find a peer that went away while a request is in flight;
        // the idle timeout in `serve_h2` closes one that stays but sends
        // nothing.
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    builder
}

/// One accepted connection on a TLS listener, before its handshake.
struct TlsConnection {
    acceptor: TlsAcceptor,
    /// Counts the failed handshakes.
    tls: Arc<ServerTls>,
    app: Arc<App>,
    peer: SocketAddr,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Taken at accept, so the drain also waits for handshakes under way.
    watcher: Watcher,
    draining: watch::Receiver<bool>,
}

impl TlsConnection {
    async fn serve(self, stream: TcpStream) {
        let Self {
            acceptor,
            tls,
            app,
            peer,
            http1,
            http2,
            watcher,
            draining,
        } = self;
        let timeout = app.limits().header_read_timeout;
        let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            // Anyone can cause these (scanners, plain HTTP), so they are
            // counted, and logged at debug only.
            Ok(Err(e)) => {
                tls.handshake_failed();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tls.handshake_failed();
                tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                return;
            }
        };
        let is_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let metrics = app.metrics().clone();
        let io = TokioIo::new(stream);
        let result = if is_h2 {
            serve_h2(&http2, io, app, peer, watcher, draining, timeout).await
        } else {
            let service = service_fn(move |request| handler::handle(app.clone(), peer, request));
            watcher.watch(http1.serve_connection(io, service)).await
        };
        if let Err(e) = result {
            connection_failed(&metrics, peer, &e);
        }
    }
}

/// Serves one HTTP/2 connection. hyper-util's graceful watcher cannot be
/// combined with an idle timeout (its connection trait is sealed), so this
/// loop sends GOAWAY itself, on drain or after `idle_timeout` without an
/// open stream, and holds `_watcher` so that the drain waits for it. A
/// connection still idle `idle_timeout` after its GOAWAY (or one that never
/// sent the HTTP/2 preface) is dropped.
async fn serve_h2<I>(
    builder: &http2::Builder<TokioExecutor>,
    io: I,
    app: Arc<App>,
    peer: SocketAddr,
    _watcher: Watcher,
    mut draining: watch::Receiver<bool>,
    idle_timeout: Duration,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let streams = activity.clone();
    let service = service_fn(move |request| {
        let stream = streams.stream_opened();
        let response = handler::handle(app.clone(), peer, request);
        async move {
            let response = response.await;
            drop(stream);
            response
        }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            () = activity.idle_for(idle_timeout) => {
                if closing {
                    return Ok(());
                }
                closing = true;
                activity.touch();
                connection.as_mut().graceful_shutdown();
            }
            _ = draining.wait_for(|draining| *draining), if !closing => {
                closing = true;
                activity.touch();
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Open streams of one HTTP/2 connection and when the last one changed.
struct Activity {
    open_streams: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            open_streams: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn stream_opened(self: &Arc<Self>) -> OpenStream {
        self.open_streams.fetch_add(1, Ordering::SeqCst);
        self.touch();
        OpenStream(self.clone())
    }

    /// Resolves once no stream has been open for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = *self.last.lock().unwrap_or_else(PoisonError::into_inner) + timeout;
            let now = Instant::now();
            let busy = self.open_streams.load(Ordering::SeqCst) > 0;
            if !busy && now >= deadline {
                return;
            }
            tokio::time::sleep_until(if busy { now + timeout } else { deadline }).await;
        }
    }
}

/// A stream being answered; marks the connection active until dropped.
struct OpenStream(Arc<Activity>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// Serves `/metrics` until `stop` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    delivery: Arc<Delivery>,
    stop: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the metrics listener");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let delivery = delivery.clone();
        let service = service_fn(move |request| {
            let response = metrics_response(&metrics, &delivery, &request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics connection closed with an error");
            }
        });
    }
}

fn metrics_response(
    metrics: &Metrics,
    delivery: &Delivery,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return Rejection::NotFound.into_response(Answering::default());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Rejection::MethodNotAllowed { allow: "GET, HEAD" }
            .into_response(Answering::default());
    }
    // Read at scrape time, so the gauges are never stale.
    delivery.report();
    let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
