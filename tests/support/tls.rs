//! TLS test support: a throw-away PKI made with rcgen in a temporary
//! directory, the bridge in-process with TLS on port 0, and a client over
//! tokio-rustls that speaks HTTP/1.1 or HTTP/2 as ALPN decides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apizee_bridge::sink::Sink;
use bytes::Bytes;
use http::Version;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::{Bridge, REQUEST_DEADLINE, Reply, settings, wait_until};

/// A certificate and its key, as PEM, and the certificate as DER to compare
/// with what a server presents.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

/// A CA of its own, and a temporary directory for the files the bridge reads.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let ca = CertifiedIssuer::self_signed(params, key).unwrap_or_else(|e| panic!("{e}"));
        Self {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            ca,
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A server certificate for 127.0.0.1 and localhost, named `name`.
    pub fn server(&self, name: &str) -> Issued {
        self.issue(
            name,
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut params = CertificateParams::new(names).unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = params
            .signed_by(&key, &self.ca)
            .unwrap_or_else(|e| panic!("{e}"));
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `contents` to a temporary name, then renames it over `file`:
    /// the bridge never reads half a file.
    pub fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.path(file);
        write_atomically(&path, contents);
        path
    }

    /// Writes `cert.pem` and `key.pem`; returns the flags that name them.
    pub fn install(&self, server: &Issued) -> Vec<String> {
        let cert = self.write("cert.pem", &server.cert_pem);
        let key = self.write("key.pem", &server.key_pem);
        vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ]
    }
}

pub fn write_atomically(path: &Path, contents: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents).unwrap_or_else(|e| panic!("write {temporary:?}: {e}"));
    std::fs::rename(&temporary, path).unwrap_or_else(|e| panic!("rename to {path:?}: {e}"));
}

/// A client configuration that trusts `ca`, offers `alpn`, and presents
/// `identity` if given.
pub fn client_config(
    ca: &CertificateDer<'static>,
    identity: Option<&Issued>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap_or_else(|e| panic!("CA: {e}"));
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => {
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
                .unwrap_or_else(|e| panic!("client key: {e}"));
            builder
                .with_client_auth_cert(vec![identity.der.clone()], key)
                .unwrap_or_else(|e| panic!("client cert: {e}"))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub const H1: &[&[u8]] = &[b"http/1.1"];
pub const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// One TLS connection to the bridge, kept open across requests.
pub struct TlsConnection {
    sender: Sender,
    addr: SocketAddr,
    /// The leaf certificate the server presented.
    pub server_certificate: CertificateDer<'static>,
    /// Ends when the connection is closed, by either side; aborted on
    /// drop, which closes the connection.
    driver: Option<JoinHandle<()>>,
}

impl TlsConnection {
    /// Connects and does the TLS and HTTP handshakes. A server that refuses
    /// the client only after its own handshake (TLS 1.3 client
    /// certificates) shows up as an error of the first request.
    /// Within [`REQUEST_DEADLINE`].
    pub async fn open(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Self, String> {
        tokio::time::timeout(REQUEST_DEADLINE, Self::connect(addr, config))
            .await
            .map_err(|_| format!("no TLS connection within {REQUEST_DEADLINE:?}"))?
    }

    async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (_, session) = stream.get_ref();
        let server_certificate = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .cloned()
            .ok_or("no server certificate")?;
        let is_h2 = session.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(stream);
        let (sender, driver) = if is_h2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            (Sender::Http2(sender), driver)
        } else {
            let (sender, connection) = http1::handshake(io).await.map_err(|e| e.to_string())?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            (Sender::Http1(sender), driver)
        };
        Ok(Self {
            sender,
            addr,
            server_certificate,
            driver: Some(driver),
        })
    }

    /// Sends one request and reads the whole answer, with the HTTP version
    /// it came in.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(Version, Reply), String> {
        let authority = format!("localhost:{}", self.addr.port());
        let builder = http::Request::builder().method(method);
        let builder = match self.sender {
            // HTTP/2 carries the authority in the URI (:authority).
            Sender::Http2(_) => builder
                .uri(format!("https://{authority}{path}"))
                .version(Version::HTTP_2),
            Sender::Http1(_) => builder.uri(path).header("host", authority),
        };
        let request = builder
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let answered = async {
            let response = match &mut self.sender {
                Sender::Http1(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await
                }
                Sender::Http2(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await
                }
            }?;
            let version = response.version();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((
                version,
                Reply {
                    status,
                    headers,
                    body,
                },
            ))
        };
        tokio::time::timeout(REQUEST_DEADLINE, answered)
            .await
            .map_err(|_| format!("no whole answer within {REQUEST_DEADLINE:?}"))?
            .map_err(|e| format!("{e:?}"))
    }

    pub async fn post(&mut self, body: &str) -> Result<(Version, Reply), String> {
        self.request("POST", "/webhooks", Bytes::copy_from_slice(body.as_bytes()))
            .await
    }

    /// Waits (bounded) until the connection is closed; false if it stays open.
    pub async fn closed_within(mut self, limit: Duration) -> bool {
        match self.driver.take() {
            Some(driver) => tokio::time::timeout(limit, driver).await.is_ok(),
            None => true,
        }
    }
}

impl Drop for TlsConnection {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

/// One request on a new connection.
pub async fn post_once(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    body: &str,
) -> Result<(Version, Reply), String> {
    TlsConnection::open(addr, config).await?.post(body).await
}

/// The bridge in-process with TLS, on loopback port 0; stopped on drop.
/// `args` must name the TLS files.
pub async fn start_bridge(args: &[&str], sink: Arc<dyn Sink>) -> Bridge {
    let bridge = Bridge::with_sink(settings(args), sink).await;
    assert!(bridge.tls.is_some(), "no TLS files in {args:?}");
    bridge
}

/// Waits until a new connection to `addr` presents `expected`.
pub async fn wait_for_certificate(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    expected: &CertificateDer<'static>,
    what: &str,
) {
    wait_until(what, async || {
        matches!(TlsConnection::open(addr, config.clone()).await,
            Ok(connection) if &connection.server_certificate == expected)
    })
    .await;
}
