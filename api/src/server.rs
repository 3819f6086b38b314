//! The server's life cycle: open the store, serve HTTP, run projections, stop cleanly.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use shopagent_commands::{Database, Store, StoreConfig};
use shopagent_projections::{AggregateCatalog, Projection, ProjectionRunner};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What request handlers share.
#[derive(Debug, Clone)]
pub struct App {
    pub store: Store,
}

/// Every projection this build maintains.
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(AggregateCatalog)]
}

/// Opens the configured store and applies pending migrations.
pub async fn open_store(config: &StoreConfig) -> anyhow::Result<Store> {
    let db = Database::connect(config).await?;
    db.migrate().await?;
    Ok(Store::new(db))
}

/// A server bound to its address, ready to run.
#[derive(Debug)]
pub struct Server {
    app: App,
    listener: TcpListener,
}

impl Server {
    pub async fn build(config: &StoreConfig, listen: SocketAddr) -> anyhow::Result<Self> {
        let store = open_store(config).await?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        Ok(Self {
            app: App { store },
            listener,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Serves until `shutdown` fires; then lets in-flight requests finish, lets each
    /// projection finish and checkpoint its batch, and closes the store.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { app, listener } = self;
        let store = app.store.clone();
        let runners_stop = CancellationToken::new();
        let runners: Vec<_> = projections()
            .into_iter()
            .map(|projection| {
                let runner = ProjectionRunner::new(store.clone(), projection);
                tokio::spawn(runner.run(runners_stop.clone()))
            })
            .collect();

        tracing::info!(
            address = %listener.local_addr()?,
            store = store.backend().as_str(),
            "shopagent listening"
        );
        let served = axum::serve(listener, crate::http::router(app))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;

        runners_stop.cancel();
        for runner in runners {
            if let Err(error) = runner.await {
                tracing::error!(%error, "projection runner ended abnormally");
            }
        }
        store.database().close().await;
        tracing::info!("shopagent stopped");
        served.context("HTTP server failed")
    }
}
