//! `apizee-bridge send [FILE|-]...`: posts webhooks to a running bridge,
//! authenticated the way its flags say the bridge checks (shared secret,
//! Basic, HMAC with or without a timestamp), and prints each answer:
//!
//! ```text
//! 200 ticket (built-in): {"topic":"apizee.ticket.create","id":"6c0f..."}
//! ```
//!
//! Without a file, one built-in sample of every object type. Exit status:
//! 0 when every answer was a 2xx, 1 otherwise, 2 for a bad flag or file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::auth::config::{AuthArgs, Credentials};
use crate::config::parse_duration;
use crate::envelope::ObjectKind;

/// `apizee-bridge send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Bodies to post, in order; `-` reads standard input. Without any, one
    /// built-in sample of each object type.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// The bridge's webhook URL (http:// or https://).
    #[arg(
        long,
        env = "APIZEE_BRIDGE_SEND_URL",
        default_value = "http://127.0.0.1:8080/webhooks"
    )]
    pub url: Uri,

    /// CA certificate (PEM) that signed the bridge's certificate, for an
    /// https:// URL.
    #[arg(long, env = "APIZEE_BRIDGE_SEND_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// How long each answer may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(
        flatten,
        next_help_heading = "Authentication (as the bridge checks it)"
    )]
    pub auth: AuthArgs,
}

/// One sample per object type, valid envelopes from `tests/samples/valid`
/// (the unit tests check both).
pub const SAMPLES: [(ObjectKind, &str); ObjectKind::ALL.len()] = [
    (ObjectKind::Ticket, include_str!("samples/ticket.json")),
    (ObjectKind::Media, include_str!("samples/media.json")),
    (
        ObjectKind::Conversation,
        include_str!("samples/conversation.json"),
    ),
    (
        ObjectKind::SmsMessage,
        include_str!("samples/smsmessage.json"),
    ),
    (
        ObjectKind::ConversationEvent,
        include_str!("samples/conversationevent.json"),
    ),
];

pub fn main(args: SendArgs) -> ExitCode {
    match prepare(&args) {
        Ok((target, credentials, bodies)) => {
            let runtime = match super::runtime() {
                Ok(runtime) => runtime,
                Err(code) => return code,
            };
            runtime.block_on(send_all(&target, &credentials, bodies, args.timeout))
        }
        Err(e) => {
            eprintln!("apizee-bridge send: {e}");
            ExitCode::from(2)
        }
    }
}

/// Where to connect, and how.
struct Target {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A body to post, and the name it is reported under.
type Named = (String, Bytes);

fn prepare(args: &SendArgs) -> Result<(Target, Credentials, Vec<Named>), String> {
    let credentials = args.auth.credentials().map_err(|e| e.to_string())?;
    let https = match args.url.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "invalid --url {}: use http:// or https://",
                args.url
            ));
        }
    };
    let host = args
        .url
        .host()
        .ok_or_else(|| format!("invalid --url {}: no host", args.url))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = args.url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tls = match (https, &args.ca_file) {
        (false, _) => None,
        (true, None) => {
            return Err(
                "an https:// --url needs --ca-file, the CA (PEM) that signed the bridge's \
                 certificate"
                    .into(),
            );
        }
        (true, Some(path)) => Some(connector(path)?),
    };
    let bodies = if args.files.is_empty() {
        SAMPLES
            .iter()
            .map(|(object, body)| {
                (
                    format!("{} (built-in)", object.as_str()),
                    Bytes::from_static(body.as_bytes()),
                )
            })
            .collect()
    } else {
        args.files
            .iter()
            .map(|path| {
                let name = path.display().to_string();
                let read = if name == "-" {
                    let mut buffer = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buffer).map(|_| buffer)
                } else {
                    std::fs::read(path)
                };
                read.map(|body| (name.clone(), Bytes::from(body)))
                    .map_err(|e| format!("cannot read {name}: {e}"))
            })
            .collect::<Result<_, _>>()?
    };
    Ok((
        Target {
            uri: args.url.clone(),
            host,
            port,
            tls,
        },
        credentials,
        bodies,
    ))
}

fn connector(ca: &std::path::Path) -> Result<tokio_rustls::TlsConnector, String> {
    let roots =
        crate::tls::client_roots("--ca-file", ca).map_err(|e| format!("invalid --ca-file: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn send_all(
    target: &Target,
    credentials: &Credentials,
    bodies: Vec<Named>,
    timeout: Duration,
) -> ExitCode {
    let mut all_accepted = true;
    for (name, body) in bodies {
        let answer = tokio::time::timeout(timeout, post(target, credentials, body)).await;
        match answer {
            Ok(Ok((status, text))) => {
                all_accepted &= (200..300).contains(&status);
                println!("{status} {name}: {}", text.trim_end());
            }
            Ok(Err(e)) => {
                all_accepted = false;
                println!("--- {name}: {e}");
            }
            Err(_) => {
                all_accepted = false;
                println!("--- {name}: no answer within {timeout:?}");
            }
        }
    }
    if all_accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One POST on its own connection: the status and the body's text.
async fn post(
    target: &Target,
    credentials: &Credentials,
    body: Bytes,
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", target.host, target.port))?;
    match &target.tls {
        None => exchange(tcp, target, credentials, body).await,
        Some(connector) => {
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("--url host {}: {e}", target.host))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {}: {e}", target.host))?;
            exchange(tls, target, credentials, body).await
        }
    }
}

async fn exchange<S>(
    stream: S,
    target: &Target,
    credentials: &Credentials,
    body: Bytes,
) -> Result<(u16, String), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let authority = target
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| target.host.clone());
    let path = target
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut request = Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("apizee-bridge-send/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in credentials.headers(&body, SystemTime::now()) {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::envelope::{Rules, parse};

    #[test]
    fn one_valid_sample_per_object_type() {
        for ((object, body), expected) in SAMPLES.iter().zip(ObjectKind::ALL) {
            assert_eq!(*object, expected);
            let envelope =
                parse(body.as_bytes(), Rules::default()).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(envelope.object, expected, "{body}");
        }
    }
}
