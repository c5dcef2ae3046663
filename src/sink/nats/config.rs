//! The NATS sink's flags, turned into [`NatsSettings`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::{ConfigError, Secret};
use crate::route::{TopicTemplate, subject_matches};
use crate::sink::SinkContext;

/// Flags under "NATS (--sink nats)" in `--help`.
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Publish through JetStream and answer only after its PubAck; the
    /// event id goes in Nats-Msg-Id so a retried webhook is stored once.
    #[arg(long, env = "APIZEE_BRIDGE_NATS_JETSTREAM")]
    pub nats_jetstream: bool,

    /// Create this JetStream stream on "<prefix>.>" at start-up if it does
    /// not exist (needs --nats-jetstream). An existing stream is left as is.
    #[arg(long, env = "APIZEE_BRIDGE_NATS_STREAM", value_name = "NAME")]
    pub nats_stream: Option<String>,

    /// NATS credentials file (JWT and nkey seed).
    #[arg(long, env = "APIZEE_BRIDGE_NATS_CREDS_FILE", value_name = "PATH")]
    pub nats_creds_file: Option<PathBuf>,

    /// NATS nkey seed (SU...). Prefer the env var to the flag.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_NATS_NKEY_SEED",
        value_name = "SEED",
        hide_env_values = true
    )]
    pub nats_nkey_seed: Option<String>,

    /// NATS token. Prefer the env var to the flag.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_NATS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub nats_token: Option<String>,

    /// NATS user name (with --nats-password).
    #[arg(long, env = "APIZEE_BRIDGE_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,

    /// NATS password. Prefer the env var to the flag.
    #[arg(
        long,
        env = "APIZEE_BRIDGE_NATS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,

    /// CA certificate (PEM) to verify the NATS server; turns TLS on.
    #[arg(long, env = "APIZEE_BRIDGE_NATS_CA_FILE", value_name = "PATH")]
    pub nats_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for NATS mutual TLS (with --nats-client-key).
    #[arg(long, env = "APIZEE_BRIDGE_NATS_CLIENT_CERT", value_name = "PATH")]
    pub nats_client_cert: Option<PathBuf>,

    /// Client private key (PEM) for NATS mutual TLS.
    #[arg(long, env = "APIZEE_BRIDGE_NATS_CLIENT_KEY", value_name = "PATH")]
    pub nats_client_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub urls: Vec<String>,
    pub jetstream: bool,
    /// The stream `--nats-stream` creates, if asked.
    pub stream: Option<StreamSettings>,
    pub auth: NatsAuth,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub publish_timeout: Duration,
}

/// A JetStream stream the bridge creates when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    pub name: String,
    /// The template's subject filter first, then the dead-letter subject
    /// when the filter does not already capture it.
    pub subjects: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum NatsAuth {
    None,
    CredsFile(PathBuf),
    NkeySeed(Secret),
    Token(Secret),
    UserPassword { user: String, password: Secret },
}

impl NatsArgs {
    pub fn settings(self, context: &SinkContext<'_>) -> Result<NatsSettings, ConfigError> {
        let urls: Vec<String> = self
            .nats_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err(ConfigError::new("--nats-url", "names no server"));
        }
        let stream = match self.nats_stream {
            None => None,
            Some(_) if !self.nats_jetstream => {
                return Err(ConfigError::new(
                    "--nats-stream",
                    "needs --nats-jetstream: only JetStream publishes are stored",
                ));
            }
            Some(name) => Some(StreamSettings {
                subjects: stream_subjects(context.template, context.dead_letter_topic)?,
                name,
            }),
        };
        let auth = nats_auth(
            self.nats_creds_file,
            self.nats_nkey_seed,
            self.nats_token,
            self.nats_user,
            self.nats_password,
        )?;
        let client_cert = match (self.nats_client_cert, self.nats_client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "--nats-client-cert",
                    "needs --nats-client-key",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "--nats-client-key",
                    "needs --nats-client-cert",
                ));
            }
        };
        Ok(NatsSettings {
            urls,
            jetstream: self.nats_jetstream,
            stream,
            auth,
            ca_file: self.nats_ca_file,
            client_cert,
            publish_timeout: context.publish_timeout,
        })
    }
}

/// The template's subject filter, and the dead-letter subject when the
/// filter does not capture it already (a stream refuses overlapping
/// subjects).
fn stream_subjects(
    template: &TopicTemplate,
    dead_letter_topic: Option<&str>,
) -> Result<Vec<String>, ConfigError> {
    let filter = template.subject_filter().ok_or_else(|| {
        ConfigError::new(
            "--nats-stream",
            format!(
                "the topic template {template} does not start with a fixed token, so no \
                 stream subject can cover it without capturing every subject"
            ),
        )
    })?;
    let mut subjects = vec![filter];
    if let Some(dead_letter) = dead_letter_topic
        && !subject_matches(&subjects[0], dead_letter)
    {
        subjects.push(dead_letter.to_owned());
    }
    Ok(subjects)
}

fn nats_auth(
    creds_file: Option<PathBuf>,
    nkey_seed: Option<String>,
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
) -> Result<NatsAuth, ConfigError> {
    let mut chosen = [
        ("--nats-creds-file", creds_file.is_some()),
        ("--nats-nkey-seed", nkey_seed.is_some()),
        ("--nats-token", token.is_some()),
        ("--nats-user", user.is_some()),
        ("--nats-password", user.is_none() && password.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, set)| set.then_some(flag));
    // Name a flag that was actually given, not one the user never set.
    if let (Some(first), Some(_)) = (chosen.next(), chosen.next()) {
        return Err(ConfigError::new(
            first,
            "choose one NATS authentication: --nats-creds-file, --nats-nkey-seed, \
             --nats-token, or --nats-user with --nats-password",
        ));
    }
    Ok(match (creds_file, nkey_seed, token, user, password) {
        (Some(path), ..) => NatsAuth::CredsFile(path),
        (_, Some(seed), ..) => NatsAuth::NkeySeed(Secret::new(seed)),
        (_, _, Some(token), ..) => NatsAuth::Token(Secret::new(token)),
        (_, _, _, Some(user), Some(password)) => NatsAuth::UserPassword {
            user,
            password: Secret::new(password),
        },
        (_, _, _, Some(_), None) => {
            return Err(ConfigError::new("--nats-user", "needs --nats-password"));
        }
        (_, _, _, None, Some(_)) => {
            return Err(ConfigError::new("--nats-password", "needs --nats-user"));
        }
        (None, None, None, None, None) => NatsAuth::None,
    })
}
