//! Keeps `--nats-stream` usable, and tells a missing stream from one that is
//! electing a leader.
//!
//! A JetStream publish that no server answers ("no responders") means that
//! nobody listens on its subject. Either the stream is gone, or, in a
//! cluster, it has no leader while its replicas elect one: only the leader
//! listens on the stream's subjects. The two call for opposite answers: a
//! missing stream is created again, a stream in an election is left alone
//! and comes back by itself. So a publish never decides; it wakes the
//! keeper, which asks the JetStream API for the stream's info and acts on
//! the answer:
//!
//! | STREAM.INFO answers                    | means                       | the keeper       |
//! |----------------------------------------|-----------------------------|------------------|
//! | info naming a leader                   | usable                      | reports ready    |
//! | info without a leader                  | election                    | waits, not ready |
//! | error 10059, stream not found          | missing                     | creates it       |
//! | another error (10008, ...), no answer  | election, or JetStream down | waits, not ready |
//!
//! During an election the followers stay silent until they give the old
//! leader up, so "no answer" is what the keeper usually sees; a follower
//! that has given it up answers with info that names no leader.
//!
//! A publish that times out (a leader that stopped answering) wakes the
//! keeper too, without changing readiness: only the check's answer does.
//! Readiness returns with whichever comes first, the keeper finding a
//! leader or a publish acknowledged, which is proof enough and is usually
//! earlier than the next check. Each episode is logged once when it starts
//! and once when it ends, not once per webhook.

use std::mem::discriminant;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::connection::State;
use async_nats::jetstream::{self, ErrorCode, context::RequestErrorKind};
use serde::Deserialize;
use tokio::sync::Notify;

use super::config::StreamSettings;
use crate::route::subject_matches;

/// The first wait between two checks of a stream that is not usable; it
/// doubles up to [`LAST_RETRY`]. Short, because an election is often over in
/// a few seconds and readiness should not lag behind it by much.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(2);

/// Whether the managed stream is usable, which subjects it was found
/// capturing, and the signals that wake its keeper task.
pub(super) struct StreamKeeper {
    name: String,
    /// Read by every `/readyz` and by every acknowledged publish; written on
    /// transitions only, under `acknowledgements`.
    ready: AtomicBool,
    /// How many times an acknowledged publish made the stream ready again.
    /// A check that began before one must not undo it with an older answer.
    acknowledgements: Mutex<u64>,
    /// The stream's subjects as the server reported them; until the first
    /// check, those it will be created with. A webhook that arrives before
    /// then (a spool lets `/readyz` say 200 at once) is waiting for the
    /// stream, not sent where none will be.
    captured: RwLock<Vec<String>>,
    /// A publish on a captured subject got no responder, or no answer.
    suspect: Notify,
    /// A publish was acknowledged while the stream was not ready.
    acknowledged: Notify,
}

impl StreamKeeper {
    pub(super) fn new(settings: &StreamSettings) -> Self {
        Self {
            name: settings.name.clone(),
            ready: AtomicBool::new(false),
            acknowledgements: Mutex::new(0),
            captured: RwLock::new(settings.subjects.clone()),
            suspect: Notify::new(),
            acknowledged: Notify::new(),
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Whether "no responders" for `subject` says anything about the
    /// managed stream. A subject it was never found capturing (a
    /// dead-letter subject left out of a stream made by hand) does not.
    pub(super) fn captures(&self, subject: &str) -> bool {
        self.captured
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|filter| subject_matches(filter, subject))
    }

    /// Nobody listens on a subject the stream captures: not ready from this
    /// moment, not from when the keeper next runs.
    pub(super) fn no_responders(&self) {
        let _transition = self.lock();
        self.ready.store(false, Ordering::SeqCst);
        self.suspect.notify_one();
    }

    /// A publish got no answer in time: worth a check, not yet a verdict.
    pub(super) fn unanswered(&self) {
        self.suspect.notify_one();
    }

    /// A publish on a captured subject was acknowledged while not ready, so
    /// the stream has a leader.
    pub(super) fn acknowledged(&self) {
        let mut acknowledgements = self.lock();
        if !self.ready.swap(true, Ordering::SeqCst) {
            *acknowledgements += 1;
            self.acknowledged.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.acknowledgements
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn acknowledgements(&self) -> u64 {
        *self.lock()
    }

    /// Not ready, unless a publish was acknowledged since `before` was read.
    fn not_ready_unless_acknowledged_since(&self, before: u64) {
        let acknowledgements = self.lock();
        if *acknowledgements == before {
            self.ready.store(false, Ordering::SeqCst);
        }
    }

    fn usable(&self, captured: Vec<String>) {
        *self
            .captured
            .write()
            .unwrap_or_else(PoisonError::into_inner) = captured;
        let _transition = self.lock();
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Resolves once a publish has made the stream ready again since the
    /// count was `before`.
    async fn acknowledged_since(&self, before: u64) {
        loop {
            let acknowledged = self.acknowledged.notified();
            tokio::pin!(acknowledged);
            // Registered before the count is read, so no wake-up is missed.
            acknowledged.as_mut().enable();
            if self.acknowledgements() != before {
                return;
            }
            acknowledged.await;
        }
    }
}

/// What the JetStream API says about the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Finding {
    Usable { subjects: Vec<String> },
    NoLeader,
    Missing,
    Unavailable(String),
    CannotCreate(String),
}

/// The parts of a STREAM.INFO answer the keeper reads, parsed leniently:
/// servers from 2.9 to 2.15 differ in the rest.
#[derive(Debug, Deserialize)]
struct InfoReply {
    error: Option<ApiError>,
    config: Option<ConfigReply>,
    cluster: Option<ClusterReply>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
struct ConfigReply {
    #[serde(default)]
    subjects: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ClusterReply {
    leader: Option<String>,
}

/// Reads a STREAM.INFO answer, or why there was none.
fn classify(reply: Result<InfoReply, String>) -> Finding {
    let reply = match reply {
        Ok(reply) => reply,
        Err(reason) => return Finding::Unavailable(reason),
    };
    if let Some(error) = reply.error {
        return if error.err_code == ErrorCode::STREAM_NOT_FOUND.0 {
            Finding::Missing
        } else {
            Finding::Unavailable(format!("{} ({})", error.description, error.err_code))
        };
    }
    let Some(config) = reply.config else {
        return Finding::Unavailable("an answer without the stream's configuration".into());
    };
    // A single server reports itself as the leader; a reply without
    // cluster details comes from a server that has no cluster to elect in.
    match reply.cluster {
        Some(ClusterReply { leader }) if leader.as_deref().is_none_or(str::is_empty) => {
            Finding::NoLeader
        }
        _ => Finding::Usable {
            subjects: config.subjects,
        },
    }
}

pub(super) async fn check(js: &jetstream::Context, name: &str, timeout: Duration) -> Finding {
    let reply = js
        .request(format!("STREAM.INFO.{name}"), &())
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::TimedOut => format!("no answer within {timeout:?}"),
            RequestErrorKind::NoResponders => {
                "no server answers JetStream requests (JetStream off for this account?)".into()
            }
            _ => e.to_string(),
        });
    classify(reply)
}

/// What has been logged about one stretch of the stream being unusable, so
/// each situation is logged once, and its end once.
struct Episode<'a> {
    name: &'a str,
    since: Instant,
    logged: Option<std::mem::Discriminant<Finding>>,
}

impl<'a> Episode<'a> {
    fn new(name: &'a str) -> Self {
        Self {
            name,
            since: Instant::now(),
            logged: None,
        }
    }

    /// Logs `finding` unless it is what was logged last.
    fn report(&mut self, finding: &Finding, started: bool) {
        let kind = discriminant(finding);
        if self.logged == Some(kind) {
            return;
        }
        self.logged = Some(kind);
        let name = self.name;
        match finding {
            // Creating the stream logs itself.
            Finding::Usable { .. } | Finding::Missing => {}
            Finding::NoLeader => tracing::warn!(
                stream = %name,
                "JetStream stream {name} has no leader (election in progress?); webhooks get 503 \
                 until it has one. If this lasts, check that most of its replicas' servers run \
                 and are routed to each other (nats stream info {name})"
            ),
            // Followers stay silent until they give the old leader up, so an
            // election usually looks like this, not like the case above.
            Finding::Unavailable(reason) if started => tracing::warn!(
                stream = %name,
                %reason,
                "JetStream stream {name} has no leader that answers ({reason}; election in \
                 progress, or its servers or the JetStream meta leader down?); webhooks get 503 \
                 until it answers. If this lasts, check that most of its replicas' servers run \
                 and are routed to each other (nats stream info {name})"
            ),
            Finding::Unavailable(reason) => tracing::warn!(
                stream = %name,
                %reason,
                "cannot check JetStream stream {name} yet ({reason}); retrying"
            ),
            Finding::CannotCreate(reason) => tracing::warn!(
                stream = %name,
                %reason,
                "cannot create JetStream stream {name} ({reason}); retrying"
            ),
        }
    }

    /// Logs the end of the episode, if its start was logged.
    fn end(&self, how: &str) {
        if self.logged.is_some() {
            tracing::info!(
                stream = %self.name,
                after = ?self.since.elapsed(),
                "JetStream stream {} is usable again ({how}); webhooks are acknowledged",
                self.name
            );
        }
    }
}

/// What the keeper task works with.
pub(super) struct Keep {
    pub(super) js: jetstream::Context,
    pub(super) client: Client,
    pub(super) settings: StreamSettings,
    pub(super) keeper: Arc<StreamKeeper>,
    /// How long a JetStream API request may take: `--publish-timeout`.
    pub(super) timeout: Duration,
}

impl Keep {
    /// Makes the stream usable (creating it if the server says it does not
    /// exist), then waits until a publish casts doubt on it, and starts
    /// over. An existing stream is left as its operator configured it; a
    /// subject it does not capture is logged, since what is published there
    /// is lost.
    pub(super) async fn run(self) {
        let mut known: Option<Vec<String>> = None;
        loop {
            known = Some(self.establish(known).await);
            self.keeper.suspect.notified().await;
        }
    }

    /// Checks until the stream is usable; returns the subjects it captures.
    /// `known` is what an earlier call found, `None` at start-up.
    async fn establish(&self, known: Option<Vec<String>>) -> Vec<String> {
        let keeper = &self.keeper;
        let mut episode = Episode::new(&self.settings.name);
        let mut delay = FIRST_RETRY;
        loop {
            let before = keeper.acknowledgements();
            let attempt = self.attempt(&known, &mut episode, before);
            let usable = match &known {
                // An acknowledged publish ends the episode, even in the
                // middle of a check that has not been answered yet. Not at
                // start-up: the subjects are not known before a check has
                // read them.
                Some(_) => tokio::select! {
                    usable = attempt => usable,
                    () = keeper.acknowledged_since(before) => None,
                },
                None => attempt.await,
            };
            if let Some(subjects) = usable {
                // At start-up, "JetStream stream ready" says it.
                if known.is_some() {
                    episode.end("it has a leader");
                }
                return subjects;
            }
            if let Some(known) = &known
                && keeper.acknowledgements() != before
            {
                episode.end("a webhook was acknowledged");
                return known.clone();
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = keeper.acknowledged_since(before), if known.is_some() => {}
            }
            delay = (delay * 2).min(LAST_RETRY);
        }
    }

    /// One check: the subjects if the stream is usable; otherwise logs what
    /// is wrong (once per episode) and reports not ready, unless a publish
    /// was acknowledged since the count was `before`.
    async fn attempt(
        &self,
        known: &Option<Vec<String>>,
        episode: &mut Episode<'_>,
        before: u64,
    ) -> Option<Vec<String>> {
        let settings = &self.settings;
        let name = settings.name.as_str();
        // While disconnected the client logs its own state, and a check
        // would only time out.
        if self.client.connection_state() == State::Connected {
            let finding = match check(&self.js, name, self.timeout).await {
                Finding::Missing => create(&self.js, settings, known.is_some()).await,
                finding => Some(finding),
            };
            tracing::debug!(stream = %name, ?finding, "checked JetStream stream");
            match finding {
                Some(Finding::Usable { subjects }) => {
                    if known.as_ref() != Some(&subjects) {
                        report_subjects(settings, &subjects);
                    }
                    self.keeper.usable(subjects.clone());
                    return Some(subjects);
                }
                Some(finding) => episode.report(&finding, known.is_some()),
                // Created meanwhile: the next check reads it.
                None => {}
            }
        }
        self.keeper.not_ready_unless_acknowledged_since(before);
        None
    }
}

/// Creates the stream the server reported missing; `None` if it was
/// created meanwhile, so the next check reads it.
async fn create(
    js: &jetstream::Context,
    settings: &StreamSettings,
    started: bool,
) -> Option<Finding> {
    let name = &settings.name;
    if started {
        tracing::warn!(
            stream = %name,
            "JetStream stream {name} no longer exists (deleted, or its servers lost their \
             store); creating it again"
        );
    } else {
        tracing::info!(stream = %name, subjects = ?settings.subjects, "creating JetStream stream");
    }
    let config = jetstream::stream::Config {
        name: name.clone(),
        subjects: settings.subjects.clone(),
        ..Default::default()
    };
    match js.create_stream(config).await {
        Ok(stream) => Some(Finding::Usable {
            subjects: stream.cached_info().config.subjects.clone(),
        }),
        // Made meanwhile, by another replica of the bridge or by an
        // operator, or a "not found" from a server still catching up: the
        // name is taken, so the stream exists.
        Err(e)
            if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_NAME_EXIST) =>
        {
            None
        }
        Err(e) => Some(Finding::CannotCreate(e.to_string())),
    }
}

fn report_subjects(settings: &StreamSettings, captured: &[String]) {
    let name = &settings.name;
    for wanted in &settings.subjects {
        if !captured
            .iter()
            .any(|filter| subject_matches(filter, wanted))
        {
            tracing::error!(
                stream = %name,
                subject = %wanted,
                captured = ?captured,
                "the existing JetStream stream does not capture this subject, so what the \
                 bridge publishes there is refused; add the subject to the stream \
                 (nats stream edit {name} --subjects ...) or name another --nats-stream"
            );
        }
    }
    tracing::info!(stream = %name, subjects = ?captured, "JetStream stream ready");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(json: &str) -> Finding {
        classify(serde_json::from_str(json).map_err(|e| e.to_string()))
    }

    #[test]
    fn a_stream_with_a_leader_is_usable() {
        // A single 2.9 or 2.15 server names itself as the leader.
        let finding = reply(
            r#"{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{"name":"APIZEE",
                "subjects":["apizee.>"]},"cluster":{"leader":"NABC"},"state":{"messages":3}}"#,
        );
        assert_eq!(
            finding,
            Finding::Usable {
                subjects: vec!["apizee.>".into()]
            }
        );
    }

    #[test]
    fn a_stream_without_a_leader_is_in_an_election() {
        // What a follower answers while the replicas elect a leader.
        let finding = reply(
            r#"{"config":{"name":"APIZEE","subjects":["apizee.>"]},
                "cluster":{"name":"c","replicas":[{"name":"n1","current":false}]}}"#,
        );
        assert_eq!(finding, Finding::NoLeader);
        let finding = reply(r#"{"config":{"subjects":["apizee.>"]},"cluster":{"leader":""}}"#);
        assert_eq!(finding, Finding::NoLeader);
    }

    #[test]
    fn only_stream_not_found_means_missing() {
        let not_found =
            r#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        assert_eq!(reply(not_found), Finding::Missing);
        let unavailable = r#"{"error":{"code":503,"err_code":10008,
            "description":"JetStream system temporarily unavailable"}}"#;
        assert_eq!(
            reply(unavailable),
            Finding::Unavailable("JetStream system temporarily unavailable (10008)".into())
        );
    }

    #[test]
    fn no_answer_is_unavailable_not_missing() {
        assert_eq!(
            classify(Err("no answer within 2s".into())),
            Finding::Unavailable("no answer within 2s".into())
        );
        assert!(matches!(reply("{}"), Finding::Unavailable(_)));
    }
}
