//! The HTTP API under a realistic command mix, beside the raw-database baseline for the
//! same kind of work, in one run.
//!
//!     cargo bench -p shopagent --bench load
//!
//! Environment: `TEST_DATABASE_URL` (server; a throwaway database is created and
//! dropped), `BENCH_CONCURRENCY` (default `8,32`), `BENCH_SECONDS` (per level, default
//! 20).
//!
//! The server is the real `shopagent serve` binary in its own process, on PostgreSQL,
//! so its memory is its own. Each virtual client is an agent under its own mandate that
//! goes round a shopping journey: create a cart, add two lines, set the address,
//! record the merchant's quote, check out (budget reserved on the mandate, an order
//! created), and record two actions in its run's ledger — seven commands, each one
//! HTTP request with a fresh `Idempotency-Key`. Measured per level: commands/s, latency
//! p50/p95/p99/max, answers by status, and the server's resident memory at the start
//! and the end of the level and its peak.
//!
//! The raw baseline, at the same concurrency for the same time: one transaction that
//! reads a stream's rows and inserts the next one (what a command costs the database
//! at least: load the aggregate, append its event).

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shopagent::auth::{Authenticator, Claims, Role};
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};
use shopagent_domain::ids::MandateId;
use support::{env_or, ms, percentiles};
use tokio::sync::Mutex;

const SECRET: &str = "load-bench-secret";

/// A line of `/proc/{pid}/status`, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

fn token(auth: &Authenticator, subject: &str, role: Role, mandate: Option<MandateId>) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    auth.issue(&Claims {
        sub: subject.into(),
        tenant: "acme".into(),
        role,
        mandate,
        exp: now + 3_600,
        iat: now,
    })
    .expect("token")
}

/// What the clients saw at one level.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn post(&self, path: &str, body: Value, tally: &Mutex<Tally>) -> Option<Value> {
        let started = Instant::now();
        let reply = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&body)
            .send()
            .await;
        let elapsed = started.elapsed();
        let (status, body) = match reply {
            Ok(reply) => {
                let status = reply.status().as_u16();
                (status, reply.json::<Value>().await.ok())
            }
            Err(_) => (0, None),
        };
        let mut tally = tally.lock().await;
        tally.latencies.push(elapsed);
        *tally.statuses.entry(status).or_default() += 1;
        body.filter(|_| (200..300).contains(&status))
    }

    /// One shopping journey: seven commands.
    async fn journey(&self, run: &str, tally: &Mutex<Tally>) {
        let Some(cart) = self
            .post("/v1/carts", json!({"currency": "USD"}), tally)
            .await
        else {
            return;
        };
        let Some(cart) = cart["id"].as_str() else {
            return;
        };
        for (sku, price) in [("sku:tent", 12_900), ("sku:stove", 4_500)] {
            let line = json!({"offer_id": sku, "merchant": "acme", "title": "Gear", "category": "outdoor/camping",
                              "unit_price": {"minor": price, "currency": "USD"}, "quantity": 1});
            self.post(&format!("/v1/carts/{cart}/lines"), line, tally)
                .await;
        }
        let address = json!({"name": "Ada", "line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"});
        self.post(&format!("/v1/carts/{cart}/address"), address, tally)
            .await;
        let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("time");
        let quote = json!({"merchant": "acme", "items_total": {"minor": 17_400, "currency": "USD"},
                           "shipping": {"minor": 500, "currency": "USD"}, "tax": {"minor": 1_392, "currency": "USD"},
                           "expires_at": expires});
        self.post(&format!("/v1/carts/{cart}/quotes"), quote, tally)
            .await;
        self.post(&format!("/v1/carts/{cart}/checkout"), json!({}), tally)
            .await;
        for kind in ["search", "rank"] {
            let action = json!({"kind": kind, "input_digest": "a".repeat(64), "output_digest": "b".repeat(64), "latency_ms": 120});
            self.post(&format!("/v1/runs/{run}/actions"), action, tally)
                .await;
        }
    }
}

/// The raw baseline: a stream's rows read and the next one inserted, in one
/// transaction, by `concurrency` clients for `seconds`; transactions per second.
async fn raw_load_append(url: &str, concurrency: usize, seconds: u64) -> f64 {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(concurrency as u32)
        .connect(url)
        .await
        .expect("raw pool");
    sqlx::query("CREATE TABLE IF NOT EXISTS raw_events (id BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, seq BIGINT NOT NULL, payload JSONB NOT NULL, UNIQUE (stream, seq))")
        .execute(&pool)
        .await
        .expect("raw table");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let pool = pool.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut done: u64 = 0;
                // A stream per journey, as each cart is: a few events each.
                let mut stream = format!("raw-{concurrency}-{worker}-0");
                while !stop.load(Ordering::Relaxed) {
                    if done.is_multiple_of(7) {
                        stream = format!("raw-{concurrency}-{worker}-{done}");
                    }
                    let mut tx = pool.begin().await.expect("transaction");
                    let rows: Vec<(i64,)> =
                        sqlx::query_as("SELECT seq FROM raw_events WHERE stream = $1 ORDER BY seq")
                            .bind(&stream)
                            .fetch_all(&mut *tx)
                            .await
                            .expect("load");
                    sqlx::query(
                        "INSERT INTO raw_events (stream, seq, payload) VALUES ($1, $2, $3)",
                    )
                    .bind(&stream)
                    .bind(rows.len() as i64 + 1)
                    .bind(json!({"line": {"offer_id": "sku:tent", "quantity": 1}}))
                    .execute(&mut *tx)
                    .await
                    .expect("append");
                    tx.commit().await.expect("commit");
                    done += 1;
                }
                done
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("worker");
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    rate
}

#[tokio::main]
async fn main() {
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "8,32".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let seconds: u64 = env_or("BENCH_SECONDS", 20);
    let (url, name) = create_pg_database().await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let data = tempfile::tempdir().expect("data directory");
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_shopagent"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log",
            "warn",
            "serve",
        ])
        .env("DATABASE_URL", &url)
        .env("SHOPAGENT_JWT_SECRET", SECRET)
        .env("SHOPAGENT_DATA_DIR", data.path())
        .env("SHOPAGENT_DB_MAX_CONNECTIONS", "32")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("shopagent serve");
    let pid = server.id().expect("server pid");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let auth = Authenticator::new(Some(SECRET.as_bytes()), None);

    println!(
        "Raw baseline (load a stream + append, one transaction) and the HTTP command mix, {seconds} s per level:\n"
    );
    println!(
        "| clients | raw tx/s | HTTP commands/s | ratio | p50 ms | p95 ms | p99 ms | max ms | answers | server RSS start → end (peak) MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for &clients in &levels {
        let raw = raw_load_append(&url, clients, seconds / 2).await;

        // Each client: a mandate of its shopper, a token of its agent, a run.
        let mut users = Vec::with_capacity(clients);
        for n in 0..clients {
            let shopper = Client {
                http: http.clone(),
                base: base.clone(),
                token: token(
                    &auth,
                    &format!("shopper-{clients}-{n}"),
                    Role::Shopper,
                    None,
                ),
            };
            let setup = Mutex::new(Tally::default());
            let mandate = shopper
                .post(
                    "/v1/mandates",
                    json!({"mode": "autopilot", "currency": "USD", "per_order_limit": {"minor": 1_000_000, "currency": "USD"}}),
                    &setup,
                )
                .await
                .expect("mandate");
            let mandate =
                MandateId::parse(mandate["id"].as_str().expect("id")).expect("mandate id");
            let agent = Client {
                http: http.clone(),
                base: base.clone(),
                token: token(
                    &auth,
                    &format!("agent-{clients}-{n}"),
                    Role::Agent,
                    Some(mandate),
                ),
            };
            let run = agent
                .post("/v1/runs", json!({"prompt": "gear for a weekend"}), &setup)
                .await
                .expect("run");
            let run = run["id"].as_str().expect("run id").to_owned();
            users.push((agent, run));
        }

        let rss_start = memory_kib(pid, "VmRSS:");
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = users
            .into_iter()
            .map(|(agent, run)| {
                let tally = Arc::clone(&tally);
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        agent.journey(&run, &tally).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("client");
        }
        let elapsed = started.elapsed();
        let rss_end = memory_kib(pid, "VmRSS:");
        let peak = memory_kib(pid, "VmHWM:");
        let mut tally = tally.lock().await;
        let commands = tally.latencies.len();
        let rate = commands as f64 / elapsed.as_secs_f64();
        let [p50, p95, p99, max] = percentiles(&mut tally.latencies);
        let answers: Vec<String> = tally
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        println!(
            "| {clients} | {raw:.0} | {rate:.0} | {:.2} | {} | {} | {} | {} | {} | {:.0} → {:.0} ({:.0}) |",
            rate / raw,
            ms(p50),
            ms(p95),
            ms(p99),
            ms(max),
            answers.join(", "),
            rss_start as f64 / 1024.0,
            rss_end as f64 / 1024.0,
            peak as f64 / 1024.0,
        );
    }

    server.kill().await.expect("server stopped");
    drop_pg_database(&name).await;
}
