//! Notifications, live: `GET /v1/events` as Server-Sent Events, and the
//! console's events page (`/events`), which follows the same stream.
//!
//! The gateway listens once, on a queue of its own (it takes nothing from
//! the cloud's other listeners), to the topics it was given (the
//! unversioned and versioned notification topics); every client gets what
//! arrives from then on, after the last [`RECENT`] that arrived before it
//! connected, each as one `data:` line of JSON (what `nova-rpc listen`
//! prints) with the `message_id` as its event id. `?event_type=REGEX`
//! (matched from the start, as oslo's filters) and `?priority=info,error`
//! narrow it. A client too slow to keep up is told (`event: lagged`)
//! and goes on from the newest.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Query, State},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Extension,
};
use futures_util::stream::{self, Stream, StreamExt};
use maud::html;
use nova_rpc::notify::{
    handler, Notification, NotificationFilter, NotificationListener, NotificationResult, Priority, RunningListener,
};
use tokio::sync::{broadcast, OnceCell};

use super::{ApiError, Caller, Gateway};

/// How many notifications a new client is shown first.
pub const RECENT: usize = 100;

/// The gateway's one listener and what it heard; see the module docs.
#[derive(Clone)]
pub struct Events {
    topics: Arc<Vec<String>>,
    hub: Arc<Hub>,
}

struct Hub {
    live: broadcast::Sender<Arc<Notification>>,
    recent: Mutex<VecDeque<Arc<Notification>>>,
    listening: OnceCell<RunningListener>,
}

impl Events {
    /// Follow `topics` (started on the first client).
    pub fn new(topics: Vec<String>) -> Self {
        let hub = Hub { live: broadcast::channel(1024).0, recent: Mutex::default(), listening: OnceCell::new() };
        Self { topics: Arc::new(topics), hub: Arc::new(hub) }
    }

    /// Start listening, once.
    async fn start(&self, gw: &Gateway) -> Result<(), ApiError> {
        let hub = self.hub.clone();
        let topics = self.topics.iter().map(String::as_str);
        self.hub
            .listening
            .get_or_try_init(|| async {
                let keep = handler(move |n| {
                    let n = Arc::new(n);
                    {
                        let mut recent = hub.recent.lock().unwrap_or_else(|p| p.into_inner());
                        if recent.len() == RECENT {
                            recent.pop_front();
                        }
                        recent.push_back(n.clone());
                    }
                    let _ = hub.live.send(n);
                    async { NotificationResult::Handled }
                });
                NotificationListener::new(gw.client().transport().clone(), topics)
                    .private()
                    .endpoint(keep)
                    .start()
                    .await
            })
            .await
            .map(|_| ())
            .map_err(ApiError::from)
    }
}

/// What a client asks to see.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct Wanted {
    event_type: Option<String>,
    priority: Option<String>,
}

/// The test a notification must pass for one client.
struct Narrow {
    filter: NotificationFilter,
    priorities: Option<Vec<Priority>>,
}

impl Narrow {
    fn of(w: &Wanted) -> Result<Self, ApiError> {
        let filter = match &w.event_type {
            Some(re) => NotificationFilter::new()
                .event_type(re)
                .map_err(|e| ApiError::bad_request(format!("event_type: {e}")))?,
            None => NotificationFilter::new(),
        };
        let priorities = match &w.priority {
            Some(list) => Some(
                list.split(',')
                    .map(|p| {
                        Priority::parse(p.trim())
                            .ok_or_else(|| ApiError::bad_request(format!("unknown priority {p:?}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        Ok(Self { filter, priorities })
    }

    fn admits(&self, n: &Notification) -> bool {
        self.filter.matches(n) && self.priorities.as_ref().is_none_or(|ps| ps.contains(&n.priority))
    }
}

fn event(n: &Notification) -> Event {
    Event::default().id(n.metadata.message_id.clone()).data(serde_json::to_string(n).unwrap_or_default())
}

/// `GET /v1/events` (and the console's `/events/stream`).
pub(super) async fn stream(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Query(wanted): Query<Wanted>,
) -> Response {
    match follow(&gw, &caller, &wanted).await {
        Ok(sse) => sse.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn follow(
    gw: &Gateway,
    caller: &Caller,
    wanted: &Wanted,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    gw.authorize("api:events", caller)?;
    let narrow = Arc::new(Narrow::of(wanted)?);
    let events = &gw.events;
    events.start(gw).await?;
    let live = events.hub.live.subscribe();
    let recent: Vec<Event> = {
        let recent = events.hub.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().filter(|n| narrow.admits(n)).map(|n| event(n)).collect()
    };
    let live = stream::unfold((live, narrow), |(mut live, narrow)| async move {
        loop {
            match live.recv().await {
                Ok(n) if narrow.admits(&n) => return Some((event(&n), (live, narrow))),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let told = Event::default().event("lagged").data(missed.to_string());
                    return Some((told, (live, narrow)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let all = stream::iter(recent).chain(live).map(Ok);
    Ok(Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /events`: the console's live view of notifications.
pub(super) async fn page(State(gw): State<Gateway>, Extension(caller): Extension<Caller>) -> Response {
    if let Err(e) = gw.authorize("api:events", &caller) {
        return e.into_response();
    }
    super::console::document(
        "nova-rs console: events",
        html! {
            h1 { "Events" }
            p { a href="/" { "console" } }
            p.note { "Notifications as they arrive (the last " (RECENT) " first), newest on top." }
            form #event-filter {
                label { "event type" } input name="event_type" placeholder="regex, e.g. task\\.run" autocomplete="off";
                " "
                label { "priority" }
                select name="priority" {
                    option value="" { "any" }
                    @for p in Priority::ALL { option value=(p.routing_name()) { (p.as_str()) } }
                }
                " " button type="submit" { "Follow" }
            }
            p.note { span #events-state { "connecting…" } }
            table #events {
                tr { th { "time (UTC)" } th { "priority" } th { "event type" } th { "publisher" } th { "payload" } }
            }
        },
    )
}
