//! A sink that keeps messages in memory, for tests of everything above the
//! broker. It can be told to fail or to hang, to exercise the 503 paths.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{BoxFuture, PublishError, Sink};
use crate::route::Message;

/// How the memory sink answers the next publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    Accept,
    Fail(PublishError),
    /// Never acknowledges: the caller's timeout must fire.
    Hang,
    /// Acknowledges after a pause, like a slow broker.
    Delay(std::time::Duration),
}

#[derive(Debug)]
pub struct MemorySink {
    messages: Mutex<Vec<Message>>,
    behaviour: Mutex<Behaviour>,
    ready: AtomicBool,
}

impl Default for MemorySink {
    fn default() -> Self {
        Self {
            messages: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour::Accept),
            ready: AtomicBool::new(true),
        }
    }
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages acknowledged so far, oldest first.
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.messages).clone()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.behaviour) = behaviour;
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

/// A poisoned lock only means another test thread panicked; the data is
/// still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sink for MemorySink {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), PublishError>> {
        let behaviour = lock(&self.behaviour).clone();
        Box::pin(async move {
            match behaviour {
                Behaviour::Accept => {
                    lock(&self.messages).push(message.clone());
                    Ok(())
                }
                Behaviour::Fail(error) => Err(error),
                Behaviour::Hang => std::future::pending().await,
                Behaviour::Delay(pause) => {
                    tokio::time::sleep(pause).await;
                    lock(&self.messages).push(message.clone());
                    Ok(())
                }
            }
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async { Ok(()) })
    }
}
