//! The HTTP API under a realistic command mix, beside the raw-database baseline for the
//! same kind of work, in one run.
//!
//!     cargo bench -p shopagent --bench load
//!
//! Environment: `TEST_DATABASE_URL` (server; a throwaway database is created and
//! dropped), `BENCH_CONCURRENCY` (default `8,32`), `BENCH_SECONDS` (per level, default
//! 20), `BENCH_MIX` (default `journey,cart_lines`), `BENCH_REQUESTS_DIR` (unset: a
//! directory to write every level's requests to, with when each was sent and its
//! latency).
//!
//! The server is the real `shopagent serve` binary in its own process, on PostgreSQL,
//! so its memory is its own, with the sandbox card issuer and UCP merchant beside it.
//! Each virtual client is an agent under its own mandate that goes round a shopping
//! journey, one agent run each (`api/tests/loadgen`): start the run, create a cart,
//! add two lines, set the address, record the merchant's quote, check out (budget
//! reserved on the mandate, an order created), and record two actions in the run's
//! ledger — nine commands, each one HTTP request with a fresh `Idempotency-Key`. Each
//! checkout goes on in the
//! background: a card issued, the order placed at the merchant, the card authorized
//! through the issuer's webhook, the spend committed, the merchant's order webhook
//! received. A checkout the server refuses while the purchases behind it are late (503
//! `purchases_behind`) is sent again with its key after the `Retry-After` it gave.
//! Measured per level: commands/s (those answered 2xx), latency p50/p95/p99/max of
//! every answer (also by kind of request), answers by status, the server's resident memory at the start and the end
//! of the level and its peak, and the database's transactions and rows written per
//! command (its own counters, background work included). A paced level runs at the
//! concurrency of the highest rate, with all agents paced together to half that rate;
//! where the requests outran their background work, a second one runs at half the
//! highest rate with the work done, the rate the machine sustains: the latency at half
//! of peak throughput.
//!
//! The raw baseline, at the same concurrency for the same time: one transaction that
//! reads a stream's rows and inserts the next one (what a command costs the database
//! at least: load the aggregate, append its event).
//!
//! The journey is more than that work: for every nine commands a purchase in the
//! background appends seven more events, calls the issuer and the merchant and takes
//! their two webhooks. The second mix, `cart_lines`, is the baseline's own work over
//! HTTP: each agent creates a cart and adds six lines to it, seven commands that each
//! load the cart and append one event; beside the baseline it is what the HTTP layer,
//! the idempotency records and the readers of the log cost. Each row also counts the
//! events the level appended, its purchases' included (about two per journey command,
//! one per `cart_lines` command), and their rate until the background work was done:
//! the baseline's unit of work is one event loaded and appended, so that ratio sets
//! either mix beside the same database work.

#[path = "../tests/loadgen/mod.rs"]
mod loadgen;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use loadgen::{
    Agent, Caller, Load, Mix, Server, create_mandate, free_port, mandate_terms, register_merchant,
    token,
};
use serde_json::json;
use shopagent::auth::Role;
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};
use shopagent_connectors::Sandbox;
use shopagent_connectors::sandbox_issuer::SandboxIssuer;
use shopagent_connectors::sandbox_merchant::SandboxMerchant;
use support::{RawLog, env_or, ms, percentiles};

/// The raw baseline: a stream's rows read and the next one inserted, in one
/// transaction, by `concurrency` clients for `seconds`; transactions per second.
async fn raw_load_append(url: &str, concurrency: usize, seconds: u64) -> f64 {
    let raw = Arc::new(RawLog::open(url, concurrency).await);
    let payload = json!({"line": {"offer_id": "sku:tent", "quantity": 1}});
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (raw, stop, payload) = (Arc::clone(&raw), Arc::clone(&stop), payload.clone());
            tokio::spawn(async move {
                let mut done: u64 = 0;
                // A stream per journey, as each cart is: a few events each.
                let mut stream = format!("raw-{concurrency}-{worker}-0");
                while !stop.load(Ordering::Relaxed) {
                    if done.is_multiple_of(7) {
                        stream = format!("raw-{concurrency}-{worker}-{done}");
                    }
                    raw.load_and_append(&stream, &payload).await;
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
    if let Some(raw) = Arc::into_inner(raw) {
        raw.close().await;
    }
    rate
}

const ISSUER_KEY: &str = "sk_test_load";
const WEBHOOK_SECRET: &str = "whsec_load";
const CARD_ACCEPTOR: &str = "4445550001";

#[tokio::main]
async fn main() {
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "8,32".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let seconds: u64 = env_or("BENCH_SECONDS", 20);
    let mixes: Vec<Mix> = std::env::var("BENCH_MIX")
        .unwrap_or_else(|_| "journey,cart_lines".into())
        .split(',')
        .map(|name| {
            Mix::parse(name.trim())
                .unwrap_or_else(|| panic!("BENCH_MIX: `{name}` is neither journey nor cart_lines"))
        })
        .collect();
    let (url, name) = create_pg_database().await;
    let data = tempfile::tempdir().expect("data directory");
    // The sandbox card issuer and UCP merchant, so that every checkout goes on in the
    // background as it would for real: a card issued, the order placed, the card
    // charged (an authorization webhook), the spend committed, the merchant's order
    // webhook received.
    let issuer = SandboxIssuer::new(ISSUER_KEY);
    let (issuer_url, _) = issuer.spawn().await.expect("sandbox issuer");
    let merchant = SandboxMerchant::new();
    let (merchant_url, _) = merchant.spawn().await.expect("sandbox merchant");
    let mut server = Server::start(
        &url,
        data.path(),
        free_port(),
        &[
            ("SHOPAGENT_DB_MAX_CONNECTIONS", "32"),
            ("SHOPAGENT_CARD_ISSUER_URL", &issuer_url),
            ("SHOPAGENT_CARD_ISSUER_KEY", ISSUER_KEY),
            ("SHOPAGENT_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    )
    .await;
    merchant.deliver_webhooks_to(format!("{}/v1/webhooks/ucp/acme/acme", server.base));
    issuer.deliver_authorizations_to(
        format!("{}/v1/webhooks/stripe", server.base),
        WEBHOOK_SECRET,
    );
    merchant.charge_cards_with(&issuer_url, ISSUER_KEY, CARD_ACCEPTOR);
    register_merchant(&server.base, &merchant_url, Some(CARD_ACCEPTOR)).await;

    let site = Site {
        server: &server,
        merchant: &merchant,
        url: &url,
    };
    for mix in mixes {
        let title = match mix {
            Mix::Journey => "the shopping journey (nine commands, a purchase in the background)",
            Mix::CartLines => "a cart and six lines (seven commands, each a load and an append)",
        };
        println!(
            "\nRaw baseline (load a stream + append, one transaction) and {title} over HTTP, {seconds} s per level:\n"
        );
        println!(
            "| clients | raw tx/s | HTTP commands/s | ratio | commands/s with the background work done (ratio) | events appended / command | events appended/s with the background work done (ratio) | p50 ms | p95 ms | p99 ms | max ms | answers | server RSS start → end (peak) MiB | readers behind at the end (events) | database tx / command | rows written / command | server CPU ms / command |"
        );
        println!(
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|"
        );
        // The level with the highest HTTP rate, and the highest rate with its background
        // work done, for the paced runs at half of each.
        let mut peak: Option<(usize, Rates, f64)> = None;
        for &clients in &levels {
            let raw = raw_load_append(&url, clients, seconds / 2).await;
            let rates = level(&site, mix, clients, seconds, Pace::Unpaced, raw).await;
            if peak.is_none_or(|(_, best, _)| rates.http > best.http) {
                peak = Some((clients, rates, raw));
            }
        }
        if let Some((clients, rates, raw)) = peak {
            let half_http = rates.http / 2.0;
            level(&site, mix, clients, seconds, Pace::HalfHttp(half_http), raw).await;
            // Where the requests outrun their background work, half of the HTTP rate is
            // most of what the machine sustains; half of that is the level the latency
            // target is about. Run only where the two differ.
            if let Some(done) = rates.done.filter(|done| done / 2.0 < 0.9 * half_http) {
                level(
                    &site,
                    mix,
                    clients,
                    seconds,
                    Pace::HalfDone(done / 2.0),
                    raw,
                )
                .await;
            }
        }
    }

    server.kill().await;
    drop_pg_database(&name).await;
}

/// What every level runs against: the server, the sandbox merchant beside it, and the
/// server's database.
struct Site<'a> {
    server: &'a Server,
    merchant: &'a SandboxMerchant,
    url: &'a str,
}

/// How a level's agents send their commands.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// Each as soon as the last answered.
    Unpaced,
    /// All together at this many commands/s: half of the highest HTTP rate.
    HalfHttp(f64),
    /// All together at this many commands/s: half of the highest rate with the
    /// background work done.
    HalfDone(f64),
}

/// A level's commands/s: answered over HTTP, and over the time until their background
/// work was done too (none when it did not finish within [`CATCH_UP`]).
#[derive(Debug, Clone, Copy)]
struct Rates {
    http: f64,
    done: Option<f64>,
}

/// Runs `clients` agents on `mix` for `seconds` at `pace`, prints the level's row, and
/// answers its rates.
async fn level(
    Site {
        server,
        merchant,
        url,
    }: &Site<'_>,
    mix: Mix,
    clients: usize,
    seconds: u64,
    pace: Pace,
    raw: f64,
) -> Rates {
    // Each agent under a mandate of its own shopper.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut agents = Vec::with_capacity(clients);
    for n in 0..clients {
        let mandate = create_mandate(
            &server.base,
            &format!("shopper-{run}-{n}"),
            mandate_terms(None),
        )
        .await;
        agents.push(Agent::new(
            &server.base,
            &format!("agent-{run}-{n}"),
            mandate,
        ));
    }

    let (rss_start, _) = server.memory_kib();
    let work_before = DatabaseWork::read(url).await;
    let cpu_before = server.cpu_time();
    let events_before = (
        merchant.webhooks_acknowledged(),
        merchant.webhook_attempts_not_acknowledged(),
    );
    let per_second = match pace {
        Pace::Unpaced => None,
        Pace::HalfHttp(pace) | Pace::HalfDone(pace) => Some(pace),
    };
    let load = Load::start_paced(agents, mix, per_second);
    let timeline = run_for(server, &load, Duration::from_secs(seconds)).await;
    let (journal, elapsed) = load.stop().await;
    if let Ok(dir) = std::env::var("BENCH_REQUESTS_DIR") {
        let label = format!("{} {}", mix.name(), label_of(clients, pace));
        write_requests(&dir, &label, &journal.sent);
    }
    let (rss_end, peak) = server.memory_kib();
    let mut latencies: Vec<Duration> = journal.sent.iter().map(|s| s.latency).collect();
    // Commands done: a refusal to try again later (503) is answered, not done.
    let acknowledged = journal.acknowledged() as f64;
    let rate = acknowledged / elapsed.as_secs_f64();
    let [p50, p95, p99, max] = percentiles(&mut latencies);
    let answers: Vec<String> = journal
        .by_status()
        .iter()
        .map(|(status, count)| format!("{status}: {count}"))
        .collect();
    let behind = readers_behind(&server.base).await;
    // The next level starts with the background work of this one done.
    let caught_up_after = caught_up(&server.base).await;
    // The level's commands over the time until their purchases and read models were
    // done too: the rate the platform sustains, where the HTTP rate alone may run
    // ahead of work left behind.
    let rate_done = caught_up_after.map(|after| acknowledged / (elapsed + after).as_secs_f64());
    let behind = match caught_up_after {
        Some(after) if behind != "none" => {
            format!("{behind}; all caught up {:.0} s later", after.as_secs_f64())
        }
        Some(_) => behind,
        None => format!("{behind}; not caught up {} s later", CATCH_UP.as_secs()),
    };
    // The server's CPU for the level's commands and their background work, read as
    // soon as the work is done.
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    // Every event the level's commands appended, their purchases' included: the
    // database work the raw baseline does one event a transaction.
    let events = work_before.events_since(url).await as f64;
    let events_done = caught_up_after.map(|after| events / (elapsed + after).as_secs_f64());
    // Read once every backend has reported what it did (background work included).
    tokio::time::sleep(DatabaseWork::REPORTED_WITHIN).await;
    let work = DatabaseWork::read(url).await.since(&work_before);
    let commands = latencies.len().max(1) as f64;
    let label = label_of(clients, pace);
    println!(
        "| {label} | {raw:.0} | {rate:.0} | {:.2} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {:.0} → {:.0} ({:.0}) | {behind} | {:.1} | {:.1} | {:.2} |",
        rate / raw,
        with_ratio(rate_done, raw),
        events / acknowledged.max(1.0),
        with_ratio(events_done, raw),
        ms(p50),
        ms(p95),
        ms(p99),
        ms(max),
        answers.join(", "),
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        peak as f64 / 1024.0,
        work.transactions as f64 / commands,
        work.rows_written as f64 / commands,
        cpu.as_secs_f64() * 1000.0 / commands,
    );
    if !timeline.is_empty() {
        println!(
            "\n  {label}, every {} s: {}\n",
            TIMELINE_EVERY.as_secs(),
            timeline.join("; ")
        );
    }
    println!("\n  {label}, by request: {}\n", by_request(&journal.sent));
    println!(
        "  {label}, the merchant's order events: {} acknowledged, {} attempts not (sent again)\n",
        merchant.webhooks_acknowledged() - events_before.0,
        merchant.webhook_attempts_not_acknowledged() - events_before.1,
    );
    Rates {
        http: rate,
        done: rate_done,
    }
}

/// How a level is named in the report.
fn label_of(clients: usize, pace: Pace) -> String {
    match pace {
        Pace::Unpaced => clients.to_string(),
        Pace::HalfHttp(pace) => format!("{clients}, paced at {pace:.0}/s (half the HTTP rate)"),
        Pace::HalfDone(pace) => {
            format!("{clients}, paced at {pace:.0}/s (half the rate with the work done)")
        }
    }
}

/// Writes every request of a level to `{dir}/{mix} {label}.txt`, one a line: when it was sent
/// (ms since the level's first), its latency (ms) and its path. For finding when the
/// slow ones came, and whether together.
fn write_requests(dir: &str, label: &str, sent: &[loadgen::Sent]) {
    let Some(first) = sent.iter().map(|request| request.at).min() else {
        return;
    };
    let lines: String = sent
        .iter()
        .map(|request| {
            format!(
                "{} {:.2} {}\n",
                (request.at - first).as_millis(),
                request.latency.as_secs_f64() * 1000.0,
                request.path
            )
        })
        .collect();
    let path = std::path::Path::new(dir).join(format!("{}.txt", label.replace('/', " per ")));
    if let Err(error) = std::fs::write(&path, lines) {
        eprintln!("BENCH_REQUESTS_DIR: {}: {error}", path.display());
    }
}

/// `rate` and its ratio to the raw baseline's, or a dash when there is none.
fn with_ratio(rate: Option<f64>, raw: f64) -> String {
    rate.map_or_else(
        || "—".to_owned(),
        |rate| format!("{rate:.0} ({:.2})", rate / raw),
    )
}

/// What the database did, from its own counters for the bench's database: every
/// transaction any client made (the server's requests and its background work alike),
/// and every row inserted, updated or deleted. Divided by the commands of a level they
/// tell how much database work a command costs, a figure that does not move with the
/// machine's speed the way rates do.
struct DatabaseWork {
    transactions: i64,
    rows_written: i64,
    /// The log's last position when read: where a level's events start.
    last_position: i64,
}

impl DatabaseWork {
    /// A backend reports its counters at most once a second while busy, and within
    /// ten seconds of going idle (PostgreSQL 15's statistics).
    const REPORTED_WITHIN: Duration = Duration::from_secs(11);

    async fn read(url: &str) -> Self {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(url)
            .await
            .expect("a connection for the counters");
        let (transactions, rows_written, last_position): (i64, i64, i64) = sqlx::query_as(
            "SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted,
                    (SELECT COALESCE(MAX(position), 0) FROM events)
             FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut connection)
        .await
        .expect("the database's counters");
        connection.close().await.ok();
        Self {
            transactions,
            rows_written,
            last_position,
        }
    }

    /// The work done since `before`; its log position stays `before`'s, where the
    /// work's events start ([`DatabaseWork::events_since`]).
    fn since(self, before: &Self) -> Self {
        Self {
            transactions: self.transactions - before.transactions,
            rows_written: self.rows_written - before.rows_written,
            last_position: before.last_position,
        }
    }

    /// The events appended to the log since `self` was read (a rolled-back append
    /// leaves a gap in the positions, so they are counted, not subtracted).
    async fn events_since(&self, url: &str) -> i64 {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(url)
            .await
            .expect("a connection for the events count");
        let events = sqlx::query_scalar("SELECT count(*) FROM events WHERE position > $1")
            .bind(self.last_position)
            .fetch_one(&mut connection)
            .await
            .expect("the events appended");
        connection.close().await.ok();
        events
    }
}

/// Latency by kind of request (its path with the ids left out): which of them make
/// the tail.
fn by_request(sent: &[loadgen::Sent]) -> String {
    let mut kinds: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    for sent in sent {
        let kind: Vec<&str> = sent
            .path
            .split('/')
            .map(|part| {
                if uuid::Uuid::parse_str(part).is_ok() {
                    "{id}"
                } else {
                    part
                }
            })
            .collect();
        kinds.entry(kind.join("/")).or_default().push(sent.latency);
    }
    kinds
        .iter_mut()
        .map(|(kind, latencies)| {
            let [p50, p95, p99, max] = percentiles(latencies);
            format!(
                "{kind} ({}) p50 {} p95 {} p99 {} max {}",
                latencies.len(),
                ms(p50),
                ms(p95),
                ms(p99),
                ms(max)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How often a long level reports how it is going.
const TIMELINE_EVERY: Duration = Duration::from_secs(30);

/// Lets `load` run for `duration`. A level of two minutes or more also notes, every
/// [`TIMELINE_EVERY`], the rate since the last note, the server's resident memory and
/// the readers behind: whether the rate falls, or the memory grows, with what is stored.
async fn run_for(server: &Server, load: &Load, duration: Duration) -> Vec<String> {
    let end = tokio::time::Instant::now() + duration;
    let mut timeline = Vec::new();
    if duration < Duration::from_secs(120) {
        tokio::time::sleep_until(end).await;
        return timeline;
    }
    let mut sent_before = 0;
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            return timeline;
        }
        let slice = TIMELINE_EVERY.min(end - now);
        tokio::time::sleep(slice).await;
        let sent = load.journal.lock().await.sent.len();
        let (rss, _) = server.memory_kib();
        timeline.push(format!(
            "{:.0} s: {:.0}/s, {:.0} MiB, behind: {}",
            load.started.elapsed().as_secs_f64(),
            (sent - sent_before) as f64 / slice.as_secs_f64(),
            rss as f64 / 1024.0,
            readers_behind(&server.base).await,
        ));
        sent_before = sent;
    }
}

/// How long a level's background work may take to finish after its clients stop.
const CATCH_UP: Duration = Duration::from_secs(300);

/// Waits until every reader of the log has caught up (at most [`CATCH_UP`]); answers
/// how long that took.
async fn caught_up(base: &str) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < CATCH_UP {
        if readers_behind(base).await == "none" {
            return Some(started.elapsed());
        }
        // Each look counts every reader's events left, which costs the database more
        // the further behind a reader is: looking twice a second took a tenth of its
        // statements' time while the purchases caught up.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}

/// Each reader of the log (projections, index, processes) that had not caught up when
/// the level ended, with how many events it had left: whether the background work kept
/// up with the commands. The tracking process is left out: it does not run here (no
/// tracking provider is configured), though the server lists it.
async fn readers_behind(base: &str) -> String {
    let ops = Caller::new(base, token("ops-1", Role::Ops, None));
    let (_, listed) = ops.get("/v1/ops/projections").await;
    let behind: Vec<String> = listed
        .as_ref()
        .and_then(|listed| listed["projections"].as_array())
        .into_iter()
        .flatten()
        .filter(|reader| reader["name"] != "tracking_process")
        .filter(|reader| reader["lag_events"].as_i64().unwrap_or(0) > 0)
        .map(|reader| {
            format!(
                "{} {}",
                reader["name"].as_str().unwrap_or("?"),
                reader["lag_events"]
            )
        })
        .collect();
    if behind.is_empty() {
        "none".to_owned()
    } else {
        behind.join(", ")
    }
}
