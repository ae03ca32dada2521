//! A manager's background work ([`nova_core::Background`]) outlives the
//! request that started it, and a stop waits for it before `cleanup_host`
//! (up to `graceful_shutdown_timeout`), then cancels what is left. On
//! paused time, so the waits are exact and take no real time.

#![allow(unreachable_pub)] // `#[rpc_api]` methods are `pub` by design

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use nova_core::{
    async_trait, rpc_api, testing::eventually, Background, BoxError, Manager, ManagerHandle, Service, ServiceInfo,
    ServiceOptions,
};
use nova_rpc::{transport, RequestContext, RpcClient, RpcError, Target};

/// Sends its mail in the background, after the cast has returned.
struct Mailer {
    background: Background,
    takes: Duration,
    sent: Arc<AtomicBool>,
    /// Whether the mail was out when `cleanup_host` ran.
    sent_at_cleanup: Mutex<Option<bool>>,
}

#[rpc_api]
impl Mailer {
    /// Send a mail, later.
    #[rpc(cast)]
    pub async fn send_later(&self, _ctx: RequestContext) -> Result<(), RpcError> {
        let (takes, sent) = (self.takes, self.sent.clone());
        self.background.spawn(async move {
            tokio::time::sleep(takes).await;
            sent.store(true, Ordering::SeqCst);
        });
        Ok(())
    }
}

#[async_trait]
impl Manager for Mailer {
    async fn cleanup_host(&self, _service: &ServiceInfo) -> Result<(), BoxError> {
        *self.sent_at_cleanup.lock().unwrap() = Some(self.sent.load(Ordering::SeqCst));
        Ok(())
    }
}

/// Start a mailer whose mail takes `takes`, stop it with `graceful`; what
/// `cleanup_host` saw, and what is still running after the stop.
async fn send_then_stop(bus: &str, takes: Duration, graceful: Duration) -> (Option<bool>, usize) {
    let t = transport::connect(transport::TransportOptions::new(format!("memory://{bus}"))).await.unwrap();
    let info = ServiceInfo::new("h1", "nova-mailer", "mailer");
    let mailer = Arc::new(Mailer {
        background: info.background.clone(),
        takes,
        sent: Arc::default(),
        sent_at_cleanup: Mutex::default(),
    });
    let options =
        ServiceOptions { graceful_shutdown_timeout: graceful, periodic_enable: false, ..ServiceOptions::default() };
    let running = Service::create(t.clone(), ManagerHandle::new(mailer.clone()))
        .info(info.clone())
        .options(options)
        .start()
        .await
        .unwrap();
    let client = MailerClient::new(RpcClient::new(t, Target::new("mailer")));
    client.send_later(&RequestContext::new()).await.unwrap();
    eventually("the mail is being sent in the background", Duration::from_secs(30), || async {
        (info.background.running() == 1).then_some(())
    })
    .await;
    running.stop().await;
    let seen = *mailer.sent_at_cleanup.lock().unwrap();
    (seen, info.background.running())
}

#[tokio::test(start_paused = true)]
async fn a_stop_waits_for_background_work_before_cleanup_host() {
    let (seen, left) = send_then_stop("background-waits", Duration::from_secs(10), Duration::from_secs(60)).await;
    assert_eq!(seen, Some(true), "cleanup_host ran after the mail went out");
    assert_eq!(left, 0);
}

#[tokio::test(start_paused = true)]
async fn background_work_past_the_grace_is_cancelled_and_cleanup_host_still_runs() {
    let (seen, left) = send_then_stop("background-cancelled", Duration::from_secs(3600), Duration::from_secs(5)).await;
    assert_eq!(seen, Some(false), "cleanup_host ran, the mail never went out");
    assert_eq!(left, 0, "the work was cancelled");
}
