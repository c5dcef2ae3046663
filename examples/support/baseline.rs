//! What the three baselines of `benches/load.sh` share: a bare hyper 1.x
//! HTTP/1.1 server on a multi-thread tokio runtime that reads the whole
//! body, parses it once into a `serde_json::Value` and hands both to a
//! publish function, answering 200 with a small JSON body when it succeeds
//! and 503 when it does not.
//!
//! It parses into `Value`, not `IgnoredAny`, because the bridge builds a
//! value tree too: the ceiling should pay for the same parse. There is no
//! body limit, no timeout, no metric, no log and no validation: these are
//! the least programs that can do the bridge's job, so the ratio
//! bridge / baseline measures what the bridge's extras cost.

#![allow(dead_code)] // each baseline uses a different part of this module

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// `--listen ADDR`, the one flag every baseline takes, and the value of any
/// other `--name VALUE` pair.
pub fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == name {
            return args.next();
        }
    }
    None
}

/// Whether the switch `name` (`--headers`) was given. Read once at start-up:
/// `std::env::args()` builds a `String` per argument on every call.
pub fn switch(name: &str) -> bool {
    std::env::args().skip(1).any(|arg| arg == name)
}

pub fn required_flag(name: &str) -> String {
    flag(name).unwrap_or_else(|| {
        eprintln!("missing {name} VALUE");
        std::process::exit(2)
    })
}

/// The bridge's default topic for an envelope, `apizee.<object>.<event>`,
/// read from the parsed value without checking it: the baselines publish
/// to the same subjects and topics (and Kafka partitions) as the bridge, so
/// the broker does the same work for both.
pub fn topic(value: &Value) -> String {
    match (value["object"].as_str(), value["event"].as_str()) {
        (Some(object), Some(event)) => format!("apizee.{object}.{event}"),
        _ => "apizee.unrouted".to_owned(),
    }
}

/// The objectId as the bridge's message key: a string as is, a number in
/// decimal.
pub fn key(value: &Value) -> String {
    match &value["objectId"] {
        Value::String(id) => id.clone(),
        other => other.to_string(),
    }
}

/// For `--headers`: the headers the bridge puts on every message (its
/// `traceparent` included), with the
/// same names and values of the same shape, built the simplest way. Not part
/// of the minimal pipeline (which has no headers): a variant that tells how
/// much of the bridge's cost is the headers and message id themselves, in
/// the process and in the broker, and how much is everything else it does.
pub fn contract_headers(body: &[u8], value: &Value) -> Vec<(&'static str, String)> {
    use apizee_bridge::route::{event_id, header};
    let text = |name: &str| value[name].as_str().unwrap_or_default().to_owned();
    let id = event_id(body);
    // A trace the pipeline starts, as the bridge does for a request without
    // one: the same 55 characters, without the randomness.
    let traceparent = format!("00-{id}-{}-01", &id[..16]);
    vec![
        (header::CONTENT_TYPE, "application/json".to_owned()),
        (header::EVENT, text("event")),
        (header::OBJECT, text("object")),
        (header::OBJECT_ID, key(value)),
        (header::TIME, value["time"].to_string()),
        (
            header::RECEIVED_AT,
            humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        ),
        (header::EVENT_ID, id),
        (apizee_bridge::trace::TRACEPARENT, traceparent),
    ]
}

/// Serves on `listen` until the process is killed. `publish` gets the body
/// (untouched) and its parsed value, and resolves once the broker has it.
pub async fn serve<P, F>(listen: SocketAddr, publish: P)
where
    P: Fn(Bytes, Value) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    let listener = TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {listen}: {e}"));
    let publish = Arc::new(publish);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // As the bridge does: small responses, written once.
        let _ = stream.set_nodelay(true);
        let publish = publish.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, publish.clone()));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle<P, F>(
    request: Request<Incoming>,
    publish: Arc<P>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    P: Fn(Bytes, Value) -> F,
    F: Future<Output = Result<(), String>>,
{
    let Ok(body) = request.into_body().collect().await else {
        return Ok(answer(StatusCode::BAD_REQUEST, r#"{"error":"unreadable"}"#));
    };
    let body = body.to_bytes();
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return Ok(answer(StatusCode::BAD_REQUEST, r#"{"error":"malformed"}"#));
    };
    Ok(match publish(body, value).await {
        Ok(()) => answer(StatusCode::OK, r#"{"status":"ok"}"#),
        Err(e) => {
            eprintln!("publish failed: {e}");
            answer(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"broker"}"#)
        }
    })
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
