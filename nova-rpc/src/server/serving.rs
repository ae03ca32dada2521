//! The loops that take deliveries off a listener (the ordinary loop and a
//! work queue's), and serving in the sender's task ([`InlineServer`]).

use std::{
    future::Future,
    sync::Arc,
    task::{Context, Waker},
};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::{
    request::{handle, Served},
    slot::{RequestSlot, MAX_WAITING},
    ServerState, StopReport,
};
use crate::transport::{Delivery, InlineServing, Listener};

pub(super) async fn serve(
    shared: Arc<ServerState>,
    mut listener: Listener,
    slots: Arc<Semaphore>,
    limit: usize,
    mut stopped: watch::Receiver<bool>,
) -> StopReport {
    loop {
        let delivery = tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => break,
            d = listener.recv() => match d { Some(d) => d, None => break },
        };
        let slot = tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => {
                delivery.into_parts().1.requeue().await;
                break;
            }
            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => break },
        };
        run_request(shared.clone(), delivery, slot, Served::InLoop);
    }
    wind_down(listener, &slots, limit, &shared.waiting).await
}

/// Hand back what was not taken, then wait for the requests running
/// (each holds one of `running`) to finish.
async fn wind_down(mut listener: Listener, running: &Semaphore, limit: usize, waiting: &Semaphore) -> StopReport {
    let requeued = listener.stop_and_requeue().await;
    let busy = running.acquire_many(limit as u32).await.map(|p| p.forget());
    // And the requests that gave their slots back to wait.
    let _ = waiting.acquire_many(MAX_WAITING).await.map(|p| p.forget());
    drop(listener);
    StopReport { abandoned: usize::from(busy.is_err()), requeued }
}

/// A work queue's loop: wait for a free work slot, take one message, stop
/// consuming, serve it holding a slot (see [`RpcServer::as_work_queue`](super::RpcServer::as_work_queue)).
/// No slot is held while waiting for a message, so work arriving by other
/// paths can take the slots meanwhile; if it takes the last one, the one
/// message received then waits here, unacknowledged, for the next free slot.
/// `running` counts what runs, so a stop can wait for it.
pub(super) async fn serve_work(
    shared: Arc<ServerState>,
    mut listener: Listener,
    work: Arc<Semaphore>,
    running: Arc<Semaphore>,
    limit: usize,
    mut stopped: watch::Receiver<bool>,
) -> StopReport {
    loop {
        tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => break,
            free = work.acquire() => if free.is_err() { break },
        }
        let Ok(tracked) = running.clone().acquire_owned().await else { break };
        tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => break,
            () = listener.resume() => {}
        }
        let delivery = tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => break,
            d = listener.recv() => match d { Some(d) => d, None => break },
        };
        // Nothing more comes before the next free slot: the broker keeps it.
        let slot = tokio::select! {
            biased;
            _ = crate::transport::stopped(&mut stopped) => None,
            (_, slot) = async { tokio::join!(listener.pause(), work.clone().acquire_owned()) } => slot.ok(),
        };
        let Some(slot) = slot else {
            delivery.into_parts().1.requeue().await;
            break;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(&shared, delivery, Served::InLoop).await;
            drop((slot, tracked));
        });
    }
    wind_down(listener, &running, limit, &shared.waiting).await
}

/// Start a request: it is served right here when its method returns
/// without waiting (saving a hand-over to another task), otherwise it goes
/// on in a task of its own. The first poll has no one to wake; the task's
/// first poll registers its wake-ups again, as every future must.
fn run_request(shared: Arc<ServerState>, delivery: Delivery, slot: OwnedSemaphorePermit, served: Served) {
    // The slot lives in the request's task-local state, so its method may
    // give it back while it waits ([`release_slot`]); otherwise it is
    // freed with the request.
    let held = RequestSlot::new(slot, shared.waiting.clone());
    let mut request = Box::pin(held.scope(async move { handle(&shared, delivery, served).await }));
    if request.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending() {
        tokio::spawn(request);
    }
}

/// Serves requests in the sender's task when the transport offers them
/// (the in-process transport does, to an idle server; see [`InlineServing`]).
pub(super) struct InlineServer {
    shared: Arc<ServerState>,
    slots: Arc<Semaphore>,
    stopped: watch::Receiver<bool>,
}

impl InlineServer {
    pub(super) fn new(shared: Arc<ServerState>, slots: Arc<Semaphore>, stopped: watch::Receiver<bool>) -> Self {
        Self { shared, slots, stopped }
    }
}

impl InlineServing for InlineServer {
    fn reserve(&self) -> Option<Box<dyn FnOnce(Delivery) + Send>> {
        if *self.stopped.borrow() {
            return None;
        }
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let shared = self.shared.clone();
        Some(Box::new(move |delivery| run_request(shared, delivery, slot, Served::InCallersTask)))
    }
}
