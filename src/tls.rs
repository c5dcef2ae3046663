//! TLS on the webhook listener: the rustls server configuration built from
//! `--tls-cert`, `--tls-key` and `--tls-client-ca`, and its reloading.
//!
//! The configuration in force is an `Arc<ServerConfig>` behind a lock. Each
//! accepted connection takes a snapshot of it, so a reload changes what new
//! connections get and never touches one already open. A reload happens on
//! SIGHUP and whenever the contents of a file change: the files are read
//! every `--tls-reload-interval` and compared by digest. Polling rather than
//! inotify sees every way a file gets replaced, including the symlink swap
//! of a Kubernetes Secret volume, and needs no platform code. A reload that
//! fails keeps the previous configuration and says which file is wrong.
//!
//! The crypto provider is ring, which async-nats already brings in, not
//! aws-lc-rs, whose build needs cmake. HTTP/2 is offered by ALPN before
//! HTTP/1.1.

pub mod config;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use prometheus::{IntCounter, IntCounterVec, Registry};

use crate::metrics::{Registered, opts};
use crate::shutdown::ReloadSignal;

/// ALPN protocols offered, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the certificate, its key and the optional client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// `--tls-*`, checked at start-up by loading the files once.
#[derive(Clone)]
pub struct TlsSettings {
    pub files: TlsFiles,
    pub reload_interval: Duration,
    initial: Loaded,
}

impl fmt::Debug for TlsSettings {
    // Never the configuration itself: it holds the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("files", &self.files)
            .field("reload_interval", &self.reload_interval)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Reads and checks the files: every problem a reload could meet fails
    /// the start instead.
    pub fn load(files: TlsFiles, reload_interval: Duration) -> Result<Self, TlsError> {
        let contents = Contents::read(&files)?;
        let config = build(&files, &contents)?;
        Ok(Self {
            initial: Loaded {
                config,
                fingerprint: Ok(contents.digest()),
            },
            files,
            reload_interval,
        })
    }
}

/// A file that cannot serve, and why. Names the flag and the path; never
/// the contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {problem}", path.display())]
pub struct TlsError {
    pub flag: &'static str,
    pub path: PathBuf,
    pub problem: String,
}

impl TlsError {
    fn new(flag: &'static str, path: &Path, problem: impl Into<String>) -> Self {
        Self {
            flag,
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// The configuration in force, and what the files held when it was read.
#[derive(Clone)]
struct Loaded {
    config: Arc<ServerConfig>,
    fingerprint: Fingerprint,
}

/// The files' digest, or the error reading them gave: a change of either
/// is worth a reload attempt, the same one twice is not.
type Fingerprint = Result<[u8; 32], String>;

/// The server side of TLS: the configuration in force, and its reloading.
pub struct ServerTls {
    files: TlsFiles,
    reload_interval: Duration,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files held at the last reload attempt, successful or not.
    seen: Mutex<Fingerprint>,
    metrics: TlsMetrics,
}

named_enum! {
    /// The `result` label of `apizee_bridge_tls_reloads_total`.
    pub enum Reload {
        Success => "success",
        /// The previous certificate stays in force.
        Failure => "failure",
    }
}

/// Registered with the listener's TLS, so a plain HTTP bridge exports none.
struct TlsMetrics {
    /// By [`Reload`].
    reloads: [IntCounter; Reload::ALL.len()],
    handshake_failures: IntCounter,
}

impl TlsMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reloads = IntCounterVec::new(
            opts(
                "tls_reloads_total",
                "Reloads of the TLS certificate (SIGHUP or changed files), by result \
                 (success, failure: the previous certificate stays).",
            ),
            &["result"],
        )?
        .registered(registry)?;
        Ok(Self {
            reloads: Reload::ALL.map(|result| reloads.with_label_values(&[result.as_str()])),
            handshake_failures: IntCounter::with_opts(opts(
                "tls_handshake_failures_total",
                "TLS handshakes on the webhook listener that failed or timed out \
                 (bad or missing client certificate, plain HTTP, stalled client).",
            ))?
            .registered(registry)?,
        })
    }
}

impl ServerTls {
    /// Starts with the configuration loaded at start-up; its metrics are
    /// registered in `registry`.
    pub fn new(settings: TlsSettings, registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        Ok(Arc::new(Self {
            files: settings.files,
            reload_interval: settings.reload_interval,
            current: RwLock::new(settings.initial.config),
            seen: Mutex::new(settings.initial.fingerprint),
            metrics: TlsMetrics::register(registry)?,
        }))
    }

    /// A handshake failed or timed out.
    pub fn handshake_failed(&self) {
        self.metrics.handshake_failures.inc();
    }

    /// A handshake driver over the configuration in force right now; the
    /// connection keeps it whatever reloads come after.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    /// Reloads the files now, changed or not (SIGHUP). On failure the
    /// previous configuration stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let contents = Contents::read(&self.files);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = fingerprint(&contents);
        self.apply(contents, "SIGHUP")
    }

    /// Reloads if the files' contents differ from the last attempt. `None`
    /// when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let contents = Contents::read(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            let now = fingerprint(&contents);
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        Some(self.apply(contents, "files changed"))
    }

    fn apply(&self, contents: Result<Contents, TlsError>, cause: &str) -> Result<(), TlsError> {
        match contents.and_then(|contents| build(&self.files, &contents)) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
                self.metrics.reloads[Reload::Success as usize].inc();
                tracing::info!(
                    cause,
                    cert = %self.files.cert.display(),
                    "TLS certificate reloaded; new connections use it"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads[Reload::Failure as usize].inc();
                tracing::error!(
                    cause,
                    flag = e.flag,
                    file = %e.path.display(),
                    problem = %e.problem,
                    "TLS reload failed; still serving the previous certificate"
                );
                Err(e)
            }
        }
    }

    /// Reloads on every SIGHUP and whenever the files change; runs until
    /// dropped (aborted).
    pub async fn watch(self: Arc<Self>, mut hangup: ReloadSignal) {
        let mut poll = tokio::time::interval(self.reload_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, and the files were just read.
        poll.tick().await;
        loop {
            let forced = tokio::select! {
                () = hangup.recv() => {
                    tracing::info!("SIGHUP received: reloading the TLS certificate");
                    true
                }
                _ = poll.tick() => false,
            };
            // File reads off the runtime threads: the files may sit on a
            // slow or network file system.
            let tls = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if forced {
                    let _ = tls.reload();
                } else {
                    let _ = tls.reload_if_changed();
                }
            })
            .await;
        }
    }
}

/// What the files held at one moment.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |flag: &'static str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| TlsError::new(flag, path, format!("cannot be read: {e}")))
        };
        Ok(Self {
            cert: read("--tls-cert", &files.cert)?,
            key: read("--tls-key", &files.key)?,
            client_ca: match &files.client_ca {
                Some(path) => Some(read("--tls-client-ca", path)?),
                None => None,
            },
        })
    }

    /// One digest of all the files: the key is not kept in memory twice to
    /// tell a change.
    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            match part {
                Some(bytes) => {
                    hasher.update((bytes.len() as u64).to_be_bytes());
                    hasher.update(bytes);
                }
                None => hasher.update(u64::MAX.to_be_bytes()),
            }
        }
        hasher.finalize().into()
    }
}

fn fingerprint(contents: &Result<Contents, TlsError>) -> Fingerprint {
    match contents {
        Ok(contents) => Ok(contents.digest()),
        Err(e) => Err(e.to_string()),
    }
}

/// Builds the server configuration; every error names the file at fault.
fn build(files: &TlsFiles, contents: &Contents) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("--tls-cert", &files.cert, &contents.cert)?;
    let key = private_key(&files.key, &contents.key)?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        TlsError::new(
            "--tls-key",
            &files.key,
            format!("holds an unusable key: {e}"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // ring always knows the public key; an unknown answer cannot come.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::new(
                "--tls-key",
                &files.key,
                format!(
                    "does not match the certificate in {}: give the key the certificate was \
                     issued for",
                    files.cert.display()
                ),
            ));
        }
        Err(e) => {
            return Err(TlsError::new(
                "--tls-cert",
                &files.cert,
                format!("holds a certificate that cannot be parsed: {e}"),
            ));
        }
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("--tls-cert", &files.cert, e.to_string()))?;
    let builder = match (&files.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            builder.with_client_cert_verifier(client_verifier(path, pem, provider)?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Every client must present a certificate signed by a CA in `pem`.
fn client_verifier(
    path: &Path,
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let flag = "--tls-client-ca";
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(flag, path, pem)?), provider)
        .build()
        .map_err(|e| TlsError::new(flag, path, e.to_string()))
}

/// The CAs in the PEM file a client's flag names (`send --ca-file`,
/// `--otlp-ca-file`): what that client trusts instead of the system's
/// roots.
pub fn client_roots(flag: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(path)
        .map_err(|e| TlsError::new(flag, path, format!("cannot be read: {e}")))?;
    roots(flag, path, &pem)
}

fn roots(flag: &'static str, path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(flag, path, pem)? {
        roots.add(cert).map_err(|e| {
            TlsError::new(
                flag,
                path,
                format!("holds a certificate that is not a usable CA: {e}"),
            )
        })?;
    }
    Ok(roots)
}

fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(flag, path, pem_problem(&e)))?;
    if chain.is_empty() {
        return Err(TlsError::new(
            flag,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(chain)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => {
                "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned()
            }
            e => pem_problem(&e),
        };
        TlsError::new("--tls-key", path, problem)
    })
}

/// Describes a PEM error without quoting the file: it may be a key.
fn pem_problem(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { .. } => "is not valid PEM: a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "is not valid PEM: a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "is not valid PEM: a section is not valid base64",
        pem::Error::Io(_) => "cannot be read",
        pem::Error::NoItemsFound => "holds no PEM section",
        pem::Error::SectionTooLarge => "is not valid PEM: a section is too large",
        _ => "is not valid PEM",
    }
    .to_owned()
}
