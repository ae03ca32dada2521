//! The bench API (version 1.0), what `nova-bench serve` serves in its own
//! process and what in-process servers serve: `echo` returns its arguments,
//! `count` (cast) counts, `work` sleeps `work_ms`, counts and answers the
//! server's name, and `received` (call) returns the count; and the
//! transport options every bench client and server uses.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::TransportOptions,
    RequestContext, RpcError, Version,
};
use serde_json::{Map, Value};

use super::Data;

/// The bench API of server `host`; `first` runs once, on the first message
/// of any kind. `work` answers with `host`, so a caller sees who served it.
pub fn bench_api(
    host: &str,
    count: Arc<AtomicUsize>,
    work: Duration,
    first: Arc<dyn Fn() + Send + Sync>,
) -> Dispatcher {
    let host = host.to_owned();
    let once = Arc::new(std::sync::Once::new());
    let mark = move || {
        let first = first.clone();
        once.call_once(move || first());
    };
    let (m1, m2, m3) = (mark.clone(), mark.clone(), mark);
    let (c1, c2, c3) = (count.clone(), count.clone(), count);
    let api = Router::new(Version::new(1, 0))
        .method("echo", move |_ctx: RequestContext, args: Data| {
            m1();
            async move { Ok::<_, RpcError>(args) }
        })
        .method("count", move |_ctx: RequestContext, _args: Data| {
            m2();
            c1.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, RpcError>(()) }
        })
        .method("work", move |_ctx: RequestContext, _args: Map<String, Value>| {
            m3();
            let (c, host) = (c2.clone(), host.clone());
            async move {
                tokio::time::sleep(work).await;
                c.fetch_add(1, Ordering::Relaxed);
                Ok::<_, RpcError>(host)
            }
        })
        .method("received", move |_ctx: RequestContext, _args: Map<String, Value>| {
            let n = c3.load(Ordering::Relaxed);
            async move { Ok::<_, RpcError>(n) }
        });
    Dispatcher::new(vec![Arc::new(api)])
}

/// Transport options for the bench: `url`, a private exchange, confirms on or off.
pub fn options(url: &str, exchange: &str, confirms: bool) -> TransportOptions {
    let mut o = TransportOptions::new(url).with_control_exchange(exchange);
    o.rabbit.publisher_confirms = confirms;
    o.rpc_response_timeout = Duration::from_secs(30);
    o
}
