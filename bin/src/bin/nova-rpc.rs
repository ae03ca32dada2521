//! `nova-rpc`: call and cast any method of any service from the shell.
//!
//! `call` prints the JSON result on stdout and exits 0; a remote error is
//! printed as `Class: message` on stderr with exit code 1; a timeout says
//! so with exit code 4; anything else exits 3. Exit code 2 is clap's: the
//! command line itself was wrong. `--help` shows the table.

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use nova_bin::cli::{mount, tasks_api};
use nova_core::config::CommonArgs;
use nova_rpc::{
    layer::trace,
    transport::{self, Transport},
    RequestContext, RpcClient, RpcError, Target,
};

/// What `--help` says of exit codes.
const EXIT_CODES: &str = "Exit codes:
  0  the call or cast succeeded (a call's result is on stdout)
  1  the service answered with an error (Class: message on stderr)
  2  the command line is wrong (usage)
  3  the broker could not be reached, or another failure
  4  the call timed out";

/// Call and cast methods of nova-rs (and oslo.messaging) services.
#[derive(Parser)]
#[command(name = "nova-rpc", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Address {
    /// The service topic, e.g. compute.
    topic: String,
    /// One server of the topic.
    #[arg(long)]
    server: Option<String>,
    /// API namespace (baseapi for ping, describe and log levels).
    #[arg(long)]
    namespace: Option<String>,
    /// API version to ask for.
    #[arg(long)]
    version: Option<String>,
    /// Send nothing above this version (Nova's version_cap, what
    /// [upgrade_levels] pins): a newer --version fails here, unsent.
    #[arg(long, value_name = "X.Y")]
    version_cap: Option<nova_rpc::Version>,
}

#[derive(Subcommand)]
enum Command {
    /// Call METHOD and print its JSON result.
    Call {
        #[command(flatten)]
        to: Address,
        /// The method.
        method: String,
        /// Arguments, as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Seconds to wait for the reply.
        #[arg(long)]
        timeout: Option<f64>,
        /// Trace this call at every hop, whatever `[trace] sample_ratio`
        /// says; its request id goes to standard error, for `nova-rpc trace`.
        #[arg(long)]
        trace: bool,
    },
    /// Cast METHOD (no reply).
    Cast {
        #[command(flatten)]
        to: Address,
        /// The method.
        method: String,
        /// Arguments, as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// To every server of the topic.
        #[arg(long)]
        fanout: bool,
    },
    /// Show (or with FILTER, set) a service's log filter, e.g. nova_rpc=debug.
    LogLevel {
        /// The service topic.
        topic: String,
        /// Set this filter.
        filter: Option<String>,
        /// One server of the topic.
        #[arg(long)]
        server: Option<String>,
        /// Every server of the topic (set only).
        #[arg(long)]
        fanout: bool,
    },
    /// Print the trace of a request as an indented tree with durations.
    Trace {
        /// The request id (`req-…`), as the gateway returns it in X-OpenStack-Request-ID.
        request_id: String,
    },
    /// Backlog (ready messages) and consumers of topics' queues, their work
    /// queues (compute_work) and servers' own queues.
    Queues {
        /// Topics (default: compute and scheduler).
        topics: Vec<String>,
        /// Also these servers' own queues (`topic.server`).
        #[arg(long)]
        server: Vec<String>,
        /// RabbitMQ's management API, for the oldest message's age (default: [api] rabbit_management_url).
        #[arg(long, value_name = "URL")]
        management_url: Option<String>,
    },
    /// Print notifications as they arrive, one JSON object per line, until
    /// Ctrl-C, SIGTERM or --count.
    Listen {
        /// Topics (default: [oslo_messaging_notifications] topics).
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// Read from this pool's queue, sharing its notifications with the
        /// pool's other listeners (default: a queue of this command's own,
        /// which takes nothing from anybody else and goes when it stops).
        #[arg(long)]
        pool: Option<String>,
        /// Only event types matching REGEX (from their start, as oslo's filters).
        #[arg(long, value_name = "REGEX")]
        event_type: Option<String>,
        /// Only these priorities (default: all).
        #[arg(long, value_name = "PRIORITY")]
        priority: Vec<String>,
        /// The exchange (default: control_exchange).
        #[arg(long)]
        exchange: Option<String>,
        /// Stop after N notifications.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Mount tasks as files on DIR (FUSE) until Ctrl-C or SIGTERM.
    Mount {
        #[command(flatten)]
        api: ApiArgs,
        /// An empty directory.
        dir: std::path::PathBuf,
    },
    /// Tasks, through the gateway's tasks API.
    Task {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: TaskCommand,
    },
}

#[derive(Args)]
struct ApiArgs {
    /// The gateway (default: http:// + [api] listen).
    #[arg(long, env = "NOVA_API", value_name = "URL")]
    api: Option<String>,
    /// Sent as X-Auth-Token. It shows in the process list: prefer
    /// NOVA_AUTH_TOKEN or --token-file.
    #[arg(long, env = "NOVA_AUTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file.
    #[arg(long = "token-file", value_name = "PATH", conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Submit NAME ARGS… to the work queue; prints the task id.
    Submit {
        /// The allow-listed command (name or name@version).
        name: String,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
        /// The task id (submitting the same id again runs nothing new).
        #[arg(long)]
        id: Option<String>,
        /// POST the result here.
        #[arg(long)]
        callback_url: Option<String>,
        /// Wait until it ends and print it (exit 1 unless it succeeded).
        #[arg(long)]
        wait: bool,
    },
    /// List tasks.
    List {
        /// queued, running, succeeded, failed or killed.
        #[arg(long)]
        status: Option<String>,
        /// One host's.
        #[arg(long)]
        host: Option<String>,
    },
    /// Show a task as JSON.
    Show {
        /// The task id.
        id: String,
    },
    /// Kill a task (or cancel it while it waits).
    Kill {
        /// The task id.
        id: String,
    },
    /// Print a task's output.
    Logs {
        /// The task id.
        id: String,
        /// Follow it until the task ends.
        #[arg(short, long)]
        follow: bool,
        /// Stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
    },
}

fn client(t: std::sync::Arc<dyn transport::Transport>, to: &Address) -> RpcClient {
    let mut target = Target::new(&to.topic);
    target.server = to.server.clone();
    target.namespace = to.namespace.clone();
    target.version = to.version.clone();
    let client = RpcClient::new(t, target);
    match to.version_cap {
        Some(cap) => client.with_version_cap(cap),
        None => client,
    }
}

fn parse_args(args: &str) -> Result<serde_json::Value, Failure> {
    match serde_json::from_str::<serde_json::Value>(args) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(Failure::Usage("--args must be a JSON object".into())),
        Err(e) => Err(Failure::Usage(format!("--args is not valid JSON: {e}"))),
    }
}

enum Failure {
    Rpc(RpcError),
    Usage(String),
    Api(tasks_api::ApiFailure),
}

impl From<tasks_api::ApiFailure> for Failure {
    fn from(e: tasks_api::ApiFailure) -> Self {
        Failure::Api(e)
    }
}

impl From<RpcError> for Failure {
    fn from(e: RpcError) -> Self {
        Failure::Rpc(e)
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let setup = nova_core::connect_client(&cli.common, &[]).await.map_err(|e| match e {
        nova_core::LaunchError::Rpc(e) => Failure::Rpc(e),
        other => Failure::Usage(other.to_string()),
    })?;
    let t = setup.transport.clone();
    // Whoever holds the vhost's credentials is trusted (oslo's model): the
    // CLI's direct calls see every project's tasks.
    let ctx = RequestContext::new().with_roles(["admin"]);
    let outcome = match cli.command {
        Command::Call { to, method, args, timeout, trace } => call(&t, ctx, &to, &method, &args, timeout, trace).await,
        Command::Cast { to, method, args, fanout } => {
            let args = parse_args(&args)?;
            client(t.clone(), &to).with_fanout(fanout).cast(&ctx, &method, args).await.map_err(Failure::from)
        }
        Command::LogLevel { topic, filter, server, fanout } => log_level(&t, &ctx, topic, server, filter, fanout).await,
        Command::Trace { request_id } => show_trace(&t, &ctx, &request_id).await,
        Command::Queues { topics, server, management_url } => {
            let management =
                management_url.or_else(|| setup.config.raw("api", "rabbit_management_url").map(str::to_owned));
            queues(&t, &setup.config, topics, server, management).await
        }
        Command::Listen { topics, pool, event_type, priority, exchange, count } => {
            let topics = match topics {
                t if t.is_empty() => setup
                    .config
                    .value(&nova_core::notifications::options::TOPICS)
                    .map_err(|e| Failure::Usage(e.to_string()))?,
                t => t,
            };
            let watch = Watch { topics, pool, event_type, priorities: priority, exchange, count };
            listen(&t, watch).await
        }
        Command::Task { api, command } => task(&tasks_api(&setup.config, api)?, command).await,
        Command::Mount { api, dir } => mount::mount(tasks_api(&setup.config, api)?, &dir)
            .await
            .map_err(|e| Failure::Usage(format!("cannot mount {}: {e}", dir.display()))),
    };
    t.close().await;
    outcome
}

/// `nova-rpc call`: print the result; with `trace`, this request is traced
/// from here (the CLI is where it enters: it decides, and every hop follows).
async fn call(
    t: &Arc<dyn Transport>,
    mut ctx: RequestContext,
    to: &Address,
    method: &str,
    args: &str,
    timeout: Option<f64>,
    traced: bool,
) -> Result<(), Failure> {
    let args = parse_args(args)?;
    if traced {
        let id = ctx.request_id.clone();
        trace::enter(&mut ctx, &id, &trace::new_span_id(), true);
        eprintln!("request id: {id}");
    }
    let mut c = client(t.clone(), to);
    if let Some(s) = timeout {
        c = c.with_timeout(Duration::from_secs_f64(s.max(0.001)));
    }
    let result = c.call(&ctx, method, args).await?;
    println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
    Ok(())
}

/// What `nova-rpc listen` watches.
struct Watch {
    topics: Vec<String>,
    pool: Option<String>,
    event_type: Option<String>,
    priorities: Vec<String>,
    exchange: Option<String>,
    count: Option<u64>,
}

/// `nova-rpc listen`: print notifications as JSON lines. With `--count`,
/// what arrives past the count goes back to the queue unprinted.
async fn listen(t: &Arc<dyn Transport>, w: Watch) -> Result<(), Failure> {
    use std::sync::atomic::{AtomicU64, Ordering};

    use nova_rpc::notify::{
        handler, NotificationFilter, NotificationListener, NotificationResult, NotificationTarget, Priority,
    };

    let priorities = match w.priorities.as_slice() {
        [] => Priority::ALL.to_vec(),
        names => names
            .iter()
            .map(|p| Priority::parse(p).ok_or_else(|| Failure::Usage(format!("unknown priority {p:?}"))))
            .collect::<Result<_, _>>()?,
    };
    let mut filter = NotificationFilter::new();
    if let Some(re) = &w.event_type {
        filter = filter.event_type(re).map_err(|e| Failure::Usage(format!("--event-type: {e}")))?;
    }
    let limit = w.count.unwrap_or(u64::MAX);
    let (printed, (done_tx, mut done)) = (Arc::new(AtomicU64::new(0)), tokio::sync::mpsc::channel::<()>(1));
    let endpoint = handler(move |n| {
        let (printed, done_tx) = (printed.clone(), done_tx.clone());
        async move {
            if printed.fetch_add(1, Ordering::SeqCst) >= limit {
                return NotificationResult::Requeue;
            }
            println!("{}", serde_json::to_string(&n).unwrap_or_default());
            if printed.load(Ordering::SeqCst) >= limit {
                let _ = done_tx.try_send(());
            }
            NotificationResult::Handled
        }
    })
    .priorities(priorities)
    .filter(filter);
    let targets = w.topics.iter().map(|topic| match &w.exchange {
        Some(x) => NotificationTarget::on_exchange(topic, x),
        None => NotificationTarget::new(topic),
    });
    let listener = NotificationListener::new(t.clone(), targets).endpoint(endpoint);
    let listener = match w.pool {
        Some(p) => listener.pool(p),
        None => listener.private(),
    };
    let running = listener.start().await?;
    eprintln!("listening for notifications on {}", w.topics.join(", "));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::Usage(format!("cannot watch for SIGTERM: {e}")))?;
    tokio::select! {
        _ = done.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    running.stop().await;
    Ok(())
}

/// `nova-rpc log-level`: read or set a service's log filter.
async fn log_level(
    t: &Arc<dyn Transport>,
    ctx: &RequestContext,
    topic: String,
    server: Option<String>,
    filter: Option<String>,
    fanout: bool,
) -> Result<(), Failure> {
    let to =
        Address { topic, server, namespace: Some("baseapi".into()), version: Some("1.1".into()), version_cap: None };
    let c = client(t.clone(), &to);
    match (filter, fanout) {
        (Some(f), true) => c.with_fanout(true).cast(ctx, "set_log_level", serde_json::json!({ "filter": f })).await?,
        (Some(f), false) => println!("{}", c.call(ctx, "set_log_level", serde_json::json!({ "filter": f })).await?),
        (None, _) => println!("{}", c.call(ctx, "get_log_level", serde_json::json!({})).await?),
    }
    Ok(())
}

/// `nova-rpc trace`: a request's spans as an indented tree.
async fn show_trace(t: &Arc<dyn Transport>, ctx: &RequestContext, request_id: &str) -> Result<(), Failure> {
    let c = RpcClient::new(t.clone(), Target::new(trace::TRACE_TOPIC));
    let spans: Vec<trace::Span> = c.call_as(ctx, "get_trace", serde_json::json!({ "trace_id": request_id })).await?;
    if spans.is_empty() {
        return Err(Failure::Usage(format!("no trace {request_id} (is a trace collector running?)")));
    }
    for (depth, s) in trace::walk(&spans) {
        let outcome = if s.outcome == "ok" { String::new() } else { format!("  [{}]", s.outcome) };
        let (what, indent) = (format!("{}.{}", s.topic, s.method), depth * 2);
        println!("{:indent$}{what}  {} on {}  {:.2} ms{outcome}", "", s.service, s.host, s.duration_ms);
    }
    Ok(())
}

/// `nova-rpc queues`: backlog, consumers and (with the management API)
/// the oldest message's age of each topic's queues.
async fn queues(
    t: &Arc<dyn Transport>,
    config: &nova_core::config::Config,
    topics: Vec<String>,
    server: Vec<String>,
    management: Option<String>,
) -> Result<(), Failure> {
    let topics = if topics.is_empty() { vec!["compute".into(), "scheduler".into()] } else { topics };
    let (mut names, mut work) = (Vec::new(), Vec::new());
    for topic in &topics {
        names.push(topic.clone());
        // A topic's work queue is shown where it has one.
        work.push(nova_core::manager::work_queue_name(config, topic));
        names.extend(server.iter().map(|s| format!("{topic}.{s}")));
    }
    let asked: Vec<String> = names.iter().chain(&work).cloned().collect();
    let mut stats = t.queue_stats(&asked).await?;
    if let Some(api) = management.filter(|u| !u.is_empty()) {
        nova_gateway::queues::fill(&mut stats, &api, &t.options().transport_url)
            .await
            .map_err(|e| Failure::Usage(e.to_string()))?;
    }
    println!("{:<40} {:>10} {:>10} {:>12}", "QUEUE", "MESSAGES", "CONSUMERS", "OLDEST (s)");
    for q in &stats {
        let age = q.oldest_age_seconds.map_or("-".to_owned(), |a| format!("{a:.1}"));
        println!("{:<40} {:>10} {:>10} {:>12}", q.queue, q.messages, q.consumers, age);
    }
    for missing in names.iter().filter(|n| !stats.iter().any(|q| &q.queue == *n)) {
        eprintln!("{missing}: no such queue");
    }
    Ok(())
}

/// The gateway's tasks API: `--api`, else `http://` + `[api] listen`.
fn tasks_api(config: &nova_core::config::Config, api: ApiArgs) -> Result<tasks_api::TasksApi, Failure> {
    let listen = config.raw("api", "listen").unwrap_or("127.0.0.1:8774").to_owned();
    let base = api.api.unwrap_or_else(|| format!("http://{listen}"));
    let token = match api.token_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| Failure::Usage(format!("--token-file {}: {e}", path.display())))?
                .trim()
                .to_owned(),
        ),
        None => api.token,
    };
    Ok(tasks_api::TasksApi::new(&base, token)?)
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn task(api: &tasks_api::TasksApi, command: TaskCommand) -> Result<(), Failure> {
    use nova_services::api::compute::TaskStatus;
    use std::io::Write;
    match command {
        TaskCommand::Submit { name, args, id, callback_url, wait } => {
            let new = tasks_api::NewTask { name, args, task_id: id, callback_url };
            let task = api.submit(&new).await?;
            if wait {
                follow_to_the_end(api, &task.task_id).await
            } else {
                println!("{}", task.task_id);
                Ok(())
            }
        }
        TaskCommand::List { status, host } => {
            let status = match status {
                Some(s) => Some(s.parse::<TaskStatus>().map_err(Failure::Usage)?),
                None => None,
            };
            let tasks = api.list(status, host.as_deref()).await?;
            println!("{:<38} {:<10} {:<16} COMMAND", "TASK", "STATUS", "HOST");
            for t in tasks {
                println!("{:<38} {:<10} {:<16} {} {}", t.task_id, t.status.as_str(), t.host, t.name, t.args.join(" "));
            }
            Ok(())
        }
        TaskCommand::Show { id } => {
            print_json(&api.show(&id).await?);
            Ok(())
        }
        TaskCommand::Kill { id } => {
            print_json(&api.kill(&id).await?);
            Ok(())
        }
        TaskCommand::Logs { id, follow, stderr } => {
            let mut out = std::io::stdout();
            api.output(&id, if stderr { "stderr" } else { "stdout" }, follow, |chunk| {
                let _ = out.write_all(chunk);
                let _ = out.flush();
            })
            .await?;
            Ok(())
        }
    }
}

/// `task submit --wait`: print the task's output as it comes, and fail
/// unless it succeeded.
async fn follow_to_the_end(api: &tasks_api::TasksApi, task_id: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout();
    api.output(task_id, "stdout", true, |chunk| {
        let _ = out.write_all(chunk);
        let _ = out.flush();
    })
    .await?;
    let done = api.show(task_id).await?;
    if done.status == nova_services::api::compute::TaskStatus::Succeeded {
        return Ok(());
    }
    let message = format!("task {} {}: {}", done.task_id, done.status.as_str(), done.error.unwrap_or_default());
    Err(Failure::Api(tasks_api::ApiFailure::Refused { status: 200, class: "TaskFailed".into(), message }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match nova_core::launcher::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nova-rpc: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Rpc(e @ RpcError::Timeout { .. })) => {
            eprintln!("Timeout: {e}");
            ExitCode::from(4)
        }
        Err(Failure::Rpc(
            e @ (RpcError::Remote(_) | RpcError::NoSuchMethod { .. } | RpcError::UnsupportedVersion { .. }),
        )) => {
            let message = match &e {
                RpcError::Remote(f) => f.message.clone(),
                other => other.to_string(),
            };
            eprintln!("{}: {message}", e.class());
            ExitCode::from(1)
        }
        Err(Failure::Rpc(e)) => {
            eprintln!("{}: {e}", e.class());
            ExitCode::from(3)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("nova-rpc: {m}");
            ExitCode::from(3)
        }
        Err(Failure::Api(e @ tasks_api::ApiFailure::Refused { .. })) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        Err(Failure::Api(e)) => {
            eprintln!("nova-rpc: {e}");
            ExitCode::from(3)
        }
    }
}
