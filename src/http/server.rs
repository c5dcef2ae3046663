//! Accept loops for the webhook and metrics listeners, and the graceful
//! drain: on shutdown, `/readyz` turns 503, the listener closes, idle
//! keep-alive connections are closed, and in-flight requests get up to
//! `shutdown_timeout` to finish.
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
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::handler::{self, App};
use super::rejection::Rejection;
use crate::config::Limits;
use crate::delivery::Delivery;
use crate::metrics::Metrics;
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
pub async fn serve_webhooks(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<ServerTls>>,
    shutdown_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let limits = app.limits();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let h2 = http2_builder(&limits);
    let graceful = GracefulShutdown::new();
    // HTTP/2 connections learn of the drain here (see `serve_h2`); the
    // `graceful` watcher each one holds still makes the drain wait for it.
    let (drain, draining) = watch::channel(false);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);

    loop {
        // Past --max-connections, stop accepting: new clients wait in the
        // kernel's backlog instead of costing memory here.
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
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
        // Responses are small and written once; waiting for more data to
        // coalesce would only add latency.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        if let Some(tls) = &tls {
            let connection = TlsConnection {
                // A snapshot: a reload from now on does not touch this one.
                acceptor: tls.acceptor(),
                app,
                peer,
                http1: builder.clone(),
                http2: h2.clone(),
                watcher: graceful.watcher(),
                draining: draining.clone(),
            };
            tokio::spawn(async move {
                connection.serve(stream).await;
                drop(permit);
            });
            continue;
        }
        let metrics = app.metrics().clone();
        let service = service_fn(move |request| handler::handle(app.clone(), peer, request));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                connection_failed(&metrics, peer, &e);
            }
            drop(permit);
        });
    }

    app.begin_drain();
    drop(listener);
    drain.send_replace(true);
    tracing::info!("shutting down: listener closed, draining in-flight requests");
    if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout = ?shutdown_timeout,
            "some requests did not finish within --shutdown-timeout; closing them"
        );
    }
}

/// Counts a connection that ended in an error by its kind. Malformed or
/// oversized request heads are answered by hyper itself (400 or 431, no
/// JSON body) and never reach the handler, so this is the only place they
/// show up in the metrics.
fn connection_failed(metrics: &Metrics, peer: SocketAddr, error: &hyper::Error) {
    let kind = if error.is_parse_too_large() {
        "head_too_large"
    } else if error.is_parse() {
        "malformed_head"
    } else if error.is_timeout() {
        "header_timeout"
    } else if error.is_incomplete_message() {
        "incomplete_message"
    } else {
        "other"
    };
    metrics.connection_error(kind);
    tracing::debug!(%peer, kind, %error, "connection closed with an error");
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
                app.metrics().tls_handshake_failed();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                app.metrics().tls_handshake_failed();
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
        return Rejection::NotFound.into_response(0);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Rejection::MethodNotAllowed { allow: "GET, HEAD" }.into_response(0);
    }
    // Read at scrape time, so the gauges are never stale.
    delivery.report(metrics);
    let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
