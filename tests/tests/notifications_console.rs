//! Notifications as a user of the gateway sees them: `GET /v1/events`
//! streams what services announce (task runs), under the gateway's
//! policy, and the console's events page follows it live in Chromium.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    sync::mpsc,
    time::Duration,
};

use nova_tests::{http, NovaAll, NovaAllSetup};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A Server-Sent Events client: each event's `data` as JSON, from a
/// thread reading the chunked stream.
struct EventStream {
    events: mpsc::Receiver<Value>,
    status: u16,
}

impl EventStream {
    fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> Self {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the gateway listens");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        s.write_all(format!("{request}\r\n").as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let mut status_line = String::new();
        r.read_line(&mut status_line).unwrap();
        let status = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut chunked = false;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            chunked |= line.to_ascii_lowercase().starts_with("transfer-encoding: chunked");
            if line.trim().is_empty() {
                break;
            }
        }
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            loop {
                let mut piece = Vec::new();
                if chunked {
                    let mut size = String::new();
                    if r.read_line(&mut size).unwrap_or(0) == 0 {
                        return;
                    }
                    let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return };
                    piece.resize(n + 2, 0);
                    if n == 0 || r.read_exact(&mut piece).is_err() {
                        return;
                    }
                    piece.truncate(n);
                } else {
                    piece.resize(4096, 0);
                    match r.read(&mut piece) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => piece.truncate(n),
                    }
                }
                text.push_str(&String::from_utf8_lossy(&piece));
                while let Some(end) = text.find("\n\n") {
                    let event: String = text.drain(..end + 2).collect();
                    for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                        if tx.send(serde_json::from_str(data).unwrap_or(Value::Null)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self { events, status }
    }

    /// The next event whose `event_type` is `event_type`, skipping others.
    fn next_of(&self, event_type: &str, task_id: &str) -> Value {
        loop {
            let n = self
                .events
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no {event_type} for {task_id}"));
            if n["event_type"] == event_type && n["payload"]["task_id"] == task_id {
                return n;
            }
        }
    }
}

fn post_task(port: u16, body: &str) {
    let (status, _, answer) = http("POST", port, "/v1/tasks", &[], body.as_bytes()).expect("the gateway answers");
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_runs_stream_as_events_and_the_console_follows_them() {
    let config = "[compute]\nallowed_commands = echo = /bin/echo, false = /bin/false, sleep = /bin/sleep\n";
    let all =
        NovaAll::start_with(NovaAllSetup { args: &["--host", "h1"], config: Some(config), ..NovaAllSetup::default() })
            .await;
    let port = all.port;
    let stream = EventStream::open(port, "/v1/events?event_type=task%5C.run", &[]);
    assert_eq!(stream.status, 200);
    let (bad, _, body) = http("GET", port, "/v1/events?priority=loud", &[], b"").unwrap();
    assert_eq!(bad, 400, "{body}");
    // The gateway's listener consumes before a first client's stream
    // opens: what a task announces from then on arrives.
    post_task(port, r#"{"name": "echo", "args": ["hi"], "task_id": "ev-ok"}"#);
    let start = tokio::task::block_in_place(|| stream.next_of("task.run.start", "ev-ok"));
    assert_eq!((start["priority"].as_str(), start["publisher_id"].as_str()), (Some("INFO"), Some("nova-compute:h1")));
    let end = tokio::task::block_in_place(|| stream.next_of("task.run.end", "ev-ok"));
    assert_eq!(end["payload"]["status"], "succeeded");
    assert_eq!(end["payload"]["exit_code"], 0);
    assert_eq!(end["payload"]["host"], "h1");
    assert!(end["payload"]["finished_at"].is_string() && end["metadata"]["message_id"].is_string(), "{end}");
    post_task(port, r#"{"name": "false", "task_id": "ev-bad"}"#);
    let error = tokio::task::block_in_place(|| stream.next_of("task.run.error", "ev-bad"));
    assert_eq!((error["priority"].as_str(), error["payload"]["exit_code"].as_i64()), (Some("ERROR"), Some(1)));

    // The console: the events so far at once, then what comes live.
    let url = format!("http://127.0.0.1:{port}/events");
    let script = r#"new Promise((done) => {
        const table = document.getElementById('events');
        const rows = () => [...table.querySelectorAll('tr[data-event-type]')].map((r) => [r.dataset.eventType, r.dataset.priority, r.cells[4].innerText]);
        let posted = false;
        const look = setInterval(async () => {
            const now = rows();
            if (!posted && now.length >= 4) {
                posted = true;
                await fetch('/v1/tasks', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                          body: JSON.stringify({name: 'echo', args: ['live'], task_id: 'ev-live'})});
            }
            if (now.some((r) => r[0] === 'task.run.end' && r[2].includes('ev-live'))) {
                clearInterval(look);
                done(JSON.stringify({rows: now, state: document.getElementById('events-state').innerText}));
            }
        }, 100);
    })"#;
    let page = tokio::task::spawn_blocking(move || nova_tests::browser(&url, script, "console-events")).await.unwrap();
    let page: Value = serde_json::from_str(page.trim()).unwrap_or_else(|e| panic!("{e}: {page}"));
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(page["state"], "following", "{page}");
    assert_eq!(rows[0][0], "task.run.end", "newest on top: {page}");
    assert!(rows[0][2].as_str().unwrap().contains("ev-live"), "{page}");
    assert!(rows.iter().any(|r| r[0] == "task.run.error" && r[1] == "ERROR"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_for_admins_unless_the_policy_says_otherwise() {
    let dir = nova_tests::TempDir::new("events-auth");
    let sha256 = |t: &str| -> String { Sha256::digest(t.as_bytes()).iter().map(|b| format!("{b:02x}")).collect() };
    let tokens = dir.write(
        "tokens.json",
        &serde_json::json!({"tokens": [
            {"sha256": sha256("admin-token"), "user_id": "a", "project_id": "p", "roles": ["admin"]},
            {"sha256": sha256("member-token"), "user_id": "m", "project_id": "p", "roles": ["member"]},
        ]})
        .to_string(),
    );
    let config = format!("[api]\nauth_strategy = token\ntoken_file = {}\n", tokens.display());
    let all = NovaAll::start_with(NovaAllSetup {
        config: Some(&config),
        token: Some("admin-token"),
        ..NovaAllSetup::default()
    })
    .await;
    let (status, _, body) = all.http("GET", "/v1/events", &[("X-Auth-Token", "member-token")], b"").unwrap();
    assert_eq!(status, 403, "every project's notifications are not a member's: {body}");
    let (status, _, _) = all.http("GET", "/v1/events", &[], b"").unwrap();
    assert_eq!(status, 401);
    let admin = EventStream::open(all.port, "/v1/events", &[("X-Auth-Token", "admin-token")]);
    assert_eq!(admin.status, 200);
}
