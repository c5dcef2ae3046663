//! An OTLP/HTTP trace receiver on a free loopback port, over HTTP or
//! HTTPS, as a collector would be: it takes `POST /v1/traces` in protobuf, decodes each export
//! with opentelemetry-proto (the protocol's own definitions), keeps every
//! span with its resource, and answers as the protocol says.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::tls::Issued;
use super::wait_until;

/// One span as exported, with the attributes of its resource.
#[derive(Debug, Clone)]
pub struct Received {
    pub resource: HashMap<String, String>,
    pub scope: String,
    pub span: Span,
}

impl Received {
    /// A span attribute, strings and integers alike as text.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct OtlpReceiver {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
    /// Requests it could not read as an OTLP export.
    refused: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Plain HTTP.
    pub async fn start() -> Self {
        Self::listen(None).await
    }

    /// HTTPS with `server`'s certificate.
    pub async fn start_tls(server: &Issued) -> Self {
        let cert = CertificateDer::from_pem_slice(server.cert_pem.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap_or_else(|e| panic!("{e}"));
        Self::listen(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn listen(tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (kept, refusals) = (spans.clone(), refused.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, refusals, tls) = (kept.clone(), refusals.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let (kept, refusals) = (kept.clone(), refusals.clone());
                            async move { Ok::<_, hyper::Error>(export(request, &kept, &refusals).await) }
                        },
                    );
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self {
            url: format!("{scheme}://{addr}"),
            spans,
            refused,
            task,
        }
    }

    /// The base URL, as an operator gives `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        self.url.clone()
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn refused(&self) -> Vec<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `count` spans have arrived.
    pub async fn wait_for(&self, count: usize) -> Vec<Received> {
        wait_until(&format!("{count} spans at the OTLP receiver"), async || {
            self.spans().len() >= count
        })
        .await;
        self.spans()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn export(
    request: http::Request<hyper::body::Incoming>,
    kept: &Mutex<Vec<Received>>,
    refused: &Mutex<Vec<String>>,
) -> http::Response<Full<Bytes>> {
    let refuse = |why: String| {
        refused.lock().unwrap_or_else(|e| e.into_inner()).push(why);
        http::Response::builder()
            .status(400)
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if request.method() != http::Method::POST
        || request.uri().path() != "/v1/traces"
        || content_type != "application/x-protobuf"
    {
        return refuse(format!(
            "{} {} ({content_type})",
            request.method(),
            request.uri()
        ));
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return refuse(e.to_string()),
    };
    let export = match ExportTraceServiceRequest::decode(body) {
        Ok(export) => export,
        Err(e) => return refuse(e.to_string()),
    };
    let mut spans = kept.lock().unwrap_or_else(|e| e.into_inner());
    for resource_spans in export.resource_spans {
        let resource: HashMap<String, String> = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .filter_map(|kv| {
                Some((
                    kv.key.clone(),
                    attribute(std::slice::from_ref(kv), &kv.key)?,
                ))
            })
            .collect();
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in scope_spans.spans {
                spans.push(Received {
                    resource: resource.clone(),
                    scope: scope.clone(),
                    span,
                });
            }
        }
    }
    http::Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(
            ExportTraceServiceResponse::default().encode_to_vec(),
        )))
        .unwrap_or_else(|e| panic!("{e}"))
}
