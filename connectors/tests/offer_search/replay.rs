//! A Meilisearch HTTP API replayed from recorded exchanges, for the Meilisearch
//! backend's run of the search suite.
//!
//! Each test has its own file of exchanges in `tests/fixtures/meilisearch/`, in the
//! order they happened. The replay answers each request with the next recorded answer
//! only if the request is the recorded one (method, path and query, and the same JSON
//! body); anything else is answered 500 and counted as a mismatch. [`Replay::finish`]
//! fails the test on a mismatch or on an exchange left unplayed.
//!
//! With `MEILISEARCH_RECORD_URL` (and `MEILISEARCH_RECORD_KEY`) set, the replay instead
//! forwards every request to that server and writes what it answered as the test's
//! file: how the files are brought up to date against a real Meilisearch.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedResponse {
    pub status: u16,
    pub body: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exchange {
    pub request: RecordedRequest,
    pub response: RecordedResponse,
}

enum Source {
    Recorded(VecDeque<Exchange>),
    Upstream {
        url: String,
        key: Option<String>,
        client: reqwest::Client,
    },
}

struct Shared {
    source: Source,
    played: Vec<Exchange>,
    mismatches: Vec<String>,
}

/// One test's replayed Meilisearch.
pub struct Replay {
    pub url: String,
    fixture: PathBuf,
    shared: Arc<tokio::sync::Mutex<Shared>>,
    server: tokio::task::JoinHandle<()>,
}

fn fixture(test: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/meilisearch")
        .join(format!("{test}.json"))
}

async fn answer(
    State(shared): State<Arc<tokio::sync::Mutex<Shared>>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let request = RecordedRequest {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        body: (!body.is_empty()).then(|| {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        }),
    };
    let mut shared = shared.lock().await;
    let response = match &mut shared.source {
        Source::Recorded(exchanges) => match exchanges.front() {
            Some(next) if next.request == request => {
                exchanges.pop_front().map(|exchange| exchange.response)
            }
            expected => {
                let mismatch = format!(
                    "request {} {} {}\n  expected {}",
                    request.method,
                    request.path,
                    request
                        .body
                        .as_ref()
                        .map(Value::to_string)
                        .unwrap_or_default(),
                    expected.map_or_else(
                        || "nothing more".to_owned(),
                        |e| serde_json::to_string(&e.request).unwrap_or_default()
                    ),
                );
                shared.mismatches.push(mismatch);
                None
            }
        },
        Source::Upstream { url, key, client } => {
            let mut forwarded = client.request(method, format!("{url}{}", request.path));
            if let Some(key) = key {
                forwarded = forwarded.bearer_auth(key);
            }
            if let Some(body) = &request.body {
                forwarded = forwarded.json(body);
            }
            let reply = forwarded.send().await.expect("the recorded server answers");
            let status = reply.status().as_u16();
            let body = reply.json().await.unwrap_or(Value::Null);
            Some(RecordedResponse { status, body })
        }
    };
    let Some(response) = response else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "not a recorded request").into_response();
    };
    shared.played.push(Exchange {
        request,
        response: response.clone(),
    });
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(response.body)).into_response()
}

impl Replay {
    /// The replay of `test`'s exchanges (or a recording of them; see the module).
    pub async fn start(test: &str) -> Self {
        let fixture = fixture(test);
        let source = match std::env::var("MEILISEARCH_RECORD_URL") {
            Ok(url) => Source::Upstream {
                url: url.trim_end_matches('/').to_owned(),
                key: std::env::var("MEILISEARCH_RECORD_KEY").ok(),
                client: reqwest::Client::new(),
            },
            Err(_) => {
                let text = std::fs::read_to_string(&fixture)
                    .unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
                let exchanges: Vec<Exchange> = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
                Source::Recorded(exchanges.into())
            }
        };
        let shared = Arc::new(tokio::sync::Mutex::new(Shared {
            source,
            played: Vec::new(),
            mismatches: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("replay server");
        });
        Self {
            url,
            fixture,
            shared,
            server,
        }
    }

    /// Fails on any request that was not the recorded one, or any recorded exchange
    /// left unplayed; when recording, writes the test's file.
    pub async fn finish(self) {
        let shared = self.shared.lock().await;
        self.server.abort();
        match &shared.source {
            Source::Upstream { .. } => {
                let text = serde_json::to_string_pretty(&shared.played).expect("json");
                std::fs::write(&self.fixture, text + "\n").expect("fixture written");
            }
            Source::Recorded(left) => {
                assert!(
                    shared.mismatches.is_empty(),
                    "requests not in {}:\n{}",
                    self.fixture.display(),
                    shared.mismatches.join("\n")
                );
                assert!(
                    left.is_empty(),
                    "{} recorded exchanges of {} never requested, the first: {:?}",
                    left.len(),
                    self.fixture.display(),
                    left.front().map(|e| &e.request)
                );
            }
        }
    }
}
