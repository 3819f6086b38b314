//! HTTP tests: each spawns the real server on a random port with a store of its own.

use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::Value;
use shopagent::Server;
use shopagent_commands::StoreConfig;
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct TestApp {
    address: SocketAddr,
    client: reqwest::Client,
    shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
    store: shopagent_commands::Store,
    _dir: Option<TempDir>,
    pg_database: Option<String>,
}

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn spawn_app(backend: Backend) -> TestApp {
    let (config, dir, pg_database) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            (StoreConfig::new(None, dir.path()), Some(dir), None)
        }
        Backend::Postgres => {
            let (url, name) = create_pg_database().await;
            (StoreConfig::new(Some(url), "unused"), None, Some(name))
        }
    };
    let server = Server::build(&config, "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("build the server");
    let address = server.local_addr().expect("bound address");
    let store = server.app().store.clone();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.run(shutdown.clone()));
    TestApp {
        address,
        client: reqwest::Client::new(),
        shutdown,
        server: handle,
        store,
        _dir: dir,
        pg_database,
    }
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.server
            .await
            .expect("server task")
            .expect("server stops cleanly");
        if let Some(name) = self.pg_database {
            drop_pg_database(&name).await;
        }
    }
}

async fn problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["code"], code);
    assert_eq!(body["type"], format!("urn:shopagent:problem:{code}"));
    assert!(body["title"].is_string());
    body
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    healthz_says_alive,
    readyz_names_the_store_once_migrated,
    readyz_is_unavailable_when_the_store_is_gone,
    unknown_route_is_a_not_found_problem,
    wrong_method_is_a_method_not_allowed_problem,
);

async fn healthz_says_alive(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "ok");
    app.stop().await;
}

async fn readyz_names_the_store_once_migrated(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(
        body,
        serde_json::json!({"status": "ready", "store": expected})
    );
    app.stop().await;
}

async fn readyz_is_unavailable_when_the_store_is_gone(backend: Backend) {
    let app = spawn_app(backend).await;
    app.store.database().close().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.headers()["retry-after"], "1");
    problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;
    // Liveness does not depend on the store.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    app.stop().await;
}

async fn unknown_route_is_a_not_found_problem(backend: Backend) {
    let app = spawn_app(backend).await;
    problem(
        app.get("/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    app.stop().await;
}

async fn wrong_method_is_a_method_not_allowed_problem(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .post(app.url("/healthz"))
        .send()
        .await
        .expect("request");
    problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    app.stop().await;
}
