//! How many requests may hold memory at once, in two budgets.
//!
//! `--max-in-flight` bounds the webhooks being handled: body read, parsed,
//! published. When the only credential is an HMAC signature, a body must be
//! read before anyone knows whether its sender holds the secret, so those
//! reads draw on `--max-unauthenticated-in-flight` instead, and trade that
//! slot for one of `--max-in-flight` once the signature checks out. Senders
//! without the secret, however slowly they trickle their bodies, then take
//! only slots of the smaller budget, never the ones signed webhooks need.
//! Either budget, when spent, answers 429 at once rather than queueing.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::rejection::Rejection;

named_enum! {
    /// Which budget a request drew on; also the `budget` label of
    /// `apizee_bridge_in_flight_refusals_total`, named after its flag.
    pub enum Budget {
        InFlight => "max_in_flight",
        Unauthenticated => "max_unauthenticated_in_flight",
    }
}

impl Budget {
    /// What is already at the limit, for the 429's message.
    pub fn describe(self) -> &'static str {
        match self {
            Budget::InFlight => "webhooks are already being handled",
            Budget::Unauthenticated => "bodies are already being read before authentication",
        }
    }
}

struct Pool {
    permits: Arc<Semaphore>,
    limit: usize,
    budget: Budget,
}

impl Pool {
    fn new(budget: Budget, limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            budget,
        }
    }

    fn take(&self) -> Result<Slot, Rejection> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot {
                budget: self.budget,
                _permit: permit,
            }),
            Err(_) => Err(Rejection::TooManyRequests {
                budget: self.budget,
                limit: self.limit,
            }),
        }
    }
}

pub struct Budgets {
    in_flight: Pool,
    /// Only when requests are authenticated by their body alone.
    unauthenticated: Option<Pool>,
}

/// A slot of one budget, given back when dropped.
pub struct Slot {
    budget: Budget,
    _permit: OwnedSemaphorePermit,
}

impl Budgets {
    pub fn new(max_in_flight: usize, unauthenticated: Option<usize>) -> Self {
        Self {
            in_flight: Pool::new(Budget::InFlight, max_in_flight),
            unauthenticated: unauthenticated.map(|limit| Pool::new(Budget::Unauthenticated, limit)),
        }
    }

    /// The slot a request holds while its body is read.
    pub fn before_body(&self) -> Result<Slot, Rejection> {
        self.unauthenticated
            .as_ref()
            .unwrap_or(&self.in_flight)
            .take()
    }

    /// Once the request is authenticated: a slot of `--max-in-flight` for
    /// the rest of it. The unauthenticated slot is given back either way.
    pub fn authenticated(&self, slot: Slot) -> Result<Slot, Rejection> {
        match slot.budget {
            Budget::InFlight => Ok(slot),
            Budget::Unauthenticated => {
                drop(slot);
                self.in_flight.take()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_by(result: Result<Slot, Rejection>) -> Option<Budget> {
        match result {
            Ok(_) => None,
            Err(Rejection::TooManyRequests { budget, .. }) => Some(budget),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn without_body_authentication_one_budget_covers_the_request() {
        let budgets = Budgets::new(1, None);
        let slot = budgets.before_body().expect("a slot");
        assert_eq!(refused_by(budgets.before_body()), Some(Budget::InFlight));
        let slot = budgets.authenticated(slot).expect("the same slot");
        drop(slot);
        assert_eq!(refused_by(budgets.before_body()), None);
    }

    #[test]
    fn unauthenticated_bodies_never_take_in_flight_slots() {
        let budgets = Budgets::new(1, Some(2));
        let reading: Vec<Slot> = (0..2)
            .map(|_| budgets.before_body().expect("slot"))
            .collect();
        assert_eq!(
            refused_by(budgets.before_body()),
            Some(Budget::Unauthenticated)
        );
        // One of them authenticates: it trades its slot for the one in-flight slot.
        let mut reading = reading.into_iter();
        let handled = budgets
            .authenticated(reading.next().expect("slot"))
            .expect("in-flight slot");
        // The unauthenticated slot came back; the in-flight one is taken.
        let another = budgets.before_body().expect("unauthenticated slot back");
        assert_eq!(
            refused_by(budgets.authenticated(another)),
            Some(Budget::InFlight)
        );
        drop(handled);
        let last = reading.next().expect("slot");
        assert!(budgets.authenticated(last).is_ok());
    }
}
