//! The duplicate window records what ran, not what arrived: a copy whose
//! acknowledgement failed (its connection died) is not served, and the
//! broker's redelivery of it is not taken for a duplicate.

use std::sync::{Arc, Mutex};

use super::{
    request::{handle, Served},
    ServerState,
};
use crate::{
    dispatcher::{Dispatcher, Router},
    transport::{self, Acked, Acknowledge, Delivery, TransportOptions},
    wire::{encode_request_ref, RequestRef},
    Args, RequestContext, RpcError, Version,
};

/// How each copy was settled, in order.
type Settled = Arc<Mutex<Vec<&'static str>>>;

/// An acknowledger whose `ack` ends as told.
struct Ack {
    acked: Acked,
    settled: Settled,
}

#[async_trait::async_trait]
impl Acknowledge for Ack {
    async fn ack(self: Box<Self>) -> Acked {
        self.settled.lock().unwrap().push("ack");
        self.acked
    }

    async fn requeue(self: Box<Self>) {
        self.settled.lock().unwrap().push("requeue");
    }

    async fn reject(self: Box<Self>) {
        self.settled.lock().unwrap().push("reject");
    }
}

/// A server state whose `record` method counts its runs and fails while
/// `failing` is set.
async fn state(at_least_once: bool) -> (ServerState, Arc<Mutex<u32>>, Arc<Mutex<bool>>) {
    let transport = transport::connect(TransportOptions::new("memory://server-dedupe")).await.unwrap();
    let (runs, failing) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(false)));
    let router = {
        let (runs, failing) = (runs.clone(), failing.clone());
        Router::new(Version::new(1, 0)).method("record", move |_ctx: RequestContext, _args: serde_json::Value| {
            *runs.lock().unwrap() += 1;
            let fail = *failing.lock().unwrap();
            async move {
                if fail {
                    Err(RpcError::remote("Boom", "tests", "failing"))
                } else {
                    Ok(())
                }
            }
        })
    };
    let names = ("nova".to_owned(), "dedupe".to_owned(), "s1".to_owned());
    let max_deliveries = at_least_once.then_some(5);
    let state =
        ServerState::new(transport, names, Dispatcher::new(vec![Arc::new(router)]), Default::default(), max_deliveries);
    (state, runs, failing)
}

/// A copy of the cast with `_unique_id` `id`, acknowledged as `acked`.
fn copy(id: &str, acked: Acked, settled: &Settled) -> Delivery {
    let (args, ctx) = (Args::default(), RequestContext::new());
    let body = encode_request_ref(&RequestRef {
        method: "record",
        args: &args,
        namespace: None,
        version: None,
        msg_id: None,
        reply_q: None,
        monitor_timeout: None,
        unique_id: id,
        context: &ctx,
    })
    .unwrap();
    Delivery::new(body.into(), Box::new(Ack { acked, settled: settled.clone() }))
}

/// The settles so far, once there are `n` (a duplicate is acknowledged
/// in a task of its own).
async fn settles(settled: &Settled, n: usize) -> Vec<&'static str> {
    for _ in 0..1000 {
        if settled.lock().unwrap().len() >= n {
            break;
        }
        tokio::task::yield_now().await;
    }
    settled.lock().unwrap().clone()
}

const ID: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn at_most_once_serves_the_redelivery_of_a_copy_whose_ack_failed() {
    let (state, runs, _) = state(false).await;
    let settled = Settled::default();
    // The connection died under the ack: not served, not remembered…
    handle(&state, copy(ID, Acked::Failed, &settled), Served::InLoop).await;
    assert_eq!(*runs.lock().unwrap(), 0, "a copy the broker still holds is not served");
    // …so the broker's redelivery is served,
    handle(&state, copy(ID, Acked::Done, &settled), Served::InLoop).await;
    assert_eq!(*runs.lock().unwrap(), 1, "the redelivery is served");
    // and a copy after that is a duplicate.
    handle(&state, copy(ID, Acked::Done, &settled), Served::InLoop).await;
    assert_eq!(*runs.lock().unwrap(), 1, "served once");
    assert_eq!(settles(&settled, 3).await, ["ack", "ack", "ack"]);
}

#[tokio::test]
async fn at_most_once_serves_a_copy_whose_ack_got_no_answer_once() {
    let (state, runs, _) = state(false).await;
    let settled = Settled::default();
    // The broker may have the ack: served (at most once), and remembered.
    handle(&state, copy(ID, Acked::Unknown, &settled), Served::InLoop).await;
    handle(&state, copy(ID, Acked::Done, &settled), Served::InLoop).await;
    assert_eq!(*runs.lock().unwrap(), 1);
}

#[tokio::test]
async fn at_least_once_remembers_only_what_was_settled_as_done() {
    let (state, runs, failing) = state(true).await;
    let settled = Settled::default();
    // A failed attempt goes back to the queue and is not remembered…
    *failing.lock().unwrap() = true;
    handle(&state, copy(ID, Acked::Done, &settled), Served::InLoop).await;
    assert_eq!(*settled.lock().unwrap(), ["requeue"]);
    // …so its redelivery runs; once it succeeded, a further copy (an ack
    // lost with its connection) is a duplicate, acknowledged unrun.
    *failing.lock().unwrap() = false;
    handle(&state, copy(ID, Acked::Failed, &settled), Served::InLoop).await;
    handle(&state, copy(ID, Acked::Done, &settled), Served::InLoop).await;
    assert_eq!(*runs.lock().unwrap(), 2, "the failed attempt and the one that succeeded");
    assert_eq!(settles(&settled, 3).await, ["requeue", "ack", "ack"]);
}
