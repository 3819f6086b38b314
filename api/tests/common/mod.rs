//! The HTTP test harness: the real server on a random port with a store of its own.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod checkout;

use std::net::SocketAddr;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use shopagent::Server;
use shopagent::auth::{Authenticator, Claims, Role};
use shopagent_commands::StoreConfig;
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const SECRET: &[u8] = b"test-secret-not-for-production";

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub auth: Authenticator,
    pub store: shopagent_commands::Store,
    shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
    /// Where the store lives, to open it again once the server stopped.
    config: StoreConfig,
    _dir: Option<TempDir>,
    pg_database: Option<String>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, None).await
}

pub async fn spawn_app_with(backend: Backend, jwks_url: Option<String>) -> TestApp {
    spawn_app_configured(backend, jwks_url, None).await
}

pub async fn spawn_app_configured(
    backend: Backend,
    jwks_url: Option<String>,
    stripe_webhook_secret: Option<&str>,
) -> TestApp {
    spawn_app_full(backend, jwks_url, stripe_webhook_secret, None).await
}

/// Everything configurable: OIDC, webhook secret, and a card issuer (which starts the
/// checkout process manager).
pub async fn spawn_app_full(
    backend: Backend,
    jwks_url: Option<String>,
    stripe_webhook_secret: Option<&str>,
    card_issuer: Option<std::sync::Arc<dyn shopagent_domain::ports::CardIssuer>>,
) -> TestApp {
    spawn_app_with_server(backend, jwks_url, |server| {
        server
            .with_stripe_webhook_secret(stripe_webhook_secret.map(str::to_owned))
            .with_card_issuer(card_issuer)
    })
    .await
}

/// A server configured by `configure` before it starts.
pub async fn spawn_app_with_server(
    backend: Backend,
    jwks_url: Option<String>,
    configure: impl FnOnce(Server) -> Server,
) -> TestApp {
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
    let auth = Authenticator::new(Some(SECRET), jwks_url);
    start_server(config, auth, configure, dir, pg_database).await
}

/// Builds a server on the store `config` names, configured by `configure`, and runs it.
async fn start_server(
    config: StoreConfig,
    auth: Authenticator,
    configure: impl FnOnce(Server) -> Server,
    dir: Option<TempDir>,
    pg_database: Option<String>,
) -> TestApp {
    let server = Server::build(
        &config,
        auth.clone(),
        "127.0.0.1:0".parse().expect("address"),
    )
    .await
    .expect("build the server");
    let server = configure(server);
    let address = server.local_addr().expect("bound address");
    let store = server.app().store.clone();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.run(shutdown.clone()));
    TestApp {
        address,
        client: reqwest::Client::new(),
        auth,
        store,
        shutdown,
        server: handle,
        config,
        _dir: dir,
        pg_database,
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The status, headers and JSON body (`null` when there is none) of `response`.
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json answer with this status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(self.body["code"], code, "{:?}", self.body);
        assert_eq!(self.body["status"], status.as_u16());
    }

    pub fn etag(&self) -> String {
        self.header("etag").expect("ETag").to_owned()
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub fn token(&self, tenant: &str, subject: &str, role: Role, mandate: Option<&str>) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: subject.into(),
            tenant: tenant.into(),
            role,
            mandate: mandate
                .map(|m| shopagent_domain::ids::MandateId(Uuid::parse_str(m).expect("uuid"))),
            exp: now + 600,
            iat: now,
        };
        self.auth.issue(&claims).expect("token")
    }

    pub fn shopper(&self, name: &str) -> String {
        self.token("acme", name, Role::Shopper, None)
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(etag) = if_match {
            request = request.header("If-Match", etag);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        Reply::read(request.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(Method::GET, path, Some(token), None, None, None)
            .await
    }

    /// POST with a fresh idempotency key.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        let key = Uuid::new_v4().to_string();
        self.send(
            Method::POST,
            path,
            Some(token),
            Some(&key),
            Some(&body),
            None,
        )
        .await
    }

    /// A second server on this one's database, as another instance of a deployment
    /// would be; stopping it leaves the database to this one.
    pub async fn another_instance(&self) -> TestApp {
        start_server(
            self.config.clone(),
            self.auth.clone(),
            |server| server,
            None,
            None,
        )
        .await
    }

    pub async fn stop(mut self) {
        self.stop_server().await;
        self.drop_database().await;
    }

    /// Stops the server, then runs `after` on its store opened again: what the server
    /// left behind.
    pub async fn stop_then<T>(
        mut self,
        after: impl AsyncFnOnce(&shopagent_commands::Store) -> T,
    ) -> T {
        self.stop_server().await;
        let store = shopagent::server::open_store(&self.config)
            .await
            .expect("the store opens again");
        let found = after(&store).await;
        store.close().await;
        self.drop_database().await;
        found
    }

    async fn stop_server(&mut self) {
        self.shutdown.cancel();
        (&mut self.server)
            .await
            .expect("server task")
            .expect("server stops cleanly");
    }

    async fn drop_database(self) {
        if let Some(name) = self.pg_database {
            drop_pg_database(&name).await;
        }
    }
}

/// Runs each scenario once per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::common::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::common::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// Reads JSON log lines until one whose message is `message`; returns it.
pub fn read_until(logs: &mut impl std::io::BufRead, message: &str) -> Value {
    let mut line = String::new();
    loop {
        line.clear();
        let read = logs.read_line(&mut line).expect("read log");
        assert!(read > 0, "log ended before {message:?}");
        let Ok(entry) = serde_json::from_str::<Value>(&line) else {
            panic!("log line is not JSON: {line}");
        };
        if entry["message"] == message {
            return entry;
        }
    }
}

/// The reader `name` in a `GET /v1/ops/projections` answer.
#[track_caller]
pub fn projection(listed: &Value, name: &str) -> Value {
    listed["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} is not listed: {listed}"))
}
