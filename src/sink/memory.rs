//! A sink that keeps messages in memory, for tests of everything above the
//! broker. It can be told to fail or to hang, to exercise the 503 paths.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Acknowledgement, BoxFuture, PublishError, Sink};
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
    /// Event ids whose next send is lost: not stored, its acknowledgement
    /// an error, while the messages around it go through.
    losses: Mutex<HashMap<String, PublishError>>,
    ready: AtomicBool,
}

impl Default for MemorySink {
    fn default() -> Self {
        Self {
            messages: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour::Accept),
            losses: Mutex::new(HashMap::new()),
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

    /// The next send of the message with this event id is lost: not
    /// stored, and its acknowledgement is `error`.
    pub fn lose_once(&self, event_id: &str, error: PublishError) {
        lock(&self.losses).insert(event_id.to_owned(), error);
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

    fn send<'a, 'm>(
        &'a self,
        message: &'m Message,
    ) -> BoxFuture<'m, Result<Acknowledgement<'a>, PublishError>>
    where
        'a: 'm,
    {
        let behaviour = lock(&self.behaviour).clone();
        let lost = lock(&self.losses).remove(&message.event_id);
        Box::pin(async move {
            if let Behaviour::Fail(error) = behaviour {
                return Err(error);
            }
            if let Some(error) = lost {
                let failed: Acknowledgement<'a> = Box::pin(std::future::ready(Err(error)));
                return Ok(failed);
            }
            // Kept once acknowledged, so a test sees what a sender was told
            // is stored; a hung broker keeps nothing.
            let acknowledged: Acknowledgement<'a> = match behaviour {
                Behaviour::Hang => Box::pin(std::future::pending()),
                Behaviour::Delay(pause) => {
                    let message = message.clone();
                    Box::pin(async move {
                        tokio::time::sleep(pause).await;
                        lock(&self.messages).push(message);
                        Ok(())
                    })
                }
                Behaviour::Accept | Behaviour::Fail(_) => {
                    lock(&self.messages).push(message.clone());
                    Box::pin(std::future::ready(Ok(())))
                }
            };
            Ok(acknowledged)
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async { Ok(()) })
    }
}
