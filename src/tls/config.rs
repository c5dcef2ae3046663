//! The listener's TLS flags, turned into loaded and checked [`TlsSettings`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{TlsFiles, TlsSettings};
use crate::config::{ConfigError, parse_duration};

/// Flags under "TLS" in `--help`.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Certificate chain (PEM, leaf first) to serve webhooks over TLS
    /// (with --tls-key); HTTP/2 and HTTP/1.1 are offered by ALPN. Reloaded
    /// on SIGHUP and when the file changes; open connections keep theirs.
    #[arg(long, env = "APIZEE_BRIDGE_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "APIZEE_BRIDGE_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate(s) (PEM): every client must present a certificate
    /// signed by one of them, or the TLS handshake is refused. Needs
    /// --tls-cert.
    #[arg(long, env = "APIZEE_BRIDGE_TLS_CLIENT_CA", value_name = "PATH")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files are read to see whether they changed; a
    /// change (or SIGHUP) reloads them. A failed reload keeps the previous
    /// certificate.
    #[arg(long, env = "APIZEE_BRIDGE_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
}

impl TlsArgs {
    /// Reads and checks the files: call it last, after every check that
    /// reads nothing.
    pub fn settings(self) -> Result<Option<TlsSettings>, ConfigError> {
        let (cert, key) = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(ConfigError::new(
                    "--tls-client-ca",
                    "needs --tls-cert and --tls-key: client certificates are only asked for over TLS",
                ));
            }
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "--tls-cert",
                    "needs --tls-key: give the certificate's private key (PEM) too",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "--tls-key",
                    "needs --tls-cert: give the certificate chain (PEM) the key belongs to",
                ));
            }
        };
        if self.tls_reload_interval.is_zero() {
            return Err(ConfigError::new(
                "--tls-reload-interval",
                "must be more than 0",
            ));
        }
        let files = TlsFiles {
            cert,
            key,
            client_ca: self.tls_client_ca,
        };
        TlsSettings::load(files, self.tls_reload_interval)
            .map(Some)
            .map_err(|e| ConfigError::new(e.flag, e.to_string()))
    }
}
