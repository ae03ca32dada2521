//! Who may call what through the gateway: tokens (hashed in a file, re-read
//! on SIGHUP) carry a user, project and roles into the RPC context; a
//! policy per `topic.method` answers 403; a foreign `Host`, a cross-origin
//! page or a non-JSON post never reaches a service; `noauth` stays on
//! loopback; and 300 slowloris sockets neither starve a real request nor
//! stay open. A rule cannot be sidestepped by naming a server inside the
//! topic (`echo.e1`), and the base API's admin methods are admin-only
//! unless the policy says otherwise.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use nova_core::db::{
    services::{ServiceRecords, MIGRATIONS},
    Database,
};
use nova_gateway::{self as gateway, ApiOptions, Auth, Gateway};
use nova_rpc::{
    dispatcher::{Dispatcher, Router},
    transport::{self, TransportOptions},
    RequestContext, RpcError, RpcServer, Target, Version,
};
use nova_tests::{eventually, free_port, http, unique, NovaAll, NovaAllSetup, Proc, TempDir};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn token_file(dir: &TempDir, tokens: &[(&str, &str, &[&str])]) -> std::path::PathBuf {
    let entries: Vec<Value> = tokens
        .iter()
        .map(|(token, user, roles)| json!({"sha256": sha256(token), "user_id": user, "project_id": "p1", "roles": roles}))
        .collect();
    dir.write("tokens.json", &json!({ "tokens": entries }).to_string())
}

/// `whoami` answers the context it was called with; `calls` counts calls.
fn whoami(calls: Arc<AtomicUsize>) -> Dispatcher {
    let r =
        Router::new(Version::new(1, 0)).method("whoami", move |ctx: RequestContext, _: Value| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, RpcError>(json!({"user_id": ctx.user_id, "project_id": ctx.project_id, "roles": ctx.roles}))
            }
        });
    Dispatcher::new(vec![Arc::new(r)])
}

struct InProcess {
    port: u16,
    calls: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: TempDir,
}

/// A gateway with token auth and a policy, in front of an `echo` service on memory://.
async fn in_process() -> InProcess {
    in_process_with(r#"{"default": "role:admin", "api:services": "@"}"#).await
}

/// The same with the policy document `policy`.
async fn in_process_with(policy: &str) -> InProcess {
    let dir = TempDir::new("gw-auth");
    let t = transport::connect(TransportOptions::new(format!("memory://{}", unique("gw")))).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let server = RpcServer::new(t.clone(), Target::new("echo").with_server("e1"), whoami(calls.clone()));
    std::mem::forget(server.start().await.unwrap());
    let db = Database::connect(&format!("sqlite:///{}", dir.path().join("db.sqlite").display())).await.unwrap();
    db.migrate(MIGRATIONS).await.unwrap();
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let options = ApiOptions {
        token_auth: true,
        token_file: Some(token_file(
            &dir,
            &[("admin-token", "alice", &["admin"]), ("reader-token", "bob", &["reader"])],
        )),
        policy_file: Some(dir.write("policy.json", policy)),
        ..ApiOptions::noauth(listen)
    };
    let auth = Auth::load(options).unwrap();
    let gw = Gateway::new(t, ServiceRecords::new(db), Duration::from_secs(60), auth);
    let gw = gw.clone().with_resource(nova_services::gateway::resource(&gw));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(gateway::serve(gw, async {
        let _ = stopped.await;
    }));
    eventually("the gateway listens", Duration::from_secs(10), || async {
        std::net::TcpStream::connect(listen).ok().map(drop)
    })
    .await;
    InProcess { port, calls, stop: Some(stop), _dir: dir }
}

async fn request(port: u16, method: &'static str, path: &str, headers: Vec<(&'static str, String)>) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // Status 0: nothing listens (yet).
        http(method, port, &path, &headers, b"{}").map_or((0, String::new()), |(status, _, body)| (status, body))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_policy() {
    let gw = in_process().await;
    let call = "/v1/call/echo/whoami";
    let token = |t: &str| vec![("X-Auth-Token", t.to_owned())];
    assert_eq!(request(gw.port, "POST", call, vec![]).await.0, 401, "no token");
    assert_eq!(request(gw.port, "POST", call, token("wrong")).await.0, 401, "an unknown token");
    let (status, body) = request(gw.port, "POST", call, token("reader-token")).await;
    assert_eq!((status, body.contains("Forbidden")), (403, true), "a role the policy does not allow: {body}");
    let (status, body) = request(gw.port, "POST", call, token("admin-token")).await;
    assert_eq!(status, 200, "{body}");
    let ctx: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ctx,
        json!({"user_id": "alice", "project_id": "p1", "roles": ["admin"]}),
        "the token's identity travels"
    );
    let (status, _) = request(gw.port, "GET", "/v1/services", token("reader-token")).await;
    assert_eq!(status, 200, "api:services is open to any token");
    assert_eq!(gw.calls.load(Ordering::SeqCst), 1, "refused requests never reached the service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_and_foreign_hosts_are_refused() {
    let mut gw = in_process().await;
    let call = "/v1/call/echo/whoami";
    let admin = ("X-Auth-Token", "admin-token".to_owned());
    let (status, _) = request(gw.port, "POST", call, vec![admin.clone(), ("Content-Type", "text/plain".into())]).await;
    assert_eq!(status, 415, "a text/plain post, as any web page may send");
    let (status, _) =
        request(gw.port, "POST", call, vec![admin.clone(), ("Origin", "http://evil.example".into())]).await;
    assert_eq!(status, 403, "a cross-origin request");
    // A second Host header makes hyper refuse the request outright; a
    // foreign one alone is refused by the gateway.
    let raw = format!(
        "POST {call} HTTP/1.1\r\nHost: evil.example:{}\r\nX-Auth-Token: admin-token\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        gw.port
    );
    let port = gw.port;
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "a DNS-rebound Host: {answer}");
    assert_eq!(gw.calls.load(Ordering::SeqCst), 0, "none of them reached the service");
    let same_origin = ("Origin", format!("http://127.0.0.1:{}", gw.port));
    assert_eq!(request(gw.port, "POST", call, vec![admin, same_origin]).await.0, 200, "the console's own origin");
    let _ = gw.stop.take().map(|s| s.send(()));
}

/// `nova-all` with `[api]` from `conf`, ready when `token` (if any) lists
/// its services.
async fn nova_all(conf: &str, args: &[&str], token: Option<&str>) -> NovaAll {
    NovaAll::start_with(NovaAllSetup { args, config: Some(conf), token, ..NovaAllSetup::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reread_on_sighup_and_noauth_stays_on_loopback() {
    let dir = TempDir::new("gw-hup");
    let tokens = token_file(&dir, &[("first", "alice", &["admin"])]);
    let conf = format!("[api]\nauth_strategy = token\ntoken_file = {}\n", tokens.display());
    let all = nova_all(&conf, &[], Some("first")).await;
    let port = all.port;
    let services = |t: &'static str| request(port, "GET", "/v1/services", vec![("X-Auth-Token", t.to_owned())]);
    eventually("nova-all answers the first token", Duration::from_secs(30), || async {
        (services("first").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(services("second").await.0, 401);
    let (status, page) = request(port, "GET", "/", vec![]).await;
    assert!(
        status == 401 && page.contains(r#"<form id="login" method="post""#),
        "the console asks for a token: {status} {page}"
    );
    token_file(&dir, &[("second", "bob", &["admin"])]);
    all.proc().signal("HUP");
    eventually("the new token works after SIGHUP", Duration::from_secs(30), || async {
        (services("second").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(services("first").await.0, 401, "the old token is gone");

    // noauth on a non-loopback address is refused at start, unless --insecure.
    let other = TempDir::new("gw-open");
    let mut open = Proc::spawn(
        "nova-all",
        &["--listen", "0.0.0.0:0", "--state-path", other.path().to_str().unwrap()],
        other.path(),
    );
    let status = open.wait_exit(Duration::from_secs(30)).expect("nova-all refuses to start");
    assert!(!status.success());
    assert!(open.output().contains("auth_strategy") && open.output().contains("--insecure"), "{}", open.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_starve_nothing_and_are_closed() {
    let all = nova_all("[api]\nheader_read_timeout = 2\n", &[], None).await;
    let port = all.port;
    eventually("nova-all serves", Duration::from_secs(30), || async {
        (request(port, "GET", "/v1/services", vec![]).await.0 == 200).then_some(())
    })
    .await;
    let sockets = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        (0..300)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                // Headers begun, never finished.
                s.write_all(format!("GET /v1/services HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ").as_bytes())
                    .unwrap();
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // Someone else (another address) is served at once; the slow client
    // holds at most its share of the connections.
    let started = Instant::now();
    let services = format!("GET /v1/services HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let answer = raw_request("127.0.0.2", port, services, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(2), "a normal request waited {took:?} behind 300 slow sockets");
    let closed = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        sockets
            .into_iter()
            .filter(|s| {
                let mut s: &std::net::TcpStream = s;
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut buf = [0u8; 512];
                // The server answers 408, closes, or (past the client's
                // share, with its request unread) resets: the read ends.
                match s.read(&mut buf).map(|_bytes| ()) {
                    Ok(()) => true,
                    Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                }
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 300, "every slow socket was closed by the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_holds_whatever_the_path_names() {
    let gw = in_process_with(r#"{"echo.whoami": "role:admin", "default": "@"}"#).await;
    let reader = vec![("X-Auth-Token", "reader-token".to_owned())];
    let admin = vec![("X-Auth-Token", "admin-token".to_owned())];
    assert_eq!(request(gw.port, "POST", "/v1/call/echo/whoami", reader.clone()).await.0, 403);
    assert_eq!(request(gw.port, "POST", "/v1/call/echo/e1/whoami", reader.clone()).await.0, 403);
    // Once, `echo.e1` was checked as topic `echo.e1` (the permissive
    // default) and still reached host e1's queue.
    for path in
        ["/v1/call/echo.e1/whoami", "/v1/cast/echo.e1/whoami", "/v1/call/echo/whoami.x", "/v1/call/echo/e%201/whoami"]
    {
        let (status, body) = request(gw.port, "POST", path, reader.clone()).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("InvalidTarget"), "{path}: {body}");
    }
    let (status, body) = request(gw.port, "POST", "/v1/call/echo/whoami?namespace=a%2Fb", admin.clone()).await;
    assert!(status == 400 && body.contains("namespace"), "{status} {body}");
    assert_eq!(gw.calls.load(Ordering::SeqCst), 0, "nothing reached the service");
    assert_eq!(request(gw.port, "POST", "/v1/call/echo/e1/whoami", admin.clone()).await.0, 200);
    // Spans are recorded by services only, whoever asks.
    let (status, body) = request(gw.port, "POST", "/v1/cast/trace/record_spans", admin.clone()).await;
    assert!(status == 403 && body.contains("services only"), "{status} {body}");
    // set_log_level is admin-only by default, even where the default rule lets anyone in.
    let (status, body) =
        request(gw.port, "POST", "/v1/call/echo/set_log_level?namespace=baseapi&version=1.1", reader).await;
    assert!(status == 403 && body.contains("echo.set_log_level"), "{status} {body}");
}

/// Send `raw` from `source` (a loopback address of its own) and read the
/// answer until the server closes or `wait` passes.
async fn raw_request(source: &str, port: u16, raw: String, wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    // Nothing listening (yet), or the connection closed at once: no answer.
    let Ok(mut stream) = socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await else {
        return String::new();
    };
    if stream.write_all(raw.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_bodies_and_greedy_clients_starve_nothing() {
    let dir = TempDir::new("gw-trickle");
    let tokens = token_file(&dir, &[("good", "alice", &["admin"])]);
    let conf = format!(
        "[api]\nauth_strategy = token\ntoken_file = {}\nmax_connections = 64\nmax_connections_per_client = 16\nbody_read_timeout = 2\n",
        tokens.display()
    );
    let all = nova_all(&conf, &[], Some("good")).await;
    let port = all.port;
    let services = format!(
        "GET /v1/services HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Auth-Token: good\r\nConnection: close\r\n\r\n"
    );
    eventually("nova-all serves", Duration::from_secs(30), || async {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            raw_request("127.0.0.2", port, services.clone(), Duration::from_secs(2)),
        );
        r.await.ok().filter(|a| a.starts_with("HTTP/1.1 200")).map(drop)
    })
    .await;
    // 100 authenticated POSTs from one address whose bodies never come.
    let trickle = format!(
        "POST /v1/call/compute/ping HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Auth-Token: good\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"arg\""
    );
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..100 {
        slow.spawn(raw_request("127.0.0.1", port, trickle.clone(), Duration::from_secs(30)));
    }
    // Someone else gets in at once, and a wrong token is refused before its body.
    let started = Instant::now();
    let answer = raw_request("127.0.0.2", port, services.clone(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2), "a normal request waited {:?}", started.elapsed());
    let unauthenticated = trickle.replace("X-Auth-Token: good", "X-Auth-Token: wrong");
    let answer = raw_request("127.0.0.3", port, unauthenticated, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "authenticated before the body is read: {answer}");
    // Each trickler is answered 408 after body_read_timeout, or was closed at once past its share.
    let (mut timed_out, mut closed) = (0, 0);
    while let Some(answer) = slow.join_next().await {
        match answer.unwrap() {
            a if a.starts_with("HTTP/1.1 408") => timed_out += 1,
            a if a.is_empty() => closed += 1,
            other => panic!("a trickling request got {other}"),
        }
    }
    assert_eq!(timed_out + closed, 100);
    assert!((16..=100).contains(&timed_out), "{timed_out} got 408, {closed} were closed");
    assert!(closed >= 100 - 64, "at most the gateway's connections were held: {closed} closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_sees_and_kills_only_its_own_tasks() {
    let dir = TempDir::new("gw-tenancy");
    let entry = |token: &str, user: &str, project: &str, roles: &[&str]| json!({"sha256": sha256(token), "user_id": user, "project_id": project, "roles": roles});
    let tokens = dir.write(
        "tokens.json",
        &json!({"tokens": [
            entry("alice-token", "alice", "p1", &["member"]),
            entry("bob-token", "bob", "p2", &["member"]),
            entry("root-token", "root", "ops", &["admin"]),
        ]})
        .to_string(),
    );
    let conf = format!("[api]\nauth_strategy = token\ntoken_file = {}\n", tokens.display());
    let all = nova_all(&conf, &["--host", "h1"], Some("root-token")).await;
    let port = all.port;
    let as_ = |token: &str| vec![("X-Auth-Token", token.to_owned())];
    let send = |method: &'static str, path: String, token: &str, body: Value| {
        let headers = as_(token);
        async move {
            tokio::task::spawn_blocking(move || {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                http(method, port, &path, &headers, body.to_string().as_bytes())
                    .map_or((0, String::new()), |(status, _, body)| (status, body))
            })
            .await
            .unwrap()
        }
    };
    eventually("nova-all serves", Duration::from_secs(30), || async {
        let (status, body) = send("GET", "/v1/services".into(), "root-token", json!({})).await;
        (status == 200 && body.matches("\"up\"").count() == 3).then_some(())
    })
    .await;
    for (token, id) in [("alice-token", "a1"), ("bob-token", "b1")] {
        let task = json!({"name": "echo", "args": [id], "task_id": id});
        let (status, body) = send("POST", "/v1/tasks".into(), token, task).await;
        assert_eq!(status, 202, "{body}");
        assert!(body.contains(&format!("\"project_id\":\"{}\"", if id == "a1" { "p1" } else { "p2" })), "{body}");
    }
    let ids = |body: &str| -> Vec<String> {
        let tasks: Vec<Value> = serde_json::from_str(body).unwrap_or_default();
        tasks.iter().filter_map(|t| t["task_id"].as_str().map(str::to_owned)).collect()
    };
    let (_, mine) = send("GET", "/v1/tasks".into(), "alice-token", json!({})).await;
    assert_eq!(ids(&mine), ["a1"], "{mine}");
    for (method, path) in [("GET", "/v1/tasks/b1"), ("GET", "/v1/tasks/b1/stdout"), ("DELETE", "/v1/tasks/b1")] {
        let (status, body) = send(method, path.into(), "alice-token", json!({})).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    // Straight at the compute host, through the generic call route: the same answer.
    let (status, body) =
        send("POST", "/v1/call/compute/h1/get_task".into(), "alice-token", json!({"task_id": "b1"})).await;
    assert!(status == 404 || body.contains("TaskNotFound"), "{status} {body}");
    let (_, listed) = send("POST", "/v1/call/compute/h1/list_tasks".into(), "alice-token", json!({})).await;
    assert!(!listed.contains("\"b1\""), "{listed}");
    // An admin sees every project's.
    let (_, all) = send("GET", "/v1/tasks".into(), "root-token", json!({})).await;
    let mut all = ids(&all);
    all.sort();
    assert_eq!(all, ["a1", "b1"]);
    assert_eq!(send("GET", "/v1/tasks/b1".into(), "root-token", json!({})).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_with_a_cookie_and_never_a_url() {
    let dir = TempDir::new("gw-console");
    let tokens = token_file(&dir, &[("console-token", "alice", &["admin"])]);
    let conf = format!("[api]\nauth_strategy = token\ntoken_file = {}\n", tokens.display());
    let all = nova_all(&conf, &[], Some("console-token")).await;
    let port = all.port;
    eventually("nova-all serves its files", Duration::from_secs(30), || async {
        (request(port, "GET", "/console.js", vec![]).await.0 == 200).then_some(())
    })
    .await;
    // The console's files need no token; no answer may be framed or sniffed.
    let (status, headers, _) = http("GET", port, "/console.css", &[], b"").expect("the gateway answers");
    assert_eq!(status, 200);
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!((header("x-frame-options"), header("x-content-type-options")), ("DENY".into(), "nosniff".into()));
    let sign_in = |token: &str, tls: bool| {
        let mut headers = vec![];
        if tls {
            headers.push(("X-Forwarded-Proto", "https"));
        }
        http("POST", port, "/login", &headers, json!({ "token": token }).to_string().as_bytes())
            .expect("the gateway answers")
    };
    assert_eq!(sign_in("not-a-token", false).0, 401);
    let (status, headers, _) = sign_in("console-token", false);
    let cookie = headers.iter().find(|(k, _)| k == "set-cookie").map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(status, 204);
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains("Secure"),
        "{cookie}"
    );
    let (_, headers, _) = sign_in("console-token", true);
    assert!(headers.iter().any(|(k, v)| k == "set-cookie" && v.contains("; Secure")), "Secure behind TLS: {headers:?}");
    // In a browser: the sign-in page runs its script, its form posts, the
    // cookie opens the pages and stays out of the page's reach.
    let url = format!("http://127.0.0.1:{port}/");
    let script = r#"(async () => {
        const form = document.getElementById('login');
        const ready = !!form && form.dataset.ready === '1' && form.method === 'post';
        const r = await fetch('/login', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                         body: JSON.stringify({token: 'console-token'})});
        const page = await fetch('/');
        return JSON.stringify({ready, login: r.status, page: page.status,
                               readable: document.cookie.includes('nova_token'), url: location.href});
    })()"#;
    let out = tokio::task::spawn_blocking(move || nova_tests::browser(&url, script, "console-sign-in")).await.unwrap();
    let seen: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(seen["ready"], true, "the sign-in script ran: {seen}");
    assert_eq!((seen["login"].as_u64(), seen["page"].as_u64()), (Some(204), Some(200)), "{seen}");
    assert_eq!(seen["readable"], false, "the cookie is HttpOnly: {seen}");
    assert!(!seen["url"].as_str().unwrap_or_default().contains("token"), "{seen}");
}
