//! How the service stops: the signal (SIGTERM from Kubernetes and systemd,
//! SIGINT from Ctrl-C), the SIGHUP that must not stop it ([`ReloadSignal`],
//! which the TLS and secret-file reloaders listen to), and [`Tasks`], the
//! groups of background tasks that stop together, one group after another
//! (the order is in [`crate::Service::serve`]).
//!
//! Every group's token is a child of one root token: cancelling the root
//! stops everything at once, which is what happens to whatever is left when
//! the service returns.

use std::future::Future;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => tracing::info!("SIGINT received"),
                    _ = terminate.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop the bridge");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// SIGHUP, whose default action ends the process. Register it before the
/// listener accepts anything, so that an early SIGHUP reloads instead.
/// Each watcher (TLS, the secret files) registers its own: every one of
/// them is woken by the same signal.
pub struct ReloadSignal {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl ReloadSignal {
    /// Must be called inside the tokio runtime.
    pub fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let hangup = signal(SignalKind::hangup())
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS and secret files are still polled");
                })
                .ok();
            Self { hangup }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Without TLS nor a secret file there is nothing to reload, but a
    /// SIGHUP (`systemctl reload`, a closed terminal, a habit) must not end
    /// the process and the deliveries in flight: it is logged, and
    /// otherwise ignored.
    pub async fn ignore(mut self) {
        loop {
            self.recv().await;
            tracing::info!(
                "SIGHUP received: nothing to reload without --tls-cert or a secret file"
            );
        }
    }

    /// Resolves on the next SIGHUP; never, if there is none to listen to.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(hangup) = &mut self.hangup
            && hangup.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// A group of tasks that stop together: a token they watch, and a tracker
/// to wait for them.
#[derive(Clone)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// A group that also stops when `root` is cancelled.
    pub fn new(root: &CancellationToken) -> Self {
        Self {
            token: root.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// Spawns a task that watches its token and returns at a point where it
    /// holds nothing (the replayer between two events, for instance).
    pub fn spawn<F>(&self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task(self.token.clone()));
    }

    /// Spawns a task that holds no data (a probe, a watcher): once the
    /// token is cancelled it is dropped at its next await.
    pub fn spawn_until_stopped(&self, task: impl Future<Output = ()> + Send + 'static) {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Cancels the group and waits for its tasks, until `deadline` at
    /// most; false if some were still running then.
    pub async fn stop(&self, deadline: Instant) -> bool {
        self.token.cancel();
        self.finish(deadline).await
    }

    /// Waits, until `deadline` at most, for the tasks to end on their own
    /// (a worker draining a queue that was closed); false if some were
    /// still running then.
    pub async fn finish(&self, deadline: Instant) -> bool {
        self.tracker.close();
        tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[tokio::test]
    async fn a_group_stops_alone_and_the_root_stops_them_all() {
        let root = CancellationToken::new();
        let (first, second) = (Tasks::new(&root), Tasks::new(&root));
        first.spawn_until_stopped(std::future::pending());
        second.spawn(|token| async move { token.cancelled().await });
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(first.stop(deadline).await, "the first group did not stop");
        // Its task only ends when cancelled: stopping the first group left
        // the second running.
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(
            !second.finish(soon).await,
            "stopping one group stopped another"
        );
        root.cancel();
        assert!(second.finish(deadline).await, "the root did not stop it");
    }
}
