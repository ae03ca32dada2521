//! The measured side: nova-rs clients and servers doing the bench's work
//! (the [`api`](super::api)), in this process or in [`child`](super::child)
//! processes.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use nova_rpc::{
    layer::trace::{Sampler, TraceLayer, Tracer},
    transport::{self, Transport, TransportOptions, TransportUrl},
    RequestContext, RpcClient, RpcServer, RunningServer, Target,
};
use serde_json::json;
use tokio::sync::Mutex;

use super::{
    api::bench_api,
    child::{delete_topology, Child},
    Data, Pattern,
};

/// Where the bench's servers run.
pub enum Servers {
    /// Two servers in this process, sharing one counter.
    InProcess(Vec<RunningServer>, Arc<AtomicUsize>),
    /// Two `nova-bench serve` processes, counted by calling `received`.
    Processes(Vec<Child>),
}

/// nova-rs calls, casts and fanouts against two bench servers on a topic.
pub struct NovaPattern {
    client: RpcClient,
    args: Data,
    servers: Mutex<Option<Servers>>,
    transport: Arc<dyn Transport>,
    hosts: [&'static str; 2],
}

impl NovaPattern {
    /// Start two servers for `topic` (in this process, or as `nova-bench
    /// serve` processes) and a client; `executor` is each server's limit.
    pub async fn start(
        options: TransportOptions,
        topic: &str,
        payload: Data,
        executor: usize,
        separate_process: bool,
        traced: Option<Sampler>,
    ) -> anyhow::Result<Self> {
        let transport = transport::connect(options.clone()).await?;
        let hosts = ["s1", "s2"];
        let servers = if separate_process {
            let mut children = Vec::new();
            for host in hosts {
                children.push(Child::serve(&options, topic, host, executor, 0).await?);
            }
            Servers::Processes(children)
        } else {
            let count = Arc::new(AtomicUsize::new(0));
            let mut running = Vec::new();
            for host in hosts {
                let api = bench_api(host, count.clone(), Duration::ZERO, Arc::new(|| {}));
                let mut server = RpcServer::new(transport.clone(), Target::new(topic).with_server(host), api)
                    .with_executor_size(executor);
                if let Some(sampler) = traced {
                    let tracer = Tracer::new(transport.clone(), "nova-bench", host).with_sampler(sampler);
                    server = server.with_layer(Arc::new(TraceLayer::new(tracer)));
                }
                running.push(server.start().await?);
            }
            Servers::InProcess(running, count)
        };
        let client = RpcClient::new(transport.clone(), Target::new(topic).with_version("1.0"));
        Ok(Self { client, args: payload, servers: Mutex::new(Some(servers)), transport, hosts })
    }

    /// The client, for other measurements against these servers.
    pub fn client(&self) -> &RpcClient {
        &self.client
    }
}

#[async_trait]
impl Pattern for NovaPattern {
    async fn call(&self) -> anyhow::Result<()> {
        self.client.call_as::<Data>(&RequestContext::default(), "echo", &self.args).await?;
        Ok(())
    }

    async fn cast(&self) -> anyhow::Result<()> {
        Ok(self.client.cast(&RequestContext::default(), "count", &self.args).await?)
    }

    async fn fanout(&self) -> anyhow::Result<()> {
        Ok(self.client.with_fanout(true).cast(&RequestContext::default(), "count", &self.args).await?)
    }

    async fn received(&self) -> anyhow::Result<usize> {
        let in_process = match self.servers.lock().await.as_ref() {
            Some(Servers::InProcess(_, count)) => Some(count.load(Ordering::Relaxed)),
            _ => None,
        };
        if let Some(n) = in_process {
            return Ok(n);
        }
        let mut total = 0;
        for host in self.hosts {
            let n: usize =
                self.client.with_server(host).call_as(&RequestContext::default(), "received", json!({})).await?;
            total += n;
        }
        Ok(total)
    }

    async fn close(&self) {
        match self.servers.lock().await.take() {
            Some(Servers::InProcess(running, _)) => {
                for s in running {
                    s.stop(Duration::from_secs(5)).await;
                }
            }
            Some(Servers::Processes(children)) => drop(children),
            None => {}
        }
        let o = self.transport.options();
        if TransportUrl::parse(&o.transport_url).is_ok_and(|u| u.scheme != "memory") {
            let topic = &self.client.target().topic;
            let mut queues = vec![topic.clone()];
            queues.extend(self.hosts.iter().map(|h| format!("{topic}.{h}")));
            let exchanges = [o.control_exchange.clone(), format!("{topic}_fanout")];
            if let Err(e) = delete_topology(&o.transport_url, &queues, &exchanges).await {
                eprintln!("nova-bench: cleanup: {e}");
            }
        }
        self.transport.close().await;
    }
}
