//! apizee-bridge receives Apizee (ApiRTC) webhooks and publishes each one to
//! a message broker, answering the sender only once the broker has it.
//!
//! ```text
//! request ─► http::server ─► http::handler
//!            (accept, TLS,     │ auth on the headers ─► a budget slot ─► media type, length
//!             drain)           │ read the body (≤ --max-body-bytes) ─► auth on the signature
//!                              │      └─► 400/401/403/404/405/408/413/415/429, JSON body
//!                              ▼
//!   envelope::parse ─► route::build_message ─► delivery ─► sink::publish ─► ack ─► 200
//!        │ 400/422                               │   └─► spool (fsync) ──────────► 202
//!        ▼                                       │        └─► replayed in order once the broker is back
//!   dead_letter: queued, published               └─► 503 + Retry-After
//!   in the background through delivery
//! ```
//!
//! Every refusal is an [`http::rejection::Rejection`], whose kind declares
//! its answer.
//!
//! [`run`] puts it together: `main` parses the flags into
//! [`settings::Settings`], sets up logging, binds the [`Listeners`], and calls
//! `run`, which is [`Service::build`] (every part built once, each
//! registering its own metrics) then [`Service::serve`] (serve until the
//! shutdown signal, then stop the parts in a documented order, through
//! [`shutdown::Tasks`]). Tests build and serve the same [`Service`], with a
//! memory sink in place of the broker when they want one ([`Overrides`]).
//!
//! `main` runs a subcommand instead when one is given ([`commands::run`]).
//!
//! Each part owns its flags (a clap group under its own heading in
//! `--help`), its settings, its metrics and its tests. The parts are
//! layered: each imports only parts of the layers below it, never one
//! beside or above (`.ci/run` fails on an import cycle between them, with
//! `cargo modules dependencies --acyclic`). From the top:
//!
//! 1. The composition, imported by nothing in the crate:
//!    - this file: [`Service`], built from [`settings::Settings`];
//!    - [`commands`]: the command line ([`commands::Cli`]) and the
//!      operator's tools (`check`, `send`, `tail`, `redrive`, `spool drain`,
//!      `completions`, `man`);
//!    - [`settings`]: every part's flag group put together into one
//!      [`settings::ServiceArgs`], checked into [`settings::Settings`].
//! 2. The edge: [`http`]: the listeners ([`http::server`]: accept loop, TLS
//!    handshakes, the drain), the request handler that reads the data path
//!    top to bottom, the in-flight budgets, the rejection table, the edge's
//!    metrics ([`http::metrics`]); its flags in [`http::config`].
//! 3. What the edge hands webhooks and refusals to:
//!    - [`dead_letter`]: refused requests, queued and published in the
//!      background through delivery;
//!    - [`otlp`]: the bridge's own spans, exported over OTLP, with its flags.
//! 4. [`delivery`]: the bounded publish, the start-up wait, the spool and its
//!    replay; publish and spool metrics.
//! 5. Where messages go:
//!    - [`sink`]: the one trait every broker implements and the choice of
//!      one (`--sink`); [`sink::nats`] and [`sink::kafka`] are folders with
//!      their flags and their tools (`check.rs`, `tap.rs`, `redrive.rs`)
//!      beside them, speaking [`sink::check`], [`sink::tap`] and
//!      [`sink::redrive`]; stdout for development, memory for tests;
//!    - [`spool`]: the durable, fsynced queue on local disk (redb).
//! 6. [`route`]: envelope to topic, key, headers and the untouched payload;
//!    the template and strictness flags in [`route::config`], CloudEvents in
//!    [`route::cloudevents`].
//! 7. Values and checks that need only the leaves:
//!    - [`auth`]: who may send: checks on the headers, then the body's
//!      signature; flags in [`auth::config`]; the secret files' reloading
//!      in [`auth::reload`];
//!    - [`tls`]: the listener's optional TLS, its reloading and its metrics;
//!    - [`trace`]: W3C trace context, from the request into its message.
//! 8. The leaves, which import nothing of the crate:
//!    - [`envelope`]: body bytes to a validated envelope, or every problem
//!      found; the object types, events and enum fields, each declared once;
//!    - [`config`]: what every part's settings share ([`config::Secret`],
//!      [`config::ConfigError`], durations);
//!    - [`metrics`]: the registry every part registers its metrics in;
//!    - [`hex`], [`logging`] (text or JSON logs on stderr), [`shutdown`]
//!      (the SIGTERM / SIGINT signal, SIGHUP for the reloaders, and the
//!      task groups that stop in turn).
//!
//! The pure middle (`envelope`, `route`) has no I/O and is unit-tested; the
//! edges take their listeners and shutdown signal as values, so tests run
//! the whole service in-process on port 0.

/// Declares an enum whose variants have fixed names (on the wire, in
/// topics, as metric label values) from one list: the variants, their
/// names, `ALL` in declaration order, and the parser. Adding a variant is
/// one line in that list; everything that enumerates them (topics made in
/// advance, metric series that exist from the start, error messages)
/// follows.
macro_rules! named_enum {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[$variant_meta:meta])* $variant:ident => $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        #[allow(dead_code)] // not every enum needs its parser or its names
        impl $name {
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The variant's name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Every name, for messages: `a, b, c`.
            pub fn names() -> String {
                Self::ALL.map(Self::as_str).join(", ")
            }
        }

        // `ALL[v as usize] == v`, checked by the compiler: tables of metric
        // series are indexed by the discriminant.
        const _: () = {
            let mut i = 0;
            while i < $name::ALL.len() {
                assert!($name::ALL[i] as usize == i);
                i += 1;
            }
        };
    };
}

pub mod auth;
pub mod commands;
pub mod config;
pub mod dead_letter;
pub mod delivery;
pub mod envelope;
pub mod hex;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod route;
pub mod settings;
pub mod shutdown;
pub mod sink;
pub mod spool;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod trace;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthReloader, LiveGuard};
use crate::dead_letter::DeadLetters;
use crate::delivery::Delivery;
use crate::http::App;
use crate::http::config::{Drain, HttpSettings};
use crate::http::metrics::Metrics;
use crate::settings::Settings;
use crate::shutdown::{ReloadSignal, Tasks};
use crate::sink::Sink;
use crate::tls::ServerTls;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {flag} {addr}: {source}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sink(#[from] sink::SinkSetupError),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Otlp(#[from] otlp::OtlpError),
}

/// How long the shutdown may take once the webhook listener has drained:
/// the background tasks, the dead letters still queued and the sink's
/// flush share it. A process manager must allow `--drain-delay` plus
/// `--shutdown-timeout` plus this before SIGKILL (the deploy files do, and
/// their tests check it).
pub const SHUTDOWN_AFTER_DRAIN: Duration = Duration::from_secs(5);

/// Of [`SHUTDOWN_AFTER_DRAIN`], what the delivery of the spool's events at
/// shutdown leaves to the dead letters and the sink's flush.
const SHUTDOWN_RESERVE: Duration = Duration::from_secs(1);

/// The two listeners, bound by the caller (`main`, or a test on port 0).
pub struct Listeners {
    /// Webhooks, `/healthz` and `/readyz` (`--listen`).
    pub webhooks: TcpListener,
    /// `/metrics` (`--metrics-listen`).
    pub metrics: TcpListener,
}

impl Listeners {
    pub async fn bind(settings: &HttpSettings) -> Result<Self, RunError> {
        Ok(Self {
            webhooks: bind("--listen", settings.listen).await?,
            metrics: bind("--metrics-listen", settings.metrics_listen).await?,
        })
    }
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { flag, addr, source })
}

/// Parts a test puts in place of the ones [`Service::build`] would make.
#[derive(Default)]
pub struct Overrides {
    /// Used instead of the sink `--sink` names (a memory sink).
    pub sink: Option<Arc<dyn Sink>>,
}

/// Builds every part once and serves on `listeners` until `shutdown`
/// resolves; then stops in the order [`Service::serve`] documents.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    Service::build(settings, Overrides::default())
        .await?
        .serve(listeners, shutdown)
        .await;
    Ok(())
}

/// Every part of the running service, built once.
pub struct Service {
    app: Arc<App>,
    tls: Option<Arc<ServerTls>>,
    /// Reloads the secret files, when a secret comes from one.
    secrets: Option<Arc<AuthReloader>>,
    drain: Drain,
    /// Cancelled when [`Service::serve`] returns: whatever is still running
    /// then stops.
    root: CancellationToken,
    /// The sink's own background tasks (connection probes, the stream
    /// keeper, topic creation).
    sink_tasks: Tasks,
}

impl Service {
    /// Starts the sink (its client connects in the background), opens the
    /// spool, loads TLS, and puts the request path together.
    pub async fn build(settings: Settings, overrides: Overrides) -> Result<Self, RunError> {
        let root = CancellationToken::new();
        let sink_tasks = Tasks::new(&root);
        // Each part registers its own metrics here as it is built.
        let metrics = Arc::new(Metrics::new(metrics::registry()?)?);
        let registry = metrics.registry();
        let sink = match overrides.sink {
            Some(sink) => sink,
            None => settings.sink.start(registry, &sink_tasks).await?,
        };
        let spool = match &settings.spool {
            Some(spool) => {
                let spool = spool::Spool::open(&spool.dir, spool.max_bytes)?;
                if !spool.is_empty() {
                    tracing::info!(
                        events = spool.len(),
                        "spooled webhooks from a previous run will be delivered"
                    );
                }
                Some(Arc::new(spool))
            }
            None => None,
        };
        let tls = match settings.tls {
            Some(tls) => Some(ServerTls::new(tls, registry)?),
            None => None,
        };
        let dead_letters = match settings.dead_letter {
            Some(dead_letter) => {
                tracing::info!(
                    topic = %dead_letter.topic,
                    malformed = dead_letter.malformed,
                    queue = dead_letter.queue,
                    "dead letters (refused requests) go to {}; {}",
                    dead_letter.topic,
                    settings.sink.dead_letter_home(),
                );
                Some(Arc::new(DeadLetters::new(dead_letter, registry)?))
            }
            None => None,
        };
        let spans = match &settings.otlp {
            Some(otlp) => Some(Arc::new(otlp::Spans::start(
                otlp,
                sink.name(),
                &settings.http.path,
                settings.routing.template.uses_object_id(),
            )?)),
            None => None,
        };
        let delivery = Arc::new(Delivery::new(sink, spool, settings.delivery, registry)?);
        let drain = settings.http.drain;
        let guard = LiveGuard::new(settings.guard);
        let secrets = match settings.secret_files {
            Some(files) => Some(AuthReloader::new(files, guard.clone(), registry)?),
            None => None,
        };
        let app = Arc::new(App::new(
            settings.http,
            guard,
            settings.routing,
            delivery,
            dead_letters,
            spans,
            metrics,
        )?);
        Ok(Self {
            app,
            tls,
            secrets,
            drain,
            root,
            sink_tasks,
        })
    }

    /// The request path, for tests that look at readiness.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// The secret files' reloading, when a secret comes from one.
    pub fn secrets(&self) -> Option<&Arc<AuthReloader>> {
        self.secrets.as_ref()
    }

    /// The TLS configuration in force and its reloading, when serving TLS.
    pub fn tls(&self) -> Option<&Arc<ServerTls>> {
        self.tls.as_ref()
    }

    /// Serves webhooks and metrics until `shutdown` resolves, then stops in
    /// this order, each step waiting for the one before:
    ///
    /// 1. the webhook listener drains ([`Drain`]): `/readyz` answers 503
    ///    for `--drain-delay`, the listener closes, requests in flight get
    ///    up to `--shutdown-timeout` to be answered;
    /// 2. the background tasks: the spool's replayer (between two events),
    ///    the start-up watcher, and the TLS and secret-file watchers with
    ///    the SIGHUP handler; then, with the broker reachable, what the spool still
    ///    holds is delivered ([`Delivery::drain_spool`]) until
    ///    `SHUTDOWN_RESERVE` before the deadline; what is left stays on
    ///    disk for the next start or `apizee-bridge spool drain`;
    /// 3. the dead letters still queued are published: no request is left
    ///    to refuse;
    /// 4. the sink is flushed, then its own background tasks stop;
    /// 5. the metrics listener, last, so a scrape during the drain still
    ///    sees it all.
    ///
    /// Steps 2 to 5 share [`SHUTDOWN_AFTER_DRAIN`]: a step the broker holds
    /// up leaves less time to the next. Tasks that hold data (the replayer,
    /// the dead-letter worker) stop at a point where they hold none; the
    /// others are dropped at an await. A spooled event whose replay was cut
    /// short stays on disk; a dead letter not published by then is dropped
    /// (its sender already has its 4xx).
    ///
    /// With `--otlp-endpoint`, the spans not yet exported are flushed from
    /// step 2 on, beside the other steps and by the same deadline: every
    /// span has ended once the listener has drained, and a collector that
    /// is slow or gone must not take the broker's time (nor a broker that
    /// is gone the collector's).
    pub async fn serve(self, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        let Self {
            app,
            tls,
            secrets,
            drain,
            root,
            sink_tasks,
        } = self;
        let background = Tasks::new(&root);
        let dead_letter_worker = Tasks::new(&root);
        let metrics_listener = Tasks::new(&root);
        let delivery = app.delivery().clone();
        tracing::info!(
            listen = %local_addr(&listeners.webhooks),
            path = %app.path(),
            metrics = %local_addr(&listeners.metrics),
            sink = delivery.sink().name(),
            tls = tls.is_some(),
            "apizee-bridge started"
        );

        // SIGHUP is taken over before the first connection is accepted: it
        // reloads the TLS files and the secret files, each watcher woken by
        // its own registration; with neither it is logged, never fatal.
        if let Some(tls) = tls.clone() {
            background.spawn_until_stopped(tls.watch(ReloadSignal::register()));
        }
        if let Some(secrets) = secrets {
            background.spawn_until_stopped(secrets.watch(ReloadSignal::register()));
        } else if tls.is_none() {
            background.spawn_until_stopped(ReloadSignal::register().ignore());
        }
        background.spawn(|stop| delivery.clone().replay(stop));
        background.spawn_until_stopped(delivery.clone().watch_startup());
        if let Some(dead_letters) = app.dead_letters() {
            let (dead_letters, delivery) = (dead_letters.clone(), delivery.clone());
            dead_letter_worker.spawn(|_| dead_letters.run(delivery));
        }
        let (metrics, scraped) = (app.metrics().clone(), delivery.clone());
        metrics_listener.spawn(|stop| async move {
            http::server::serve_metrics(
                listeners.metrics,
                metrics,
                scraped,
                stop.cancelled_owned(),
            )
            .await;
        });

        http::server::serve_webhooks(listeners.webhooks, app.clone(), tls, drain, shutdown).await;

        let deadline = tokio::time::Instant::now() + SHUTDOWN_AFTER_DRAIN;
        let spans_flushed = app
            .spans()
            .map(|spans| tokio::spawn(spans.clone().shutdown(deadline)));
        if !background.stop(deadline).await {
            tracing::warn!("background tasks did not stop in time");
        }
        if delivery.spooled_events() > 0 {
            // No webhook comes in any more: what the spool holds goes to the
            // broker now, rather than wait on disk for a next start that may
            // never come (a replica scaled away).
            let drained = delivery.drain_spool(deadline - SHUTDOWN_RESERVE).await;
            if drained.left == 0 {
                tracing::info!(
                    delivered = drained.delivered,
                    "delivered every spooled webhook before stopping"
                );
            } else {
                tracing::warn!(
                    delivered = drained.delivered,
                    left = drained.left,
                    "spooled webhooks stay on disk: the next start delivers them, or \
                     `apizee-bridge spool drain` if this replica does not come back"
                );
            }
        }
        if let Some(queue) = app.dead_letters() {
            queue.close();
            if !dead_letter_worker.finish(deadline).await {
                tracing::warn!(
                    "publishing the queued dead letters at shutdown timed out; dropped them"
                );
            }
        }
        match tokio::time::timeout_at(deadline, delivery.sink().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing the sink at shutdown failed"),
            Err(_) => tracing::warn!("flushing the sink at shutdown timed out"),
        }
        // Neither holds anything: they stop at their next await.
        sink_tasks.stop(deadline).await;
        if let Some(flushed) = spans_flushed {
            // Bounded by the deadline inside.
            let _ = flushed.await;
        }
        metrics_listener.stop(deadline).await;
        root.cancel();
        tracing::info!("apizee-bridge stopped");
    }
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |addr| addr.to_string())
}
