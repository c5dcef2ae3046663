//! Accept loops for the webhook and metrics listeners, and the graceful
//! drain: on shutdown, `/readyz` turns 503, the listener closes, idle
//! keep-alive connections are closed, and in-flight requests get up to
//! `shutdown_timeout` to finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::handler::{self, App};
use super::rejection::Rejection;
use crate::delivery::Delivery;
use crate::metrics::Metrics;

/// On the metrics listener: a scraper that has not sent its headers by then
/// is dropped, so idle half-open connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves webhooks until `shutdown` resolves, then drains.
pub async fn serve_webhooks(
    listener: TcpListener,
    app: Arc<App>,
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
    let graceful = GracefulShutdown::new();
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
        let service = service_fn(move |request| handler::handle(app.clone(), peer, request));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }

    app.begin_drain();
    drop(listener);
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
