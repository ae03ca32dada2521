//! A request's slot and deadline, in its task's local state: a method may
//! give its slot back while it waits ([`release_slot`]) and ask when its
//! caller stops waiting ([`deadline`]).

use std::{cell::Cell, future::Future, sync::Arc, time::Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

tokio::task_local! {
    /// The slot and deadline of the request this task serves.
    static REQUEST: RequestSlot;
}

/// What a request holds while it runs: its slot of the server's
/// `executor_thread_pool_size`, and when its caller stops waiting.
pub(super) struct RequestSlot {
    slot: Cell<Option<OwnedSemaphorePermit>>,
    deadline: Cell<Option<Instant>>,
    /// The server's count of requests that gave their slot back, which a
    /// stop waits for too, and this request's place in it once it did.
    waiting: Arc<Semaphore>,
    waiter: Cell<Option<OwnedSemaphorePermit>>,
}

/// Requests of one server that may wait without a slot at once.
pub const MAX_WAITING: u32 = 1 << 16;

/// Give back the request slot the calling method holds, so that a long
/// wait (for a task to end, say) does not keep other requests out: the
/// server takes another request at once. Whether there was a slot to give
/// back (`false` outside a request, in a work queue's request, or the
/// second time).
///
/// The method goes on running, and its reply is sent as usual; a server
/// that stops waits for it as for the others (up to its graceful timeout).
/// A method that gives its slot back should bound how many do (a semaphore
/// of its own); past [`MAX_WAITING`] per server the slot is kept.
pub fn release_slot() -> bool {
    REQUEST
        .try_with(|r| {
            let Some(slot) = r.slot.take() else { return false };
            match r.waiting.clone().try_acquire_owned() {
                Ok(waiter) => {
                    r.waiter.set(Some(waiter));
                    drop(slot);
                    true
                }
                Err(_) => {
                    r.slot.set(Some(slot));
                    false
                }
            }
        })
        .unwrap_or(false)
}

/// When the caller of the request being served stops waiting for its reply
/// (its call timeout, sent as the message's TTL), if it said: a method
/// that waits should wait no longer.
pub fn deadline() -> Option<Instant> {
    REQUEST.try_with(|r| r.deadline.get()).ok().flatten()
}

/// Record the deadline of the request this task serves.
pub(super) fn set_deadline(deadline: Option<Instant>) {
    let _ = REQUEST.try_with(|r| r.deadline.set(deadline));
}

impl RequestSlot {
    /// A request holding `slot`; `waiting` counts the requests of its
    /// server that gave theirs back.
    pub(super) fn new(slot: OwnedSemaphorePermit, waiting: Arc<Semaphore>) -> Self {
        Self { slot: Cell::new(Some(slot)), deadline: Cell::new(None), waiting, waiter: Cell::new(None) }
    }

    /// Run `request` with this as its task-local state.
    pub(super) fn scope<F: Future>(self, request: F) -> impl Future<Output = F::Output> {
        REQUEST.scope(self, request)
    }
}
