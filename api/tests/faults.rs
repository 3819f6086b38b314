//! Faults under load, against the real `shopagent serve` binary on PostgreSQL, driven by
//! the load generator the load bench uses (`loadgen`).
//!
//! - The server is killed (SIGKILL) while agents shop, and started again: every
//!   acknowledged command is in the log, a retry with its key replays it and appends
//!   nothing, a command that got no answer completes once when retried, the mandate's
//!   budget was never overspent at any point of its stream, and every projection equals
//!   its rebuild from the log.
//! - The database connection is cut under load: requests fail with 503 problem+json
//!   and `Retry-After`, `/readyz` says not ready, and once the database is back the
//!   same process serves again and has lost no acknowledged write.

mod loadgen;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use loadgen::{
    Agent, Answer, Caller, JOURNEY_TOTAL_MINOR, Journal, Load, Sent, Server, create_mandate,
    free_port, mandate_terms, register_merchant, token,
};
use serde_json::json;
use shopagent::auth::Role;
use shopagent_commands::test_support::{create_pg_database, drop_pg_database};
use shopagent_domain::ids::MandateId;
use shopagent_domain::mandate::MandateEvent;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};

/// Agents shopping at once, all under one mandate.
const AGENTS: usize = 6;

fn agents(base: &str, mandate: MandateId) -> Vec<Agent> {
    (0..AGENTS)
        .map(|n| Agent::new(base, &format!("agent-{n}"), mandate))
        .collect()
}

async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count events")
}

/// Sends `sent` again with its key until it is answered for good: a request still
/// held by a key's lease (one that was in flight when the server died) is retried as
/// `Retry-After` says.
async fn resend(base: &str, sent: &Sent) -> Answer {
    let caller = Caller::new(base, sent.token.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = caller.send(&sent.path, &sent.body, &sent.key).await;
        let busy = answer.status == 409
            && answer
                .body
                .as_ref()
                .is_some_and(|b| b["code"] == "request_in_progress");
        if !(busy || answer.status == 0 || answer.status == 503) || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every acknowledged request, sent again with its key, answers its first status and
/// appends nothing. Its first answer comes back whole (`Idempotent-Replayed`) when the
/// server stored it; when the database went away between the command's commit and the
/// storing of its answer, the command's own idempotency record makes the retry a no-op
/// that answers the state as it is now.
async fn assert_acknowledged_commands_replay(base: &str, journal: &Journal, pool: &PgPool) {
    let before = event_count(pool).await;
    for sent in journal.sent.iter().filter(|s| s.acknowledged()) {
        let answer = resend(base, sent).await;
        assert_eq!(
            answer.status, sent.status,
            "{} with key {} was acknowledged; sent again it answered {:?}",
            sent.path, sent.key, answer
        );
        if answer.replayed {
            assert_eq!(answer.body, sent.reply, "{} answered otherwise", sent.path);
        }
    }
    assert_eq!(
        event_count(pool).await,
        before,
        "sending acknowledged commands again appended events"
    );
}

/// Replays the mandate's stream: at no point did open reservations and committed spend
/// together exceed the period budget.
async fn assert_budget_never_exceeded(url: &str, mandate: MandateId, budget: i64) -> usize {
    let data = tempfile::tempdir().expect("data directory");
    let config = shopagent_commands::StoreConfig::new(Some(url.to_owned()), data.path());
    let store = shopagent::server::open_store(&config)
        .await
        .expect("the store");
    let mandates = shopagent_commands::CommandBus::<shopagent_domain::mandate::Mandate>::new(store);
    let stream = format!("{}/{mandate}", loadgen::TENANT);
    let events = mandates
        .events(&stream)
        .await
        .expect("the mandate's events");
    let mut held = BTreeMap::new();
    let (mut committed, mut reservations) = (0, 0);
    for event in events {
        match event {
            MandateEvent::BudgetReserved {
                reservation_id,
                amount,
                ..
            } => {
                held.insert(reservation_id, amount.minor);
                reservations += 1;
            }
            MandateEvent::SpendCommitted {
                reservation_id,
                amount,
                ..
            } => {
                held.remove(&reservation_id);
                committed += amount.minor;
            }
            MandateEvent::ReservationReleased { reservation_id, .. } => {
                held.remove(&reservation_id);
            }
            _ => {}
        }
        let used = committed + held.values().sum::<i64>();
        assert!(used <= budget, "{used} of a {budget} budget in use");
    }
    reservations
}

/// Each projection's rows, as JSON text, sorted.
async fn read_models(pool: &PgPool) -> BTreeMap<String, Vec<String>> {
    let mut models = BTreeMap::new();
    for projection in shopagent::server::projections() {
        for table in projection.tables() {
            let rows: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT CAST(to_jsonb(t) AS TEXT) AS row FROM {table} t ORDER BY row"
            ))
            .fetch_all(pool)
            .await
            .expect("read model rows");
            models.insert((*table).to_owned(), rows);
        }
    }
    models
}

/// Waits until every projection has applied the whole log and the log has stopped
/// growing. (The process managers do not run: the server has no card issuer.)
async fn until_settled(ops: &Caller, pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_head = -1;
    loop {
        let (status, listed) = ops.get("/v1/ops/projections").await;
        let head = event_count(pool).await;
        let caught_up = status == 200
            && listed
                .as_ref()
                .and_then(|l| l["projections"].as_array())
                .is_some_and(|all| {
                    all.iter().filter(|p| p["kind"] == "projection").all(|p| {
                        p["lag_events"] == 0 && p["rebuild"].is_null() && p["state"] == "running"
                    })
                });
        if caught_up && head == last_head {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the readers never caught up: {listed:?}"
        );
        last_head = head;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every projection, caught up, equals what a rebuild from the log makes of it.
async fn assert_projections_equal_their_rebuild(base: &str, pool: &PgPool) {
    let ops = Caller::new(base, token("ops-1", Role::Ops, None));
    until_settled(&ops, pool).await;
    let live = read_models(pool).await;
    for projection in shopagent::server::projections() {
        let key = uuid::Uuid::new_v4().to_string();
        let path = format!("/v1/ops/projections/{}/rebuild", projection.name());
        let answer = ops.send(&path, &json!({}), &key).await;
        assert_eq!(answer.status, 202, "{path}: {answer:?}");
        until_settled(&ops, pool).await;
    }
    let rebuilt = read_models(pool).await;
    for (table, rows) in &live {
        assert_eq!(
            Some(rows),
            rebuilt.get(table),
            "{table} differs from its rebuild"
        );
    }
}

#[tokio::test]
async fn a_server_killed_under_load_keeps_every_acknowledged_command_and_applies_each_once() {
    let (url, name) = create_pg_database().await;
    let pool = PgPool::connect(&url).await.expect("a pool");
    let data = tempfile::tempdir().expect("data directory");
    let port = free_port();
    let mut server = Server::start(&url, data.path(), port, &[]).await;
    // The agents' checkouts race for a budget of a few journeys.
    let budget = 5 * JOURNEY_TOTAL_MINOR;
    register_merchant(&server.base, "http://127.0.0.1:1/ucp", None).await;
    let mandate = create_mandate(&server.base, "shopper-1", mandate_terms(Some(budget))).await;
    let load = Load::start(agents(&server.base, mandate));
    let acknowledged = load.until_acknowledged(150, Duration::from_secs(180)).await;
    assert!(
        acknowledged >= 150,
        "only {acknowledged} commands acknowledged"
    );

    server.kill().await;
    let (journal, _) = load.stop().await;
    let unanswered: Vec<&Sent> = journal.sent.iter().filter(|s| !s.acknowledged()).collect();
    assert!(
        journal
            .sent
            .iter()
            .all(|s| s.acknowledged() || s.status == 0),
        "before the kill every command succeeded: {:?}",
        journal.by_status()
    );
    let server = Server::start(&url, data.path(), port, &[]).await;

    assert_acknowledged_commands_replay(&server.base, &journal, &pool).await;
    // A command that got no answer either committed before the kill (its retry replays
    // it) or did not (its retry applies it now): either way it is applied once.
    for sent in &unanswered {
        let first = resend(&server.base, sent).await;
        assert!(
            (200..300).contains(&first.status) || (400..500).contains(&first.status),
            "{} retried: {first:?}",
            sent.path
        );
        let before = event_count(&pool).await;
        let again = resend(&server.base, sent).await;
        assert_eq!(
            (again.status, again.replayed, &again.body),
            (first.status, true, &first.body),
            "{} retried twice",
            sent.path
        );
        assert_eq!(event_count(&pool).await, before, "a second retry appended");
    }

    let reservations = assert_budget_never_exceeded(&url, mandate, budget).await;
    let refused = journal
        .sent
        .iter()
        .filter(|s| s.path.ends_with("/checkout"))
        .filter(|s| {
            s.reply
                .as_ref()
                .is_some_and(|r| r.to_string().contains("over_period_budget"))
        })
        .count();
    assert!(
        reservations > 0 && refused > 0,
        "the checkouts did not race for the budget: {reservations} reserved, {refused} refused"
    );
    assert_projections_equal_their_rebuild(&server.base, &pool).await;
    pool.close().await;
    drop(server);
    drop_pg_database(&name).await;
}

/// A TCP proxy to PostgreSQL that can go away as the server would: while cut, its
/// connections are closed and its port is not listened on (connections are refused).
struct Cuttable {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Cuttable {
    async fn to(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let up = tokio::sync::watch::channel(true).0;
        let mut state = up.subscribe();
        tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let Some(open) = &listener else {
                    // Down: wait to be restored, then listen on the same port again.
                    if state.wait_for(|up| *up).await.is_err() {
                        return;
                    }
                    listener = TcpListener::bind(("127.0.0.1", port)).await.ok();
                    continue;
                };
                let mut connection_state = state.clone();
                tokio::select! {
                    accepted = open.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let target = target.clone();
                        tokio::spawn(async move {
                            let Ok(mut server) = TcpStream::connect(&target).await else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                _ = connection_state.wait_for(|up| !*up) => {}
                            }
                        });
                    }
                    _ = state.wait_for(|up| !*up) => listener = None,
                }
            }
        });
        Self { port, up }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

#[tokio::test]
async fn a_database_outage_under_load_fails_fast_and_the_server_recovers_by_itself() {
    let (url, name) = create_pg_database().await;
    let pool = PgPool::connect(&url).await.expect("a pool");
    let target = url::Url::parse(&url).expect("database url");
    let proxy = Cuttable::to(format!(
        "{}:{}",
        target.host_str().expect("host"),
        target.port().unwrap_or(5432)
    ))
    .await;
    let mut proxied = target.clone();
    proxied.set_port(Some(proxy.port)).expect("port");
    let data = tempfile::tempdir().expect("data directory");
    let server = Server::start(proxied.as_str(), data.path(), free_port(), &[]).await;
    let mandate = create_mandate(&server.base, "shopper-1", mandate_terms(None)).await;
    let load = Load::start(agents(&server.base, mandate));
    load.until_acknowledged(50, Duration::from_secs(120)).await;

    proxy.cut();
    let cut_at = load.journal.lock().await.sent.len();
    let shopper = Caller::new(&server.base, token("shopper-1", Role::Shopper, None));
    // Every request answers while the database is away: with 503, not a hang.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let refused = load.journal.lock().await.sent[cut_at..]
            .iter()
            .filter(|s| s.status == 503)
            .count();
        if refused >= 2 * AGENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests did not fail during the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down = shopper
        .send("/v1/carts", &json!({"currency": "USD"}), "outage-probe")
        .await;
    assert_eq!(down.status, 503, "{down:?}");
    assert_eq!(
        down.content_type.as_deref(),
        Some("application/problem+json")
    );
    assert!(down.retry_after.is_some(), "503 without Retry-After");
    let (ready, _) = shopper.get("/readyz").await;
    assert_eq!(ready, 503, "/readyz during the outage");

    proxy.restore();
    server.wait_ready(Duration::from_secs(120)).await;
    let resumed = load.journal.lock().await.acknowledged();
    let after = load
        .until_acknowledged(resumed + 50, Duration::from_secs(120))
        .await;
    assert!(after >= resumed + 50, "the server did not serve again");
    let (journal, _) = load.stop().await;
    let statuses = journal.by_status();
    assert!(
        statuses.keys().all(|s| (200..300).contains(s) || *s == 503),
        "answers other than 2xx and 503: {statuses:?}\n{}",
        server.log()
    );

    assert_acknowledged_commands_replay(&server.base, &journal, &pool).await;
    let ops = Caller::new(&server.base, token("ops-1", Role::Ops, None));
    until_settled(&ops, &pool).await;
    drop(server);
    pool.close().await;
    drop_pg_database(&name).await;
}
