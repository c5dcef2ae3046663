//! The authentication flags, turned into the [`Guard`] every webhook
//! passes: source addresses, User-Agent, a shared secret or Basic
//! credentials on the headers, an HMAC signature of the body.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{
    BasicAuth, Cidr, Guard, SecretFiles, SharedSecret, Signature, SignatureEncoding, SourceFilter,
};
use crate::config::{ConfigError, Secret, parse_duration};

/// Flags under "Authentication" in `--help`.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Request header that must carry a shared secret (set as a custom
    /// header in the Apizee console). With "Authorization", a "Bearer "
    /// prefix is accepted.
    #[arg(long, env = "APIZEE_BRIDGE_AUTH_HEADER", value_name = "NAME")]
    pub auth_header: Option<String>,

    /// Accepted secret(s); repeat the flag or separate with commas to rotate.
    /// Prefer the env var or --auth-token-file to the flag.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_AUTH_TOKEN",
        value_name = "TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_token: Vec<String>,

    /// File with accepted secrets, one per line (blank lines and # comments
    /// ignored).
    #[arg(long, env = "APIZEE_BRIDGE_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// Accepted HTTP Basic credentials, as USER:PASSWORD; repeat the flag or
    /// separate with commas. Prefer --basic-auth-file, which also allows
    /// commas in passwords.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_BASIC_AUTH",
        value_name = "USER:PASSWORD",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub basic_auth: Vec<String>,

    /// File with accepted HTTP Basic credentials, one USER:PASSWORD per line
    /// (blank lines and # comments ignored).
    #[arg(long, env = "APIZEE_BRIDGE_BASIC_AUTH_FILE", value_name = "PATH")]
    pub basic_auth_file: Option<PathBuf>,

    /// Require an HMAC-SHA256 signature of the raw body, made with this key,
    /// in --hmac-header. Repeat the flag or separate with commas to rotate
    /// keys. Prefer the env var or --hmac-secret-file to the flag.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_HMAC_SECRET",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub hmac_secret: Vec<String>,

    /// File with HMAC keys, one per line (blank lines and # comments ignored).
    #[arg(long, env = "APIZEE_BRIDGE_HMAC_SECRET_FILE", value_name = "PATH")]
    pub hmac_secret_file: Option<PathBuf>,

    /// Request header that carries the HMAC signature, optionally prefixed
    /// by "sha256=".
    #[arg(
        long,
        env = "APIZEE_BRIDGE_HMAC_HEADER",
        value_name = "NAME",
        default_value = "X-Signature"
    )]
    pub hmac_header: String,

    /// How the signature is written in --hmac-header.
    #[arg(long, env = "APIZEE_BRIDGE_HMAC_ENCODING", value_enum, default_value_t = SignatureEncoding::Hex)]
    pub hmac_encoding: SignatureEncoding,

    /// Request header with the time of signing, in UNIX seconds. When set,
    /// the signed bytes are "<timestamp>.<body>" and a request whose
    /// timestamp is further than --hmac-tolerance from now is refused, so a
    /// captured request cannot be replayed later.
    #[arg(long, env = "APIZEE_BRIDGE_HMAC_TIMESTAMP_HEADER", value_name = "NAME")]
    pub hmac_timestamp_header: Option<String>,

    /// Largest accepted difference between --hmac-timestamp-header and the
    /// bridge's clock, either way.
    #[arg(long, env = "APIZEE_BRIDGE_HMAC_TOLERANCE", default_value = "5m", value_parser = parse_duration)]
    pub hmac_tolerance: Duration,

    /// Accept webhooks only from these client addresses (CIDR ranges or
    /// single addresses); repeat the flag or separate with commas. Others get
    /// 403.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_ALLOW_CIDR",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_cidr: Vec<String>,

    /// Proxies and load balancers whose X-Forwarded-For is believed when
    /// checking --allow-cidr (CIDR ranges or addresses; repeat or separate
    /// with commas). From any other peer, the connection's own address is
    /// the client.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<String>,

    /// Accept webhooks only with a User-Agent that starts with this text (the
    /// platform sends "Cloud Apizee"); others get 403. A filter against stray
    /// traffic, not authentication: any client can send it.
    #[arg(long, env = "APIZEE_BRIDGE_REQUIRE_USER_AGENT", value_name = "TEXT")]
    pub require_user_agent: Option<String>,

    /// How often --auth-token-file, --basic-auth-file and --hmac-secret-file
    /// are read to see whether they changed; a change (or SIGHUP) reloads
    /// them. A failed reload keeps the previous secrets.
    #[arg(long, env = "APIZEE_BRIDGE_AUTH_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub auth_reload_interval: Duration,
}

/// The first credential of each kind these flags accept, to sign requests
/// with (`apizee-bridge send`): what a sender configured like the platform
/// would present.
pub struct Credentials {
    shared_secret: Option<(http::HeaderName, Secret)>,
    basic: Option<Secret>,
    signature: Option<Signing>,
}

struct Signing {
    header: http::HeaderName,
    encoding: SignatureEncoding,
    key: ring::hmac::Key,
    timestamp: Option<http::HeaderName>,
}

impl Credentials {
    /// The headers that authenticate `body`, sent at `now`.
    pub fn headers(
        &self,
        body: &[u8],
        now: std::time::SystemTime,
    ) -> Vec<(http::HeaderName, String)> {
        let mut headers = Vec::new();
        if let Some((name, token)) = &self.shared_secret {
            let value = if name == http::header::AUTHORIZATION {
                format!("Bearer {}", token.expose())
            } else {
                token.expose().to_owned()
            };
            headers.push((name.clone(), value));
        }
        if let Some(pair) = &self.basic {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair.expose());
            headers.push((http::header::AUTHORIZATION, format!("Basic {encoded}")));
        }
        if let Some(signing) = &self.signature {
            let seconds = now
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                .to_string();
            let timestamp = signing.timestamp.as_ref().map(|_| seconds.as_bytes());
            let tag = super::signature::tag(&signing.key, timestamp, body);
            headers.push((
                signing.header.clone(),
                super::signature::encode(signing.encoding, &tag),
            ));
            if let Some(name) = &signing.timestamp {
                headers.push((name.clone(), seconds));
            }
        }
        headers
    }

    /// Whether any credential is configured.
    pub fn is_empty(&self) -> bool {
        self.shared_secret.is_none() && self.basic.is_none() && self.signature.is_none()
    }
}

impl AuthArgs {
    /// Checks the flags as serving does, then keeps the first secret of
    /// each kind.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        self.settings()?;
        let first = |flag, entry, values: &[String], file: Option<&std::path::Path>| {
            read_secrets(flag, entry, values, file).map(|s| s.into_iter().next())
        };
        let token = first(
            "--auth-token-file",
            "token",
            &self.auth_token,
            self.auth_token_file.as_deref(),
        )?;
        let shared_secret = match (&self.auth_header, token) {
            (Some(name), Some(token)) => Some((header_name("--auth-header", name)?, token)),
            _ => None,
        };
        let basic = first(
            "--basic-auth-file",
            "USER:PASSWORD line",
            &self.basic_auth,
            self.basic_auth_file.as_deref(),
        )?;
        let key = first(
            "--hmac-secret-file",
            "key",
            &self.hmac_secret,
            self.hmac_secret_file.as_deref(),
        )?;
        let signature = match key {
            Some(key) => Some(Signing {
                header: header_name("--hmac-header", &self.hmac_header)?,
                encoding: self.hmac_encoding,
                key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose().as_bytes()),
                timestamp: self
                    .hmac_timestamp_header
                    .as_deref()
                    .map(|name| header_name("--hmac-timestamp-header", name))
                    .transpose()?,
            }),
            None => None,
        };
        Ok(Credentials {
            shared_secret,
            basic,
            signature,
        })
    }

    /// What reloads the secret files, when any is given: call it after
    /// [`Self::settings`], which checks the files themselves.
    pub fn secret_files(&self) -> Result<Option<SecretFiles>, ConfigError> {
        if self.auth_reload_interval.is_zero() {
            return Err(ConfigError::new(
                "--auth-reload-interval",
                "must be more than 0",
            ));
        }
        Ok(SecretFiles::new(self.clone(), self.auth_reload_interval))
    }

    pub fn settings(&self) -> Result<Guard, ConfigError> {
        let shared_secret = shared_secret(
            self.auth_header.as_deref(),
            &self.auth_token,
            self.auth_token_file.as_deref(),
        )?;

        let basic_pairs = read_secrets(
            "--basic-auth-file",
            "USER:PASSWORD line",
            &self.basic_auth,
            self.basic_auth_file.as_deref(),
        )?;
        let basic = if basic_pairs.is_empty() {
            None
        } else {
            let flag = if self.basic_auth_file.is_some() {
                "--basic-auth-file"
            } else {
                "--basic-auth"
            };
            if shared_secret
                .as_ref()
                .is_some_and(|s| s.header() == http::header::AUTHORIZATION)
            {
                return Err(ConfigError::new(
                    flag,
                    "cannot be combined with --auth-header Authorization: both need the \
                 Authorization header; name another header for the shared secret",
                ));
            }
            Some(BasicAuth::new(&basic_pairs).map_err(|e| ConfigError::new(flag, e.to_string()))?)
        };

        let hmac_keys = read_secrets(
            "--hmac-secret-file",
            "key",
            &self.hmac_secret,
            self.hmac_secret_file.as_deref(),
        )?;
        let signature = if hmac_keys.is_empty() {
            if self.hmac_timestamp_header.is_some() {
                return Err(ConfigError::new(
                    "--hmac-timestamp-header",
                    "needs a key: set --hmac-secret or --hmac-secret-file",
                ));
            }
            None
        } else {
            let header = header_name("--hmac-header", &self.hmac_header)?;
            let timestamp = match &self.hmac_timestamp_header {
                Some(name) => {
                    if self.hmac_tolerance.is_zero() {
                        return Err(ConfigError::new("--hmac-tolerance", "must be more than 0"));
                    }
                    Some((
                        header_name("--hmac-timestamp-header", name)?,
                        self.hmac_tolerance,
                    ))
                }
                None => None,
            };
            Some(Signature::new(
                header,
                self.hmac_encoding,
                &hmac_keys,
                timestamp,
            ))
        };

        let allow = cidrs("--allow-cidr", &self.allow_cidr)?;
        let trusted_proxies = cidrs("--trusted-proxy", &self.trusted_proxy)?;
        let source = match (allow.is_empty(), trusted_proxies.is_empty()) {
            (true, true) => None,
            (true, false) => {
                return Err(ConfigError::new(
                    "--trusted-proxy",
                    "only takes effect with --allow-cidr: add the client ranges to accept",
                ));
            }
            (false, _) => Some(SourceFilter::new(allow, trusted_proxies)),
        };

        let user_agent = match self.require_user_agent.as_deref() {
            None => None,
            Some("") => {
                return Err(ConfigError::new(
                    "--require-user-agent",
                    "is empty, which every request matches: give the expected text, such as \
                 \"Cloud Apizee\"",
                ));
            }
            Some(text) => Some(text.to_owned()),
        };

        Ok(Guard {
            source,
            user_agent,
            shared_secret,
            basic,
            signature,
        })
    }
}

fn header_name(flag: &'static str, name: &str) -> Result<http::HeaderName, ConfigError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ConfigError::new(flag, format!("{name:?} is not a valid HTTP header name")))
}
fn cidrs(flag: &'static str, values: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<Cidr>()
                .map_err(|e| ConfigError::new(flag, e.to_string()))
        })
        .collect()
}
/// Secrets from a repeatable flag plus a file of one per line. An empty or
/// commented-out file is an error: it must not silently turn a check off.
fn read_secrets(
    file_flag: &'static str,
    entry: &str,
    values: &[String],
    file: Option<&std::path::Path>,
) -> Result<Vec<Secret>, ConfigError> {
    let mut secrets: Vec<Secret> = values
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| Secret::new(t.clone()))
        .collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(file_flag, format!("cannot read {}: {e}", path.display()))
        })?;
        let before = secrets.len();
        secrets.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| Secret::new(l.to_owned())),
        );
        if secrets.len() == before {
            return Err(ConfigError::new(
                file_flag,
                format!("{} holds no {entry}", path.display()),
            ));
        }
    }
    Ok(secrets)
}
fn shared_secret(
    header: Option<&str>,
    tokens: &[String],
    token_file: Option<&std::path::Path>,
) -> Result<Option<SharedSecret>, ConfigError> {
    let secrets = read_secrets("--auth-token-file", "token", tokens, token_file)?;
    match (header, secrets.is_empty()) {
        (None, true) => Ok(None),
        (None, false) => Err(ConfigError::new(
            "--auth-header",
            "is required with --auth-token or --auth-token-file: name the header that carries the secret",
        )),
        (Some(_), true) => Err(ConfigError::new(
            "--auth-token",
            "no token given for --auth-header: set --auth-token or --auth-token-file",
        )),
        (Some(name), false) => SharedSecret::new(name, secrets)
            .map(Some)
            .map_err(|e| ConfigError::new("--auth-header", e.to_string())),
    }
}
