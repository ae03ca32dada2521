//! Notifications on oslo.messaging 18.3.1's wire: the captures re-encode
//! byte for byte, queues are declared as oslo declares them, and real oslo
//! notifiers and listeners talk with ours both ways, under default and
//! modern HA options, with pools; a broker outage loses no task result.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use nova_core::notifications::{Notifications, VersionedPayload};
use nova_rpc::{
    notify::{
        decode, encode, handler, Notification, NotificationListener, NotificationRef, NotificationResult, Notifier,
        NotifierOptions, Priority, RunningListener,
    },
    transport::{self, Transport, TransportOptions},
    RequestContext,
};
use nova_tests::{eventually, interop::PyPeer, Bus, Kind, TempDir};
use serde_json::{json, Value};

/// A bus, with this binary's log captured (first, so that the capture is
/// the process's subscriber: the outage test reads what was logged).
fn bus(kind: Kind) -> Bus {
    nova_tests::log_capture();
    Bus::new(kind)
}

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/oslo-notify").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn oslo_captures_re_encode_byte_for_byte() {
    let captures = fixture("messages.json");
    let captures = captures.as_array().unwrap();
    assert_eq!(captures.len(), 14, "every priority, with both drivers");
    for c in captures {
        let raw = c["body_raw"].as_str().unwrap();
        let n = decode(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(n.priority.routing_name(), c["priority"], "{raw}");
        assert_eq!((n.publisher_id.as_str(), n.event_type.as_str()), ("compute.host1", "task.run.end"));
        assert!(n.ctxt.is_empty(), "oslo sends no context for a plain dict");
        assert_eq!(c["routing_key"], format!("{}.{}", c["topic"].as_str().unwrap(), n.priority.routing_name()));
        let inner = nova_rpc::wire::decode_message(raw.as_bytes()).unwrap();
        let payload = nova_rpc::pyjson::to_string(&n.payload).unwrap();
        let ours = NotificationRef {
            message_id: &n.metadata.message_id,
            publisher_id: &n.publisher_id,
            event_type: &n.event_type,
            priority: n.priority,
            payload: &payload,
            timestamp: &n.metadata.timestamp,
            unique_id: inner["_unique_id"].as_str().unwrap(),
            context: None,
        };
        let body = encode(&ours, c["driver"] == "messagingv2").unwrap();
        assert_eq!(String::from_utf8(body).unwrap(), raw, "{} {}", c["driver"], c["priority"]);
        assert_eq!(
            c["properties"],
            json!({"content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2, "priority": 0, "headers": {}}),
            "the properties every nova-rs publish carries (with a timestamp added)"
        );
    }
}

fn modern(o: &mut TransportOptions) {
    o.rabbit.rabbit_quorum_queue = true;
    o.rabbit.rabbit_transient_quorum_queue = true;
    o.rabbit.rabbit_stream_fanout = true;
    o.rabbit.rabbit_qos_prefetch_count = 10;
}

async fn transport(bus: &Bus, ha: bool) -> Arc<dyn Transport> {
    let mut o = bus.options();
    if ha {
        modern(&mut o);
    }
    transport::connect(o).await.unwrap()
}

fn notifier(t: &Arc<dyn Transport>, topic: &str, drivers: &str) -> Notifier {
    let drivers = drivers.split(',').map(|d| nova_rpc::notify::Driver::named(d, None).unwrap()).collect();
    Notifier::new(t.clone(), NotifierOptions { drivers, topics: vec![topic.into()], ..NotifierOptions::default() })
        .prepare("nova-compute:host1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_queues_are_declared_as_oslo_declares_them() {
    let expected = fixture("queues.json");
    for (options, ha) in [("default", false), ("modern", true)] {
        let bus = bus(Kind::Rabbit);
        let t = transport(&bus, ha).await;
        let n = notifier(&t, "declared", "messagingv2");
        for p in Priority::ALL {
            n.notify(&RequestContext::new(), "x.y", p, json!({}));
        }
        assert!(n.flush(Duration::from_secs(30)).await, "sent");
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-q", "list_queues", "-p", bus.vhost().unwrap(), "--formatter", "json"])
            .args(["name", "durable", "auto_delete", "arguments"])
            .output()
            .unwrap();
        let mut queues: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        queues.sort_by_key(|q| q["name"].as_str().unwrap().to_owned());
        for q in &mut queues {
            q["name"] = q["name"].as_str().unwrap().replace("declared", "TOPIC").into();
        }
        assert_eq!(Value::Array(queues), expected[options], "{options}");
        // A quorum queue's count is published on the broker's next tick.
        let vhost = bus.vhost().unwrap();
        eventually("one of each kept for a listener to come", Duration::from_secs(30), || async {
            Priority::ALL
                .iter()
                .all(|p| nova_tests::rabbit_queue_depth(vhost, &format!("declared.{}", p.routing_name())) == Some(1))
                .then_some(())
        })
        .await;
        t.close().await;
    }
}

#[derive(serde::Serialize)]
struct TaskPayload {
    task_id: String,
    exit_code: i32,
}

impl VersionedPayload for TaskPayload {
    const NAME: &'static str = "TaskPayload";
    const VERSION: &'static str = "1.0";
}

/// Every priority, from both drivers and both of Nova's formats, reaches
/// a Python listener with what oslo hands its endpoints.
async fn python_listener_receives_ours(ha: bool) {
    let (bus, dir) = (bus(Kind::Rabbit), TempDir::new("notify"));
    let flags: &[&str] = if ha { &["--modern"] } else { &[] };
    let mut py = PyPeer::listener(&bus.url, &bus.exchange, "notifications", flags, dir.path());
    let t = transport(&bus, ha).await;
    let ctx = RequestContext::new().with_user("u1", "p1");
    for driver in ["messagingv2", "messaging"] {
        let n = notifier(&t, "notifications", driver);
        for p in Priority::ALL {
            n.notify(&ctx, "task.run.end", p, json!({"task_id": "t1", "driver": driver, "runtime": 1.5}));
            let got = py.next_json(Duration::from_secs(30)).unwrap_or_else(|| panic!("{driver} {p}: {}", py.stderr()));
            assert_eq!(got["priority"], p.as_str());
            assert_eq!(got["publisher_id"], "nova-compute:host1");
            assert_eq!(got["event_type"], "task.run.end");
            assert_eq!(got["payload"], json!({"task_id": "t1", "driver": driver, "runtime": 1.5}));
            assert_eq!(got["ctxt"]["user_id"], "u1");
            assert_eq!(got["ctxt"]["request_id"], ctx.request_id.as_str());
            let id = got["metadata"]["message_id"].as_str().unwrap();
            assert_eq!(id.len(), 36, "a UUID with dashes, as oslo's: {id}");
            assert!(got["metadata"]["timestamp"].as_str().unwrap().starts_with("20"), "{got}");
        }
    }
    let both = Notifications::new(
        Some(notifier(&t, "notifications", "messagingv2")),
        Some(notifier(&t, "notifications", "messagingv2")),
    );
    both.emit(&ctx, Priority::Info, "task.run.end", &TaskPayload { task_id: "t2".into(), exit_code: 3 });
    // Two notifiers, two send queues: either may arrive first.
    let mut two = [py.next_json(Duration::from_secs(30)).unwrap(), py.next_json(Duration::from_secs(30)).unwrap()];
    two.sort_by_key(|n| n["payload"].get("nova_object.name").is_some());
    assert_eq!(two[0]["payload"], json!({"task_id": "t2", "exit_code": 3}));
    assert_eq!(
        two[1]["payload"],
        json!({"nova_object.name": "TaskPayload", "nova_object.namespace": "nova", "nova_object.version": "1.0",
               "nova_object.data": {"task_id": "t2", "exit_code": 3}})
    );
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_listener_receives_ours_default_options() {
    python_listener_receives_ours(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_listener_receives_ours_modern_options() {
    python_listener_receives_ours(true).await;
}

type Seen = Arc<Mutex<Vec<Notification>>>;

async fn collecting(t: &Arc<dyn Transport>, topic: &str, pool: &str) -> (Seen, RunningListener) {
    let seen: Seen = Arc::default();
    let keep = seen.clone();
    let listener = NotificationListener::new(t.clone(), [topic])
        .pool(pool)
        .endpoint(handler(move |n| {
            keep.lock().unwrap().push(n);
            async { NotificationResult::Handled }
        }))
        .start()
        .await
        .unwrap();
    (seen, listener)
}

/// A Python notifier's notifications reach a nova-rs listener and
/// `nova-rpc listen`, whatever their priority.
async fn ours_receive_pythons(ha: bool) {
    let (bus, dir) = (bus(Kind::Rabbit), TempDir::new("notify"));
    let flags: &[&str] = if ha { &["--modern"] } else { &[] };
    let t = transport(&bus, ha).await;
    let (seen, listener) = collecting(&t, "notifications", "rs").await;
    let args =
        ["--transport-url", &bus.url, "--control-exchange", &bus.exchange, "listen", "--pool", "cli", "--count", "7"];
    let quorum = if ha { "true" } else { "false" };
    let env = [("NOVA_OSLO_MESSAGING_RABBIT__RABBIT_QUORUM_QUEUE", quorum)];
    let mut cli = nova_tests::Proc::spawn_env("nova-rpc", &args, &env, dir.path());
    eventually("nova-rpc listen consumes", Duration::from_secs(60), || async {
        cli.output().contains("listening for notifications").then_some(())
    })
    .await;
    let mut py = PyPeer::notifier(&bus.url, &bus.exchange, flags, dir.path());
    for p in Priority::ALL {
        let sent = py.request(json!({"topic": "notifications", "publisher_id": "python.host", "priority": p.as_str(),
                                     "event_type": "volume.attach", "payload": {"priority": p.as_str(), "size": 10}}));
        assert_eq!(sent, json!({"ok": null}), "{}", py.stderr());
    }
    let got = eventually("the nova-rs listener got all seven", Duration::from_secs(30), || async {
        let seen = seen.lock().unwrap();
        (seen.len() >= 7).then(|| seen.clone())
    })
    .await;
    let priorities: HashSet<Priority> = got.iter().map(|n| n.priority).collect();
    assert_eq!(priorities.len(), 7, "{got:?}");
    for n in &got {
        assert_eq!((n.publisher_id.as_str(), n.event_type.as_str()), ("python.host", "volume.attach"));
        assert_eq!(n.payload, json!({"priority": n.priority.as_str(), "size": 10}));
        assert_eq!(n.metadata.message_id.len(), 36);
    }
    let status = tokio::task::block_in_place(|| cli.wait_exit(Duration::from_secs(60)))
        .expect("nova-rpc listen exits after --count");
    assert!(status.success(), "{}", cli.output());
    let lines: Vec<Value> =
        cli.output().lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 7, "{}", cli.output());
    assert!(lines.iter().all(|l| l["event_type"] == "volume.attach" && l["metadata"]["message_id"].is_string()));
    listener.stop().await;
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_receive_pythons_default_options() {
    ours_receive_pythons(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_receive_pythons_modern_options() {
    ours_receive_pythons(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_each_get_everything_and_a_pools_listeners_share() {
    let (bus, dir) = (bus(Kind::Rabbit), TempDir::new("notify"));
    let t = transport(&bus, false).await;
    let mut python_pool = PyPeer::listener(&bus.url, &bus.exchange, "pooled", &["--pool=billing"], dir.path());
    let (first, a) = collecting(&t, "pooled", "audit").await;
    let (second, b) = collecting(&t, "pooled", "audit").await;
    let n = notifier(&t, "pooled", "messagingv2");
    const SENT: usize = 40;
    for i in 0..SENT {
        n.info(&RequestContext::new(), "compute.instance.update", json!({"i": i}));
    }
    let mut billing = HashSet::new();
    while billing.len() < SENT {
        let got = python_pool.next_json(Duration::from_secs(30)).unwrap_or_else(|| panic!("{}", python_pool.stderr()));
        billing.insert(got["payload"]["i"].as_u64().unwrap());
    }
    let shared = eventually("the audit pool got every one", Duration::from_secs(30), || async {
        let (x, y) = (first.lock().unwrap().clone(), second.lock().unwrap().clone());
        (x.len() + y.len() >= SENT).then_some((x, y))
    })
    .await;
    let ids: HashSet<_> = shared.0.iter().chain(&shared.1).map(|n| n.payload["i"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), SENT, "each once within the pool");
    assert!(
        !shared.0.is_empty() && !shared.1.is_empty(),
        "both listeners of the pool took some: {} and {}",
        shared.0.len(),
        shared.1.len()
    );
    a.stop().await;
    b.stop().await;
    t.close().await;
}

/// The broker goes away while a task ends: the result is recorded all the
/// same, and `task.run.end` is sent once the broker is back (retry -1),
/// or dropped with a log line (retry 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_while_a_task_ends() {
    use nova_core::{db::Database, ManagerHandle, Service};
    use nova_services::compute::{commands::Commands, ComputeApi, ComputeManager, TaskStatus};

    nova_tests::log_capture();
    let broker = nova_tests::broker::PrivateBroker::start(false);
    let mut options = nova_tests::fast_reconnect(&broker.url(), &nova_tests::unique("nova"), Duration::from_secs(3));
    options.rabbit.amqp_durable_queues = true;
    let t = transport::connect(options.clone()).await.unwrap();
    let listen_t = transport::connect(options).await.unwrap();
    let (seen, listener) = collecting(&listen_t, "notifications", "ops").await;

    let db = nova_tests::TestDb::sqlite();
    let database = Database::connect(&db.url).await.unwrap();
    let mut migrations = nova_core::db::services::MIGRATIONS.to_vec();
    migrations.extend_from_slice(nova_services::compute::tasks::MIGRATIONS);
    database.migrate(&migrations).await.unwrap();
    let allowed = Commands::parse(vec![("sleep".into(), "/bin/sleep".into())]).unwrap();
    let rpc = nova_rpc::RpcClient::new(t.clone(), nova_rpc::Target::new("scheduler"));
    let notifications = Notifications::new(Some(notifier(&t, "notifications", "messagingv2")), None);
    let m = Arc::new(
        ComputeManager::new("c1", allowed, 2, 0.0, 1, database, rpc).with_notifications(notifications.clone()),
    );
    let service = Service::create(t.clone(), ManagerHandle::new(m.clone())).binary("nova-compute").host("c1");
    let running = service.periodic_enable(false).start().await.unwrap();
    let ctx = RequestContext::new();
    m.run_task(ctx.clone(), "sleep".into(), vec!["2".into()], "outage-1".into(), None, None).await.unwrap();
    let events = |seen: &Seen| seen.lock().unwrap().iter().map(|n| n.event_type.clone()).collect::<Vec<_>>();
    eventually("task.run.start arrives", Duration::from_secs(30), || async {
        events(&seen).contains(&"task.run.start".to_owned()).then_some(())
    })
    .await;

    broker.stop_app();
    let finished =
        eventually("the task ends and is recorded while the broker is away", Duration::from_secs(60), || async {
            m.get_task(ctx.clone(), "outage-1".into()).await.ok().filter(|t| t.status == TaskStatus::Succeeded)
        })
        .await;
    assert_eq!(finished.exit_code, Some(0));
    assert!(!events(&seen).contains(&"task.run.end".to_owned()), "nothing can arrive while the broker is away");
    // retry 0: given up at once, said in the log and counted.
    let failed_before = nova_rpc::notify::metrics().get(Priority::Warn, "failed");
    let impatient = notifier(&t, "notifications", "messagingv2").with_retry(Some(0));
    impatient.warn(&ctx, "outage.test", json!({}));
    assert!(impatient.flush(Duration::from_secs(60)).await, "{}", nova_tests::logged());
    assert_eq!(nova_rpc::notify::metrics().get(Priority::Warn, "failed"), failed_before + 1);
    assert!(nova_tests::logged().contains("notification not sent"), "{}", nova_tests::logged());

    broker.start_app();
    let end = eventually("task.run.end arrives once the broker is back", Duration::from_secs(90), || async {
        seen.lock().unwrap().iter().find(|n| n.event_type == "task.run.end").cloned()
    })
    .await;
    assert_eq!(end.payload["task_id"], "outage-1");
    assert_eq!(end.payload["status"], "succeeded");
    assert_eq!(end.payload["exit_code"], 0);
    assert_eq!(end.publisher_id, "nova-compute:host1");
    assert!(!events(&seen).contains(&"outage.test".to_owned()), "retry 0 dropped it");
    running.stop().await;
    listener.stop().await;
}

/// A manager with nothing to say.
pub struct Quiet;

#[nova_core::rpc_api(version = "1.0")]
impl Quiet {
    /// Answers.
    pub async fn ping(&self, _ctx: RequestContext) -> Result<String, nova_rpc::RpcError> {
        Ok("pong".into())
    }
}

impl nova_core::Manager for Quiet {}

/// A service announces its record: up when it starts, disabled when an
/// operator disables it, down when it stops (Nova's `service.update`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_announces_its_record_changes() {
    use nova_core::{
        db::{
            services::{AdminAction, ServiceRecords},
            Database,
        },
        ManagerHandle, Service,
    };

    let bus = bus(Kind::Memory);
    let t = bus.transport().await;
    let (seen, listener) = collecting(&t, "versioned_notifications", "ops").await;
    let db = nova_tests::TestDb::sqlite();
    let database = Database::connect(&db.url).await.unwrap();
    database.migrate(nova_core::db::services::MIGRATIONS).await.unwrap();
    let records = ServiceRecords::new(database);
    let notifications = Notifications::new(None, Some(notifier(&t, "versioned_notifications", "messagingv2")));
    let manager = ManagerHandle::new(Arc::new(Quiet));
    let service = Service::create(t.clone(), manager)
        .binary("nova-echo")
        .host("e1")
        .records(records.clone())
        .notifications(notifications.prepare("nova-echo:e1"))
        .report_interval(Duration::from_millis(100));
    let running = service.start().await.unwrap();
    let updates = |seen: &Seen| -> Vec<Value> {
        let seen = seen.lock().unwrap();
        seen.iter()
            .filter(|n| n.event_type == "service.update")
            .map(|n| n.payload["nova_object.data"].clone())
            .collect()
    };
    let up =
        eventually("service.update: up", Duration::from_secs(30), || async { updates(&seen).first().cloned() }).await;
    assert_eq!(
        (up["host"].as_str(), up["binary"].as_str(), up["up"].as_bool()),
        (Some("e1"), Some("nova-echo"), Some(true))
    );
    assert_eq!(seen.lock().unwrap()[0].payload["nova_object.name"], "ServiceStatusPayload");
    records.admin("e1", "nova-echo", &AdminAction::Disable(Some("maintenance".into()))).await.unwrap();
    let disabled = eventually("service.update: disabled", Duration::from_secs(30), || async {
        updates(&seen).into_iter().find(|u| u["disabled"] == true)
    })
    .await;
    assert_eq!(disabled["disabled_reason"], "maintenance");
    running.stop().await;
    let down = eventually("service.update: down", Duration::from_secs(30), || async {
        updates(&seen).into_iter().find(|u| u["up"] == false)
    })
    .await;
    assert_eq!(down["disabled"], true);
    assert_eq!(updates(&seen).len(), 3, "one per change, none per heartbeat: {:?}", updates(&seen));
    listener.stop().await;
}

/// The listener's own rules: filters, requeue, batches, what is not a
/// notification, and an endpoint that panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_filters_requeues_and_batches() {
    use nova_rpc::notify::NotificationFilter;

    let bus = bus(Kind::Memory);
    let t = bus.transport().await;
    let errors: Seen = Arc::default();
    let keep = errors.clone();
    let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = tries.clone();
    let filtered = NotificationListener::new(t.clone(), ["filtered"])
        .pool("f")
        .endpoint(
            handler(move |n| {
                let (keep, counted) = (keep.clone(), counted.clone());
                async move {
                    // The first try of each is refused: it must come again.
                    if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 == 0 {
                        return NotificationResult::Requeue;
                    }
                    keep.lock().unwrap().push(n);
                    NotificationResult::Handled
                }
            })
            .priorities([Priority::Error])
            .filter(NotificationFilter::new().publisher_id("nova-compute:").unwrap().event_type(r"task\.").unwrap()),
        )
        .start()
        .await
        .unwrap();
    let n = notifier(&t, "filtered", "messagingv2");
    let ctx = RequestContext::new();
    n.error(&ctx, "task.run.error", json!({"i": 1}));
    n.info(&ctx, "task.run.end", json!({"i": 2}));
    n.error(&ctx, "service.update", json!({"i": 3}));
    n.prepare("nova-scheduler:s1").error(&ctx, "task.run.error", json!({"i": 4}));
    n.error(&ctx, "task.run.error", json!({"i": 5}));
    let got = eventually("the two that pass, each after a requeue", Duration::from_secs(30), || async {
        let e = errors.lock().unwrap();
        (e.len() == 2).then(|| e.iter().map(|n| n.payload["i"].as_u64().unwrap()).collect::<HashSet<_>>())
    })
    .await;
    assert_eq!(got, HashSet::from([1, 5]));

    // Batches of up to 3, and a panicking endpoint's batch comes again.
    let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
    struct Batcher(Arc<Mutex<Vec<usize>>>, std::sync::atomic::AtomicBool);
    #[async_trait::async_trait]
    impl nova_rpc::notify::NotificationEndpoint for Batcher {
        async fn notify(&self, _: Notification) -> NotificationResult {
            unreachable!("a batching listener hands batches")
        }
        async fn notify_batch(&self, batch: Vec<Notification>) -> NotificationResult {
            if !self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("the first batch fails");
            }
            self.0.lock().unwrap().push(batch.len());
            NotificationResult::Handled
        }
    }
    let n = notifier(&t, "batched", "messagingv2");
    for i in 0..7 {
        n.info(&ctx, "x", json!({"i": i}));
    }
    assert!(n.flush(Duration::from_secs(10)).await);
    let malformed_before = nova_rpc::notify::metrics().malformed();
    let dest =
        transport::Destination::Topic { exchange: bus.exchange.as_str().into(), routing_key: "batched.info".into() };
    t.send(&dest, transport::Outgoing::new(&b"{\"not\": \"a notification\"}"[..])).await.unwrap();
    let batcher = Batcher(batches.clone(), std::sync::atomic::AtomicBool::new(false));
    let listener = NotificationListener::new(t.clone(), ["batched"])
        .endpoint(batcher)
        .batch(3, Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let sizes = eventually("all seven in batches", Duration::from_secs(30), || async {
        let b = batches.lock().unwrap();
        (b.iter().sum::<usize>() == 7).then(|| b.clone())
    })
    .await;
    assert!(sizes.iter().all(|&s| (1..=3).contains(&s)), "{sizes:?}");
    assert_eq!(nova_rpc::notify::metrics().malformed(), malformed_before + 1, "dropped and counted, not requeued");
    listener.stop().await;
    filtered.stop().await;
}
