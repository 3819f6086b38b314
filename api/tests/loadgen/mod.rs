//! The load generator over the real HTTP API, shared by the load bench
//! (`api/benches/load.rs`) and the fault tests (`api/tests/faults.rs`).
//!
//! [`Server`] is the real `shopagent serve` binary in a process of its own, so it can be
//! killed, restarted and measured. Each [`Agent`] acts under a mandate and goes round a
//! shopping journey, one agent run each: start the run, create a cart, add two lines,
//! set the address, record the merchant's quote, check out (budget reserved on the
//! mandate, an order created), and record two actions in the run's ledger — nine
//! commands, each one HTTP request with a fresh `Idempotency-Key` (or, in the bench's
//! second [`Mix`], fills carts: a cart and six lines). Every request is written to a
//! [`Journal`]: what was sent, with which key, and what came back, so a test can send
//! it again.
#![allow(dead_code)] // Each including target uses part of it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shopagent::auth::{Authenticator, Claims, Role};
use shopagent_domain::ids::MandateId;
use tokio::sync::Mutex;

pub const SECRET: &str = "load-generator-secret";
pub const TENANT: &str = "acme";

/// What one journey checks out: two lines, shipping and tax.
pub const JOURNEY_TOTAL_MINOR: i64 = 12_900 + 4_500 + 500 + 1_392;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `shopagent serve` on PostgreSQL, in its own process.
pub struct Server {
    child: tokio::process::Child,
    pub base: String,
    log: std::path::PathBuf,
}

impl Server {
    /// Starts the server on `database_url`, listening on `port`, and waits until it is
    /// ready. `env` adds to or overrides its environment. Its log (warnings and errors)
    /// is appended to `serve.log` in `data`.
    pub async fn start(database_url: &str, data: &Path, port: u16, env: &[(&str, &str)]) -> Self {
        let log = data.join("serve.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("the server's log file");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shopagent"));
        command
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log",
                "warn",
                "serve",
            ])
            .env("DATABASE_URL", database_url)
            .env("SHOPAGENT_JWT_SECRET", SECRET)
            .env("SHOPAGENT_DATA_DIR", data)
            .env_remove("KAFKA_BROKERS")
            .env_remove("MEILISEARCH_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("shopagent serve");
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        server.wait_ready(Duration::from_secs(60)).await;
        server
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server runs")
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        while http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .map_or(true, |reply| !reply.status().is_success())
        {
            assert!(Instant::now() < deadline, "the server never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush, nothing of the process runs again.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill -9 the server");
    }

    /// The server's resident memory now and at its peak, in KiB (`/proc`).
    pub fn memory_kib(&self) -> (u64, u64) {
        let pid = self.pid();
        (memory_kib(pid, "VmRSS:"), memory_kib(pid, "VmHWM:"))
    }

    /// The CPU time the server has used so far, in user and kernel mode, all its
    /// threads together (`/proc/{pid}/stat`).
    pub fn cpu_time(&self) -> Duration {
        // `utime` and `stime` count ticks of USER_HZ, which Linux fixes at 100 on the
        // architectures this runs on.
        const TICKS_PER_SECOND: u64 = 100;
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // The command name, in parentheses, may hold spaces: count fields after it.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: u64 = after_name
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|field| field.parse::<u64>().ok())
            .sum();
        Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
    }
}

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

pub fn token(subject: &str, role: Role, mandate: Option<MandateId>) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Authenticator::new(Some(SECRET.as_bytes()), None)
        .issue(&Claims {
            sub: subject.into(),
            tenant: TENANT.into(),
            role,
            mandate,
            exp: now + 3_600,
            iat: now,
        })
        .expect("token")
}

/// An answer to a POST (status 0: no answer, the connection failed).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Option<Value>,
    /// `Idempotent-Replayed`: the answer of an earlier request with the same key.
    pub replayed: bool,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
}

/// One request as sent and as answered (status 0: no answer, the connection failed).
#[derive(Debug, Clone)]
pub struct Sent {
    pub path: String,
    pub body: Value,
    pub key: String,
    pub token: String,
    pub status: u16,
    pub reply: Option<Value>,
    /// When it was sent.
    pub at: Instant,
    pub latency: Duration,
}

impl Sent {
    pub fn acknowledged(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Every request the agents sent, in the order they were answered.
#[derive(Debug, Default)]
pub struct Journal {
    pub sent: Vec<Sent>,
}

impl Journal {
    pub fn acknowledged(&self) -> usize {
        self.sent.iter().filter(|s| s.acknowledged()).count()
    }

    pub fn by_status(&self) -> BTreeMap<u16, u64> {
        let mut statuses = BTreeMap::new();
        for sent in &self.sent {
            *statuses.entry(sent.status).or_default() += 1;
        }
        statuses
    }
}

/// Spaces requests evenly at a rate across every agent that shares it: each request
/// takes the next free slot.
pub struct Pacer {
    interval: Duration,
    next: std::sync::Mutex<Instant>,
}

impl Pacer {
    pub fn new(per_second: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / per_second.max(0.001)),
            next: std::sync::Mutex::new(Instant::now()),
        }
    }

    async fn turn(&self) {
        let at = {
            let mut next = self.next.lock().expect("the pacer's lock");
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// A caller of the API with one bearer token.
#[derive(Clone)]
pub struct Caller {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    /// When set, each journaled request waits for its slot.
    pub pacer: Option<Arc<Pacer>>,
}

impl Caller {
    pub fn new(base: &str, token: String) -> Self {
        Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: base.to_owned(),
            token,
            pacer: None,
        }
    }

    /// POSTs `body` with `key`.
    pub async fn send(&self, path: &str, body: &Value, key: &str) -> Answer {
        let reply = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        match reply {
            Ok(reply) => {
                let header = |name: &str| {
                    reply
                        .headers()
                        .get(name)
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned)
                };
                Answer {
                    status: reply.status().as_u16(),
                    replayed: header("idempotent-replayed").is_some(),
                    content_type: header("content-type"),
                    retry_after: header("retry-after"),
                    body: reply.json::<Value>().await.ok(),
                }
            }
            Err(_) => Answer {
                status: 0,
                replayed: false,
                content_type: None,
                retry_after: None,
                body: None,
            },
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Option<Value>) {
        match self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
        {
            Ok(reply) => {
                let status = reply.status().as_u16();
                (status, reply.json::<Value>().await.ok())
            }
            Err(_) => (0, None),
        }
    }

    /// POSTs with a fresh key, journals it, and answers the reply when it is a 2xx.
    pub async fn post(&self, path: &str, body: Value, journal: &Mutex<Journal>) -> Option<Value> {
        let key = uuid::Uuid::new_v4().to_string();
        self.post_with_key(path, body, key, journal).await.0
    }

    /// [`Caller::post`], sent again with its key whenever the server answers that the
    /// purchases behind it are late (503 `purchases_behind`), after the `Retry-After` it
    /// gave, as a patient agent would; until `stop`.
    pub async fn post_patiently(
        &self,
        path: &str,
        body: Value,
        journal: &Mutex<Journal>,
        stop: &AtomicBool,
    ) -> Option<Value> {
        let key = uuid::Uuid::new_v4().to_string();
        loop {
            let (acknowledged, answer) = self
                .post_with_key(path, body.clone(), key.clone(), journal)
                .await;
            let refused_for_now = answer.status == 503
                && answer
                    .body
                    .as_ref()
                    .is_some_and(|body| body["code"] == "purchases_behind");
            if !refused_for_now {
                return acknowledged;
            }
            let wait = answer
                .retry_after
                .as_deref()
                .and_then(|seconds| seconds.parse().ok())
                .map_or(Duration::from_secs(1), Duration::from_secs);
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// POSTs with `key`, journals it; answers the reply when it is a 2xx, and the answer.
    async fn post_with_key(
        &self,
        path: &str,
        body: Value,
        key: String,
        journal: &Mutex<Journal>,
    ) -> (Option<Value>, Answer) {
        if let Some(pacer) = &self.pacer {
            pacer.turn().await;
        }
        let started = Instant::now();
        let answer = self.send(path, &body, &key).await;
        let sent = Sent {
            path: path.to_owned(),
            body,
            key,
            token: self.token.clone(),
            status: answer.status,
            reply: answer.body.clone(),
            at: started,
            latency: started.elapsed(),
        };
        let acknowledged = sent.acknowledged().then(|| sent.reply.clone()).flatten();
        journal.lock().await.sent.push(sent);
        (acknowledged, answer)
    }
}

/// Mandate terms for the load: autopilot in dollars, with a monthly budget when given.
pub fn mandate_terms(period_budget_minor: Option<i64>) -> Value {
    let mut terms = json!({"mode": "autopilot", "currency": "USD",
                           "per_order_limit": {"minor": 1_000_000, "currency": "USD"}});
    if let Some(limit) = period_budget_minor {
        terms["period_budget"] =
            json!({"period": "month", "limit": {"minor": limit, "currency": "USD"}});
    }
    terms
}

/// Registers the merchant `acme` (UCP, bought from through its API) at `endpoint`,
/// charging cards as `card_acceptor` when it is given.
pub async fn register_merchant(base: &str, endpoint: &str, card_acceptor: Option<&str>) {
    let ops = Caller::new(base, token("ops-1", Role::Ops, None));
    let journal = Mutex::new(Journal::default());
    let body = json!({"merchant_id": "acme", "name": "Acme Outdoor", "protocol": "ucp",
                      "api_endpoint": endpoint, "paths": ["api"],
                      "card_acceptor_ids": card_acceptor.into_iter().collect::<Vec<_>>()});
    ops.post("/v1/merchants", body, &journal)
        .await
        .unwrap_or_else(|| panic!("the merchant: {:?}", journal.into_inner().sent));
}

/// Creates a mandate for `shopper` and answers its id.
pub async fn create_mandate(base: &str, shopper: &str, terms: Value) -> MandateId {
    let caller = Caller::new(base, token(shopper, Role::Shopper, None));
    let journal = Mutex::new(Journal::default());
    let mandate = caller
        .post("/v1/mandates", terms, &journal)
        .await
        .unwrap_or_else(|| panic!("a mandate: {:?}", journal.into_inner().sent));
    MandateId::parse(mandate["id"].as_str().expect("id")).expect("mandate id")
}

/// An agent acting under a mandate.
pub struct Agent {
    pub caller: Caller,
    pub mandate: MandateId,
}

impl Agent {
    pub fn new(base: &str, name: &str, mandate: MandateId) -> Self {
        Self {
            caller: Caller::new(base, token(name, Role::Agent, Some(mandate))),
            mandate,
        }
    }

    /// One round of `mix`. It stops at the first command that fails, as an agent would
    /// rather than build on a step that did not happen.
    pub async fn go_round(&self, mix: Mix, journal: &Mutex<Journal>, stop: &AtomicBool) {
        let done = match mix {
            Mix::Journey => self.journey(journal, stop).await,
            Mix::CartLines => self.cart_lines(journal).await,
        };
        if done.is_none() {
            // A moment's pause, so a server that is down is not spun on.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A cart and six lines added to it: seven commands on one stream, as the raw
    /// baseline appends seven events to each of its streams.
    async fn cart_lines(&self, journal: &Mutex<Journal>) -> Option<()> {
        self.cart_with_lines(Mix::CART_LINES, journal)
            .await
            .map(drop)
    }

    /// A cart under the agent's mandate with `lines` lines added; answers its id.
    async fn cart_with_lines(&self, lines: usize, journal: &Mutex<Journal>) -> Option<String> {
        let caller = &self.caller;
        let cart = caller
            .post(
                "/v1/carts",
                json!({"currency": "USD", "mandate_id": self.mandate.to_string()}),
                journal,
            )
            .await?;
        let cart = cart["id"].as_str()?.to_owned();
        for n in 0..lines {
            caller
                .post(&format!("/v1/carts/{cart}/lines"), gear_line(n), journal)
                .await?;
        }
        Some(cart)
    }

    /// One shopping journey, one agent run: nine commands. A checkout refused while the
    /// purchases behind it are late is sent again when the server says.
    async fn journey(&self, journal: &Mutex<Journal>, stop: &AtomicBool) -> Option<()> {
        let caller = &self.caller;
        let run = caller
            .post("/v1/runs", json!({"prompt": "gear for a weekend"}), journal)
            .await?;
        let run = run["id"].as_str()?;
        let cart = self.cart_with_lines(2, journal).await?;
        let address = json!({"name": "Ada", "line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"});
        caller
            .post(&format!("/v1/carts/{cart}/address"), address, journal)
            .await?;
        let expires = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("time");
        let quote = json!({"merchant": "acme", "items_total": {"minor": 17_400, "currency": "USD"},
                           "shipping": {"minor": 500, "currency": "USD"}, "tax": {"minor": 1_392, "currency": "USD"},
                           "expires_at": expires});
        caller
            .post(&format!("/v1/carts/{cart}/quotes"), quote, journal)
            .await?;
        caller
            .post_patiently(
                &format!("/v1/carts/{cart}/checkout"),
                json!({}),
                journal,
                stop,
            )
            .await?;
        for kind in ["search", "rank"] {
            let action = json!({"kind": kind, "input_digest": "a".repeat(64), "output_digest": "b".repeat(64), "latency_ms": 120});
            caller
                .post(&format!("/v1/runs/{run}/actions"), action, journal)
                .await?;
        }
        Some(())
    }
}

/// The `n`th line an agent adds to a cart: a tent, then a stove (the journey's quote
/// is for these two), then more of them.
fn gear_line(n: usize) -> Value {
    let (sku, price) = [("sku:tent", 12_900), ("sku:stove", 4_500)][n % 2];
    json!({"offer_id": sku, "merchant": "acme", "title": "Gear", "category": "outdoor/camping",
           "unit_price": {"minor": price, "currency": "USD"}, "quantity": 1})
}

/// What the agents send, round after round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// The shopping journey: nine commands, and a purchase in the background.
    Journey,
    /// A cart and six lines: seven commands, each a load of the cart and an append to
    /// it, the work of the raw baseline.
    CartLines,
}

impl Mix {
    /// The lines a `cart_lines` round adds to its cart.
    const CART_LINES: usize = 6;

    /// The commands of one round.
    pub fn commands(self) -> usize {
        match self {
            Self::Journey => 9,
            Self::CartLines => 1 + Self::CART_LINES,
        }
    }

    /// The name `BENCH_MIX` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Journey => "journey",
            Self::CartLines => "cart_lines",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Journey, Self::CartLines]
            .into_iter()
            .find(|mix| mix.name() == name)
    }
}

/// Agents going round their journeys until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub journal: Arc<Mutex<Journal>>,
    pub started: Instant,
}

impl Load {
    /// Starts the agents on their journeys, each sending as fast as it is answered.
    pub fn start(agents: Vec<Agent>) -> Self {
        Self::start_paced(agents, Mix::Journey, None)
    }

    /// Starts the agents on `mix`; with `per_second`, all of them together send at that
    /// rate.
    ///
    /// Paced agents start one after the other, a round's worth of the pace apart.
    /// Started together, they would stay in step for good — the pacer hands its turns
    /// round in the same order — so that every agent checked out in the same few
    /// milliseconds and their purchases ran at once, a load no set of independent
    /// clients makes.
    pub fn start_paced(mut agents: Vec<Agent>, mix: Mix, per_second: Option<f64>) -> Self {
        let mut stagger = Duration::ZERO;
        if let Some(per_second) = per_second {
            let pacer = Arc::new(Pacer::new(per_second));
            for agent in &mut agents {
                agent.caller.pacer = Some(Arc::clone(&pacer));
            }
            stagger = Duration::from_secs_f64(mix.commands() as f64 / per_second.max(0.001));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let journal = Arc::new(Mutex::new(Journal::default()));
        let tasks = agents
            .into_iter()
            .enumerate()
            .map(|(n, agent)| {
                let (stop, journal) = (Arc::clone(&stop), Arc::clone(&journal));
                let start = stagger * u32::try_from(n).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    tokio::time::sleep(start).await;
                    while !stop.load(Ordering::Relaxed) {
                        agent.go_round(mix, &journal, &stop).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            tasks,
            journal,
            started: Instant::now(),
        }
    }

    /// Waits until at least `count` commands were acknowledged (or `within` passed).
    pub async fn until_acknowledged(&self, count: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let acknowledged = self.journal.lock().await.acknowledged();
            if acknowledged >= count || Instant::now() > deadline {
                return acknowledged;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the agents after their current request; answers the journal and how long
    /// the load ran.
    pub async fn stop(self) -> (Journal, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("an agent");
        }
        let elapsed = self.started.elapsed();
        let journal = Arc::into_inner(self.journal)
            .expect("the agents are done")
            .into_inner();
        (journal, elapsed)
    }
}
