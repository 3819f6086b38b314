//! What the sandboxes share: serving a router on loopback, and delivering webhooks the
//! way a well-behaved sender does (one at a time, in order, retried until acknowledged).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use serde_json::Value;

/// A sandbox server: its routes, served on loopback.
pub trait Sandbox {
    /// Names the sandbox in logs.
    const NAME: &'static str;

    fn router(&self) -> Router;

    /// Serves on a free loopback port; returns the base URL.
    fn spawn(
        &self,
    ) -> impl Future<Output = std::io::Result<(String, tokio::task::JoinHandle<()>)>> + Send {
        self.spawn_at(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves at `address`; returns the base URL.
    fn spawn_at(
        &self,
        address: SocketAddr,
    ) -> impl Future<Output = std::io::Result<(String, tokio::task::JoinHandle<()>)>> + Send {
        let router = self.router();
        async move {
            let listener = tokio::net::TcpListener::bind(address).await?;
            let url = format!("http://{}", listener.local_addr()?);
            let task = tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, sandbox = Self::NAME, "sandbox stopped");
                }
            });
            Ok((url, task))
        }
    }
}

/// Signs a body: the header name and value to send with it.
pub(crate) type Signer = Box<dyn Fn(&[u8]) -> Option<(&'static str, String)> + Send>;

/// What became of a sandbox's webhook deliveries, counted.
#[derive(Debug, Default)]
pub struct Deliveries {
    acknowledged: AtomicUsize,
    not_acknowledged: AtomicUsize,
}

impl Deliveries {
    /// Deliveries the receiver answered with a 2xx.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::SeqCst)
    }

    /// Attempts that got another answer, or none: each is tried again.
    pub fn attempts_not_acknowledged(&self) -> usize {
        self.not_acknowledged.load(Ordering::SeqCst)
    }
}

/// Sends each event in turn, signed afresh on every attempt, until the receiver answers
/// 2xx (or a day's worth of attempts failed); counts what became of each attempt.
pub(crate) async fn deliver_in_order(
    url: String,
    sign: Signer,
    mut events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    deliveries: Arc<Deliveries>,
) {
    let http = reqwest::Client::new();
    while let Some(event) = events.recv().await {
        let body = event.to_string();
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=2_000 {
            let Some((header, signature)) = sign(body.as_bytes()) else {
                tracing::error!("sandbox cannot sign its webhook");
                break;
            };
            let sent = http
                .post(&url)
                .header(header, signature)
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    deliveries.acknowledged.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok(response) => {
                    tracing::debug!(attempt, status = %response.status(), "webhook not acknowledged");
                }
                Err(error) => tracing::debug!(attempt, %error, "webhook not delivered"),
            }
            deliveries.not_acknowledged.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
