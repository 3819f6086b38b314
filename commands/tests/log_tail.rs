//! A reader tailing the log while many writers append, some of them committing late,
//! delivers every committed event exactly once, in order, and skips none; so do readers
//! sharing pages of the log's tail (`Store::read_log_tail`), as the projections and
//! processes of one instance do.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Tally, TallyCommand, metadata};
use shopagent_commands::test_support::TestStore;
use shopagent_commands::{CommandBus, Database, LogCursor, Store, StoredEvent};
use uuid::Uuid;

const FAST_WRITERS: usize = 6;
const SLOW_WRITERS: usize = 4;
const SLOW_HOLD: Duration = Duration::from_millis(300);
const SHARING_READERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_reader_never_skips_a_late_commit() {
    let test = TestStore::postgres().await;
    let report = tail_under_late_commits(&test.store).await;
    // The control reader, which trusts position order, must have been fooled: otherwise
    // this test did not create the hazard it claims to guard against.
    assert!(
        report.naive_missed > 0,
        "no late commit was ever skipped by a position-order reader; the scenario is too weak"
    );
    assert!(
        report.position_inversions > 0,
        "commit order differed from position order"
    );
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_reader_never_skips_a_late_commit() {
    let test = TestStore::sqlite().await;
    tail_under_late_commits(&test.store).await;
    test.cleanup().await;
}

struct Report {
    naive_missed: usize,
    position_inversions: usize,
}

async fn tail_under_late_commits(store: &Store) -> Report {
    let stop = Arc::new(AtomicBool::new(false));
    let bus = Arc::new(CommandBus::<Tally>::new(store.clone()));

    let reader = tokio::spawn(tail(store.clone(), stop.clone()));
    let sharing: Vec<_> = (0..SHARING_READERS)
        .map(|_| tokio::spawn(shared_tail(store.clone(), stop.clone())))
        .collect();
    let naive = tokio::spawn(naive_tail(store.database().clone(), stop.clone()));

    let fast: Vec<_> = (0..FAST_WRITERS)
        .map(|_| {
            let (bus, stop) = (bus.clone(), stop.clone());
            tokio::spawn(async move {
                let id = Uuid::now_v7().to_string();
                bus.execute(&id, TallyCommand::Open, metadata())
                    .await
                    .expect("open");
                let mut appended = 1;
                while !stop.load(Ordering::Relaxed) {
                    bus.execute(&id, TallyCommand::Add(1), metadata())
                        .await
                        .expect("add");
                    appended += 1;
                }
                appended
            })
        })
        .collect();

    // Let the fast writers get going, then hold transactions open across their commits.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let slow: Vec<_> = (0..SLOW_WRITERS)
        .map(|n| {
            let db = store.database().clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(60 * n as u64)).await;
                append_late(&db).await;
            })
        })
        .collect();
    for writer in slow {
        writer.await.expect("slow writer");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    let mut expected = SLOW_WRITERS;
    for writer in fast {
        expected += writer.await.expect("fast writer");
    }

    let delivered = reader.await.expect("reader");
    let naive_delivered = naive.await.expect("naive reader");

    let ids: HashSet<Uuid> = delivered.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), delivered.len(), "no event delivered twice");
    assert_eq!(delivered.len(), expected, "every committed event delivered");
    assert!(
        delivered.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "cursor order"
    );
    let stored: HashSet<Uuid> = all_event_ids(store.database()).await;
    assert_eq!(ids, stored, "the reader saw exactly what is stored");
    let order: Vec<Uuid> = delivered.iter().map(|e| e.event_id).collect();
    for reader in sharing {
        let shared: Vec<Uuid> = reader
            .await
            .expect("sharing reader")
            .iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(
            shared, order,
            "a reader sharing pages delivered every event once, in the same order"
        );
    }

    let position_inversions = delivered
        .windows(2)
        .filter(|w| w[0].position() > w[1].position())
        .count();
    Report {
        naive_missed: if naive_delivered.is_empty() {
            0
        } else {
            expected - naive_delivered.len()
        },
        position_inversions,
    }
}

/// Tails the log with the gap-safe reader until `stop` is set and the log is drained.
async fn tail(store: Store, stop: Arc<AtomicBool>) -> Vec<StoredEvent> {
    let mut delivered: Vec<StoredEvent> = Vec::new();
    let mut cursor = LogCursor::START;
    let mut idle = Idle::new(stop);
    while idle.keep_going() {
        let page = store.read_log(cursor, 64).await.expect("read");
        match page.last() {
            Some(last) => {
                cursor = last.cursor;
                delivered.extend(page.iter().cloned());
            }
            None => idle.wait().await,
        }
    }
    delivered
}

/// Tails the log as a projection or process runner does, sharing pages with the other
/// readers of this store: after an empty read it waits to be told of an append (or a
/// moment, as the late commits here are not told), and then needs every event
/// committed before it was woken.
async fn shared_tail(store: Store, stop: Arc<AtomicBool>) -> Vec<StoredEvent> {
    let mut delivered: Vec<StoredEvent> = Vec::new();
    let mut cursor = LogCursor::START;
    let mut appended = store.subscribe_appends();
    let mut woken = Instant::now();
    let mut idle = Idle::new(stop);
    while idle.keep_going() {
        let page = store
            .read_log_tail(cursor, 64, Some(woken))
            .await
            .expect("read");
        match page.last() {
            Some(last) => {
                cursor = last.cursor;
                delivered.extend(page.iter().cloned());
            }
            None => {
                let _ = tokio::time::timeout(Duration::from_millis(5), appended.changed()).await;
                woken = Instant::now();
                idle.wait().await;
            }
        }
    }
    delivered
}

/// The classic bug, as a control: trusts position order and remembers only the highest
/// position seen. Returns how many events it delivered. Empty on SQLite, where it is
/// not needed: there position order is commit order.
async fn naive_tail(db: Database, stop: Arc<AtomicBool>) -> Vec<Uuid> {
    let Database::Postgres(pool) = db else {
        return Vec::new();
    };
    let mut delivered = Vec::new();
    let mut highest = 0;
    let mut idle = Idle::new(stop);
    while idle.keep_going() {
        let page: Vec<(i64, Uuid)> = sqlx::query_as(
            "SELECT position, event_id FROM events WHERE position > $1 ORDER BY position LIMIT 64",
        )
        .bind(highest)
        .fetch_all(&pool)
        .await
        .expect("naive read");
        match page.last() {
            Some(&(position, _)) => {
                highest = position;
                delivered.extend(page.into_iter().map(|(_, id)| id));
            }
            None => idle.wait().await,
        }
    }
    delivered
}

/// When a tailing reader may stop: the writers are done and the log stayed drained for
/// a while, or a generous deadline passed.
struct Idle {
    stop: Arc<AtomicBool>,
    deadline: Instant,
    drained_after_stop: u32,
}

impl Idle {
    fn new(stop: Arc<AtomicBool>) -> Self {
        Self {
            stop,
            deadline: Instant::now() + Duration::from_secs(60),
            drained_after_stop: 0,
        }
    }

    fn keep_going(&self) -> bool {
        // Twenty empty reads after the writers stopped: every transaction, here and
        // elsewhere in the cluster, has had time to end.
        self.drained_after_stop <= 20 && Instant::now() < self.deadline
    }

    async fn wait(&mut self) {
        if self.stop.load(Ordering::Relaxed) {
            self.drained_after_stop += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Appends one event in a transaction that takes its transaction id early, takes its
/// position while other writers are committing, and commits last.
async fn append_late(db: &Database) {
    let metadata = serde_json::to_string(&metadata().to_map()).expect("metadata");
    let id = format!("late-{}", Uuid::now_v7());
    match db {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await.expect("begin");
            sqlx::query("SELECT pg_current_xact_id()")
                .execute(&mut *tx)
                .await
                .expect("xid");
            tokio::time::sleep(SLOW_HOLD / 2).await;
            sqlx::query(
                "INSERT INTO events (event_id, aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, recorded_at)
                 VALUES ($1, 'tally', $2, 1, 'TallyOpened', '1', '\"Opened\"', $3::jsonb, now())",
            )
            .bind(Uuid::now_v7())
            .bind(&id)
            .bind(&metadata)
            .execute(&mut *tx)
            .await
            .expect("insert");
            tokio::time::sleep(SLOW_HOLD).await;
            tx.commit().await.expect("commit");
        }
        Database::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
            sqlx::query(
                "INSERT INTO events (event_id, aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, recorded_at)
                 VALUES ($1, 'tally', $2, 1, 'TallyOpened', '1', '\"Opened\"', $3, '2026-01-01T00:00:00Z')",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(&id)
            .bind(&metadata)
            .execute(&mut *tx)
            .await
            .expect("insert");
            tokio::time::sleep(SLOW_HOLD).await;
            tx.commit().await.expect("commit");
        }
    }
}

async fn all_event_ids(db: &Database) -> HashSet<Uuid> {
    match db {
        Database::Postgres(pool) => sqlx::query_scalar::<_, Uuid>("SELECT event_id FROM events")
            .fetch_all(pool)
            .await
            .expect("ids")
            .into_iter()
            .collect(),
        Database::Sqlite(pool) => sqlx::query_scalar::<_, String>("SELECT event_id FROM events")
            .fetch_all(pool)
            .await
            .expect("ids")
            .into_iter()
            .map(|id| Uuid::parse_str(&id).expect("uuid"))
            .collect(),
    }
}
