//! Secrets rotated without a restart: the files behind `--auth-token-file`,
//! `--basic-auth-file` and `--hmac-secret-file` are read again on SIGHUP and
//! whenever their contents change, as the TLS files are.
//!
//! The [`Guard`] in force sits behind an [`ArcSwap`] ([`LiveGuard`]): a
//! request loads the current one without a lock, and a reload swaps in a
//! whole new one. The new one is built by the very checks start-up ran on
//! the same flags ([`AuthArgs::settings`]), so a file a reload accepts is
//! exactly a file start-up would have accepted, and the secrets given as
//! flags or environment variables are merged with the file's as at start.
//! Rebuilding the header names and the source filter along with the secret
//! sets costs microseconds, once per change; keeping one way to build a
//! Guard is worth more than sparing them.
//!
//! The files are read every `--auth-reload-interval` and compared by
//! digest: polling sees every way a file gets replaced, including the
//! `..data` symlink swap of a Kubernetes Secret volume. A reload that fails
//! (a file unreadable, empty of entries, or malformed) keeps the previous
//! Guard, logs the flag and the file (never the contents) and counts it.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::{Gauge, IntCounter, IntCounterVec, Registry};
use sha2::{Digest, Sha256};

use super::Guard;
use super::config::AuthArgs;
use crate::config::ConfigError;
use crate::metrics::{Registered, opts};
use crate::shutdown::ReloadSignal;

/// The [`Guard`] in force; clones share it, so a reload reaches every
/// holder.
#[derive(Clone)]
pub struct LiveGuard(Arc<ArcSwap<Guard>>);

impl fmt::Debug for LiveGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Guard's own Debug shows counts and header names, never secrets.
        f.debug_tuple("LiveGuard").field(&*self.current()).finish()
    }
}

impl LiveGuard {
    pub fn new(guard: Guard) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(guard)))
    }

    /// The Guard in force now; a request keeps this one until it is done
    /// with it, whatever reloads come meanwhile.
    pub fn current(&self) -> arc_swap::Guard<Arc<Guard>> {
        self.0.load()
    }

    fn replace(&self, guard: Guard) {
        self.0.store(Arc::new(guard));
    }
}

/// The authentication flags as given, when at least one secret comes from
/// a file: what a reload rebuilds the Guard from.
#[derive(Clone)]
pub struct SecretFiles {
    args: Arc<AuthArgs>,
    /// Each file and the flag that names it.
    files: Vec<(&'static str, PathBuf)>,
    pub reload_interval: Duration,
}

impl fmt::Debug for SecretFiles {
    // The flags hold secrets: only the files and the interval are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretFiles")
            .field("files", &self.files)
            .field("reload_interval", &self.reload_interval)
            .finish_non_exhaustive()
    }
}

impl SecretFiles {
    /// `None` when no secret comes from a file: nothing to reload.
    pub(super) fn new(args: AuthArgs, reload_interval: Duration) -> Option<Self> {
        let files: Vec<(&'static str, PathBuf)> = [
            ("--auth-token-file", args.auth_token_file.clone()),
            ("--basic-auth-file", args.basic_auth_file.clone()),
            ("--hmac-secret-file", args.hmac_secret_file.clone()),
        ]
        .into_iter()
        .filter_map(|(flag, path)| Some((flag, path?)))
        .collect();
        if files.is_empty() {
            return None;
        }
        Some(Self {
            args: Arc::new(args),
            files,
            reload_interval,
        })
    }

    /// One digest of every file, or why one cannot be read: a change of
    /// either is worth a reload attempt, the same one twice is not.
    fn fingerprint(&self) -> Fingerprint {
        let mut hasher = Sha256::new();
        for (flag, path) in &self.files {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("{flag} {} cannot be read: {e}", path.display()))?;
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(&bytes);
        }
        Ok(hasher.finalize().into())
    }
}

type Fingerprint = Result<[u8; 32], String>;

named_enum! {
    /// The `result` label of `apizee_bridge_auth_reloads_total`.
    pub enum Reload {
        Success => "success",
        /// The previous secrets stay in force.
        Failure => "failure",
    }
}

/// Registered only when a secret comes from a file, as the TLS reload
/// metrics are only with TLS.
struct ReloadMetrics {
    /// By [`Reload`].
    reloads: [IntCounter; Reload::ALL.len()],
    last_success: Gauge,
}

impl ReloadMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reloads = IntCounterVec::new(
            opts(
                "auth_reloads_total",
                "Reloads of the secret files (--auth-token-file, --basic-auth-file, \
                 --hmac-secret-file) on SIGHUP or a change, by result (success, failure: \
                 the previous secrets stay).",
            ),
            &["result"],
        )?
        .registered(registry)?;
        Ok(Self {
            reloads: Reload::ALL.map(|result| reloads.with_label_values(&[result.as_str()])),
            last_success: Gauge::with_opts(opts(
                "auth_last_reload_success_timestamp_seconds",
                "When the secret files were last loaded successfully (start-up or reload), \
                 in UNIX seconds.",
            ))?
            .registered(registry)?,
        })
    }

    fn succeeded(&self) {
        self.reloads[Reload::Success as usize].inc();
        self.mark_loaded();
    }

    fn mark_loaded(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_success.set(now.as_secs_f64());
    }
}

/// Reloads the secret files into a [`LiveGuard`].
pub struct AuthReloader {
    files: SecretFiles,
    guard: LiveGuard,
    /// What the files held at the last reload attempt, successful or not.
    seen: Mutex<Fingerprint>,
    metrics: ReloadMetrics,
}

impl AuthReloader {
    /// Starts from the Guard start-up built from the same files; its
    /// metrics are registered in `registry`.
    pub fn new(
        files: SecretFiles,
        guard: LiveGuard,
        registry: &Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let metrics = ReloadMetrics::register(registry)?;
        // Start-up has just loaded them.
        metrics.mark_loaded();
        Ok(Arc::new(Self {
            seen: Mutex::new(files.fingerprint()),
            files,
            guard,
            metrics,
        }))
    }

    pub fn reload_interval(&self) -> Duration {
        self.files.reload_interval
    }

    /// Reloads now, changed or not (SIGHUP). On failure the previous
    /// secrets stay in force.
    pub fn reload(&self) -> Result<(), ConfigError> {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = self.files.fingerprint();
        self.apply("SIGHUP")
    }

    /// Reloads if the files' contents differ from the last attempt. `None`
    /// when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), ConfigError>> {
        let now = self.files.fingerprint();
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        // The files are read again to build the Guard: if they changed in
        // between, the digest kept is the older one, so the next poll
        // reloads once more and the newest contents win.
        Some(self.apply("files changed"))
    }

    fn apply(&self, cause: &str) -> Result<(), ConfigError> {
        match self.files.args.settings() {
            Ok(guard) => {
                self.guard.replace(guard);
                self.metrics.succeeded();
                tracing::info!(
                    cause,
                    files = ?self.files.files,
                    "secret files reloaded; new requests are checked against them"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads[Reload::Failure as usize].inc();
                // The reason names the flag and the file, and says what is
                // wrong with it, never what it holds.
                tracing::warn!(
                    cause,
                    flag = e.flag,
                    problem = %e.reason,
                    "reloading the secret files failed; the previous secrets stay in force"
                );
                Err(e)
            }
        }
    }

    /// Reloads on every SIGHUP and whenever the files change; runs until
    /// dropped (aborted).
    pub async fn watch(self: Arc<Self>, mut hangup: ReloadSignal) {
        let mut poll = tokio::time::interval(self.files.reload_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, and the files were just read.
        poll.tick().await;
        loop {
            let forced = tokio::select! {
                () = hangup.recv() => {
                    tracing::info!("SIGHUP received: reloading the secret files");
                    true
                }
                _ = poll.tick() => false,
            };
            // File reads off the runtime threads: the files may sit on a
            // slow or network file system.
            let reloader = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if forced {
                    let _ = reloader.reload();
                } else {
                    let _ = reloader.reload_if_changed();
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;
    use http::{HeaderMap, HeaderValue};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        auth: AuthArgs,
    }

    fn args(args: &[&str]) -> AuthArgs {
        Cli::try_parse_from(std::iter::once("apizee-bridge").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"))
            .auth
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// A reloader over a token file holding `tokens`, and `--auth-token
    /// fixed` from the flag.
    fn token_reloader(dir: &Path, tokens: &str) -> (Arc<AuthReloader>, LiveGuard, PathBuf) {
        let file = dir.join("tokens");
        write(&file, tokens);
        let args = args(&[
            "--auth-header",
            "X-Token",
            "--auth-token",
            "fixed",
            "--auth-token-file",
            &file.to_string_lossy(),
        ]);
        let guard = LiveGuard::new(args.settings().unwrap_or_else(|e| panic!("{e}")));
        let files = args
            .secret_files()
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a token file, yet nothing to reload"));
        let reloader = AuthReloader::new(files, guard.clone(), &Registry::new())
            .unwrap_or_else(|e| panic!("{e}"));
        (reloader, guard, file)
    }

    fn allows(guard: &LiveGuard, token: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-token",
            HeaderValue::from_str(token).unwrap_or_else(|e| panic!("{e}")),
        );
        guard
            .current()
            .check_request([127, 0, 0, 1].into(), &headers)
            .is_ok()
    }

    fn count(reloader: &AuthReloader, result: Reload) -> u64 {
        reloader.metrics.reloads[result as usize].get()
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_added_token_is_accepted_and_a_removed_one_refused() {
        let dir = tempdir();
        let (reloader, guard, file) = token_reloader(dir.path(), "old\n");
        assert!(allows(&guard, "old") && !allows(&guard, "new"));
        assert!(
            reloader.reload_if_changed().is_none(),
            "nothing changed yet"
        );

        write(&file, "old\nnew\n");
        assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
        assert!(allows(&guard, "old") && allows(&guard, "new"));

        write(&file, "# old is gone\nnew\n");
        assert!(matches!(reloader.reload_if_changed(), Some(Ok(()))));
        assert!(!allows(&guard, "old"), "a removed token is still accepted");
        assert!(allows(&guard, "new"));
        assert!(allows(&guard, "fixed"), "the flag's token is kept");
        assert_eq!(count(&reloader, Reload::Success), 2);
        assert_eq!(count(&reloader, Reload::Failure), 0);
        assert!(reloader.metrics.last_success.get() > 0.0);
    }

    #[test]
    fn a_broken_file_keeps_the_previous_secrets_and_is_counted() {
        let dir = tempdir();
        let (reloader, guard, file) = token_reloader(dir.path(), "old\n");
        let loaded_at = reloader.metrics.last_success.get();

        write(&file, "# nothing but comments\n\n");
        let Some(Err(e)) = reloader.reload_if_changed() else {
            panic!("an empty file reloaded");
        };
        assert_eq!(e.flag, "--auth-token-file");
        assert!(allows(&guard, "old"), "the previous token was dropped");
        assert!(!allows(&guard, "wrong"), "the check was turned off");
        assert!(reloader.reload_if_changed().is_none(), "counted once");

        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(reloader.reload_if_changed(), Some(Err(_))));
        assert!(allows(&guard, "old"));
        assert_eq!(count(&reloader, Reload::Failure), 2);
        assert_eq!(count(&reloader, Reload::Success), 0);
        assert_eq!(reloader.metrics.last_success.get(), loaded_at);
    }

    #[test]
    fn a_forced_reload_reads_unchanged_files_too() {
        let dir = tempdir();
        let (reloader, guard, _file) = token_reloader(dir.path(), "old\n");
        assert!(reloader.reload().is_ok());
        assert!(allows(&guard, "old"));
        assert_eq!(count(&reloader, Reload::Success), 1);
    }

    #[test]
    fn a_malformed_basic_file_keeps_the_previous_credentials() {
        let dir = tempdir();
        let file = dir.path().join("basic");
        write(&file, "apizee:old\n");
        let args = args(&["--basic-auth-file", &file.to_string_lossy()]);
        let guard = LiveGuard::new(args.settings().unwrap_or_else(|e| panic!("{e}")));
        let files = args.secret_files().ok().flatten();
        let reloader = AuthReloader::new(
            files.unwrap_or_else(|| panic!("nothing to reload")),
            guard.clone(),
            &Registry::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        write(&file, "no colon here\n");
        let Some(Err(e)) = reloader.reload_if_changed() else {
            panic!("a line without ':' reloaded");
        };
        assert_eq!(e.flag, "--basic-auth-file");
        assert!(!e.reason.contains("no colon here"), "{}", e.reason);
        let basic = |pair: &str| {
            use base64::Engine as _;
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            );
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&value).unwrap_or_else(|e| panic!("{e}")),
            );
            guard
                .current()
                .check_request([127, 0, 0, 1].into(), &headers)
                .is_ok()
        };
        assert!(basic("apizee:old"));
        assert_eq!(count(&reloader, Reload::Failure), 1);
    }

    #[test]
    fn nothing_to_reload_without_a_file() {
        let args = args(&["--auth-header", "X-Token", "--auth-token", "fixed"]);
        assert!(matches!(args.secret_files(), Ok(None)));
    }
}
