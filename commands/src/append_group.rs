//! Group commit of the PostgreSQL appends that are one statement each.
//!
//! An append without a snapshot is one statement (its events, its commands' outcomes and
//! its request's claim: [`PG_APPEND`]), so one round trip and one commit. Most of what
//! PostgreSQL spends on such a statement is the statement's, not its rows': the round
//! trip, parsing and binding, starting the executor on three inserts, the commit and its
//! wait for the disk. So appends that wait together are written together, by a
//! [`Gather`](crate::gather): at most [`STATEMENTS_AT_ONCE`] statement runs at a time,
//! and it takes every append queued when it starts. An append made while a statement is
//! free goes at once, alone; under load, the ones that queued behind a statement share
//! the next, and PostgreSQL's work per append falls with every append that shares it.
//!
//! Nothing is weakened: every append of a statement commits, or none does, and each is
//! told its own outcome. When a statement fails on what one of its appends holds (a
//! stream moved on, a command already recorded, a request's key held), each of its
//! appends is made again alone, so that each gets the answer it would have had alone
//! (and the others commit). When the database cannot be reached, each gets that error.

use std::future::Future;
use std::sync::Arc;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::database::KeptConnections;
use crate::gather::{Gather, Statement};
use crate::request_claim::RequestClaim;
use crate::store::{AppendError, StoreError};

/// How many append statements may run at once. Fewer leave more appends to share each
/// statement; more let an append start sooner. One was measured best at 8 and 32
/// clients (docs/PERFORMANCE.md): while it runs, the appends made meanwhile gather for
/// the next, and the database's work goes to their rows rather than to statements.
const STATEMENTS_AT_ONCE: usize = 1;

/// At most this many events go in one statement: a bound on its size and its latency.
const EVENTS_PER_STATEMENT: usize = 512;

/// Every event of the appends, the idempotency record of each command that made them,
/// and the claims of the requests that made them (zero or one per append): one
/// statement, so one round trip and one commit. A claim is a plain insert: a key held
/// already fails the statement, and nothing is stored.
pub(crate) const PG_APPEND: &str = "
WITH appended AS (
    INSERT INTO events (event_id, aggregate_type, aggregate_id, sequence, event_type,
                        event_version, payload, metadata, recorded_at)
    SELECT e.event_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
           e.event_version, e.payload::jsonb, e.metadata::jsonb, e.recorded_at
      FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                  $7::text[], $8::text[], $9::timestamptz[]) WITH ORDINALITY
           AS e(event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload, metadata, recorded_at, n)
     ORDER BY e.n
    RETURNING position
), outcome AS (
    INSERT INTO command_outcomes (tenant, idempotency_key, request_digest, aggregate_type,
                                  aggregate_id, first_sequence, last_sequence, recorded_at)
    SELECT o.tenant, o.idempotency_key, o.request_digest, o.aggregate_type, o.aggregate_id,
           o.first_sequence, o.last_sequence, o.recorded_at
      FROM UNNEST($10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                  $15::bigint[], $16::bigint[], $17::timestamptz[])
           AS o(tenant, idempotency_key, request_digest, aggregate_type, aggregate_id,
                first_sequence, last_sequence, recorded_at)
), claim AS (
    INSERT INTO http_idempotency (tenant, idempotency_key, request_hash, state,
                                  lease_until_ms, created_at_ms, request, request_body)
    SELECT c.tenant, c.idempotency_key, c.request_hash, 'in_flight', c.lease_until_ms,
           c.created_at_ms, c.request, c.request_body
      FROM UNNEST($18::text[], $19::text[], $20::text[], $21::int8[], $22::int8[],
                  $23::text[], $24::bytea[])
           AS c(tenant, idempotency_key, request_hash, lease_until_ms, created_at_ms,
                request, request_body)
)
SELECT position FROM appended ORDER BY position";

/// One append's rows as [`PG_APPEND`] binds them, owned, so that the task running the
/// statement need not be the append's.
#[derive(Debug, Default)]
pub(crate) struct PgAppendRows {
    pub(crate) events: Vec<PgEventRow>,
    pub(crate) outcomes: Vec<PgOutcomeRow>,
    pub(crate) claim: Option<Arc<RequestClaim>>,
}

#[derive(Debug)]
pub(crate) struct PgEventRow {
    pub(crate) event_id: Uuid,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) sequence: i64,
    pub(crate) event_type: String,
    pub(crate) event_version: String,
    /// JSON text: PostgreSQL parses it into `jsonb` either way.
    pub(crate) payload: String,
    pub(crate) metadata: String,
    pub(crate) recorded_at: OffsetDateTime,
}

#[derive(Debug)]
pub(crate) struct PgOutcomeRow {
    pub(crate) tenant: String,
    pub(crate) idempotency_key: String,
    pub(crate) request_digest: String,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) first_sequence: i64,
    pub(crate) last_sequence: i64,
    pub(crate) recorded_at: OffsetDateTime,
}

/// Writes `appends` in one statement: the global positions of their events, ascending,
/// each append's in its order and after the one before it.
pub(crate) async fn pg_append<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    appends: &[&PgAppendRows],
) -> Result<Vec<i64>, AppendError> {
    let events = || appends.iter().flat_map(|append| &append.events);
    let outcomes = || appends.iter().flat_map(|append| &append.outcomes);
    let claims = || appends.iter().filter_map(|append| append.claim.as_deref());
    let strings = |field: fn(&PgEventRow) -> &str| events().map(field).collect::<Vec<_>>();
    let outcome_strings =
        |field: fn(&PgOutcomeRow) -> &str| outcomes().map(field).collect::<Vec<_>>();
    let claim_strings = |field: fn(&RequestClaim) -> &str| claims().map(field).collect::<Vec<_>>();
    let result = sqlx::query_scalar(PG_APPEND)
        .bind(events().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(strings(|e| &e.aggregate_type))
        .bind(strings(|e| &e.aggregate_id))
        .bind(events().map(|e| e.sequence).collect::<Vec<_>>())
        .bind(strings(|e| &e.event_type))
        .bind(strings(|e| &e.event_version))
        .bind(strings(|e| &e.payload))
        .bind(strings(|e| &e.metadata))
        .bind(events().map(|e| e.recorded_at).collect::<Vec<_>>())
        .bind(outcome_strings(|o| &o.tenant))
        .bind(outcome_strings(|o| &o.idempotency_key))
        .bind(outcome_strings(|o| &o.request_digest))
        .bind(outcome_strings(|o| &o.aggregate_type))
        .bind(outcome_strings(|o| &o.aggregate_id))
        .bind(outcomes().map(|o| o.first_sequence).collect::<Vec<_>>())
        .bind(outcomes().map(|o| o.last_sequence).collect::<Vec<_>>())
        .bind(outcomes().map(|o| o.recorded_at).collect::<Vec<_>>())
        .bind(claim_strings(|c| &c.tenant))
        .bind(claim_strings(|c| &c.key))
        .bind(claim_strings(|c| &c.request_hash))
        .bind(claims().map(|c| c.lease_until_ms).collect::<Vec<_>>())
        .bind(claims().map(|c| c.created_at_ms).collect::<Vec<_>>())
        .bind(claim_strings(|c| &c.request))
        .bind(
            claims()
                .map(|c| c.request_body.as_ref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(executor)
        .await;
    result.map_err(|error| match constraint_of(&error) {
        Some("events_pkey") => AppendError::Conflict,
        Some("command_outcomes_pkey") => AppendError::DuplicateCommand,
        Some("http_idempotency_pkey") => AppendError::RequestKeyTaken,
        _ => AppendError::Store(error.into()),
    })
}

fn constraint_of(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => db.constraint(),
        _ => None,
    }
}

/// The appends waiting for a statement, and the statements running.
pub(crate) type AppendGroup = Gather<AppendStatement>;

impl AppendGroup {
    /// Writes `rows` with whatever other appends wait beside them, and answers their
    /// events' positions.
    pub(crate) async fn append(
        self: &Arc<Self>,
        pool: &PgPool,
        kept: &Arc<KeptConnections>,
        rows: PgAppendRows,
    ) -> Result<Vec<i64>, AppendError> {
        let statement = || AppendStatement {
            pool: pool.clone(),
            kept: Arc::clone(kept),
        };
        // Unanswered only if the writer panicked or its runtime shut down, its
        // statement perhaps sent: whether it committed is unknown.
        self.submit(rows, statement)
            .await
            .unwrap_or(Err(AppendError::Store(StoreError::Unavailable(
                sqlx::Error::WorkerCrashed,
            ))))
    }
}

/// One statement of appends ([`PG_APPEND`]).
pub(crate) struct AppendStatement {
    pool: PgPool,
    kept: Arc<KeptConnections>,
}

impl Statement for AppendStatement {
    type Request = PgAppendRows;
    type Answer = Result<Vec<i64>, AppendError>;
    const AT_ONCE: usize = STATEMENTS_AT_ONCE;

    fn take(waiting: &[Waiting]) -> usize {
        let mut events = 0;
        waiting
            .iter()
            .take_while(|waiting| {
                events += waiting.request.events.len();
                events <= EVENTS_PER_STATEMENT
            })
            .count()
    }

    fn run(&self, taken: Vec<Waiting>) -> impl Future<Output = ()> + Send {
        write_statement(&self.pool, &self.kept, taken)
    }
}

type Waiting = crate::gather::Waiting<AppendStatement>;

/// Writes `taken` in one statement and answers each.
async fn write_statement(pool: &PgPool, kept: &Arc<KeptConnections>, taken: Vec<Waiting>) {
    metrics::counter!("shopagent_append_statements_total").increment(1);
    let mut connection = match kept.lend(pool).await {
        Ok(connection) => connection,
        Err(error) => {
            fail_all(taken, &StoreError::from(error));
            return;
        }
    };
    let rows = taken
        .iter()
        .map(|waiting| &waiting.request)
        .collect::<Vec<_>>();
    let written = pg_append(&mut *connection, &rows).await;
    match written {
        Ok(positions) => {
            connection.keep();
            let mut positions = positions.into_iter();
            for waiting in taken {
                let own = positions
                    .by_ref()
                    .take(waiting.request.events.len())
                    .collect();
                let _ = waiting.answer.send(Ok(own));
            }
        }
        Err(error) if taken.len() == 1 => {
            if ran_to_its_end(&error) {
                connection.keep();
            }
            if let Some(waiting) = taken.into_iter().next() {
                let _ = waiting.answer.send(Err(error));
            }
        }
        Err(AppendError::Store(error @ StoreError::Unavailable(_))) => fail_all(taken, &error),
        Err(_) => {
            // One of them failed the statement, and none of them is stored: each alone
            // gets its own answer, and the others are stored.
            let mut fit_to_keep = true;
            let mut taken = taken.into_iter();
            while let Some(waiting) = taken.next() {
                let written = pg_append(&mut *connection, &[&waiting.request]).await;
                fit_to_keep &= written.as_ref().err().is_none_or(ran_to_its_end);
                if let Err(AppendError::Store(lost @ StoreError::Unavailable(_))) = &written {
                    // The connection is gone: the rest cannot be sent on it.
                    fail_all(taken.by_ref(), lost);
                }
                let _ = waiting.answer.send(written);
            }
            if fit_to_keep {
                connection.keep();
            }
        }
    }
}

/// Whether the statement that failed with `error` ran to its end on a connection left
/// ready for the next.
fn ran_to_its_end(error: &AppendError) -> bool {
    matches!(
        error,
        AppendError::Conflict | AppendError::DuplicateCommand | AppendError::RequestKeyTaken
    )
}

/// Answers each of `appends` with `error`, which failed them all.
fn fail_all(appends: impl IntoIterator<Item = Waiting>, error: &StoreError) {
    for waiting in appends {
        let _ = waiting.answer.send(Err(AppendError::Store(error.again())));
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::database::Database;
    use crate::test_support::TestStore;

    fn rows(
        aggregate_id: &str,
        sequences: std::ops::RangeInclusive<i64>,
        payload: &str,
    ) -> PgAppendRows {
        let recorded_at = OffsetDateTime::now_utc();
        let events = sequences
            .clone()
            .map(|sequence| PgEventRow {
                event_id: Uuid::now_v7(),
                aggregate_type: "tally".to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                sequence,
                event_type: "Added".to_owned(),
                event_version: "1".to_owned(),
                payload: payload.to_owned(),
                metadata: "{}".to_owned(),
                recorded_at,
            })
            .collect();
        let outcomes = vec![PgOutcomeRow {
            tenant: "t1".to_owned(),
            idempotency_key: format!("{aggregate_id}-{}", sequences.start()),
            request_digest: "digest".to_owned(),
            aggregate_type: "tally".to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            first_sequence: *sequences.start(),
            last_sequence: *sequences.end(),
            recorded_at,
        }];
        PgAppendRows {
            events,
            outcomes,
            claim: None,
        }
    }

    fn claimed(mut rows: PgAppendRows, key: &str) -> PgAppendRows {
        rows.claim = Some(Arc::new(RequestClaim {
            tenant: "t1".to_owned(),
            key: key.to_owned(),
            request_hash: "hash".to_owned(),
            lease_until_ms: 1,
            created_at_ms: 1,
            request: "POST /v1/tallies".to_owned(),
            request_body: bytes::Bytes::from_static(b"{}"),
        }));
        rows
    }

    /// Writes `appends` as one statement's worth, and answers what each was told.
    async fn in_one_statement(
        pool: &PgPool,
        appends: Vec<PgAppendRows>,
    ) -> Vec<Result<Vec<i64>, AppendError>> {
        let (taken, answered): (Vec<_>, Vec<_>) = appends
            .into_iter()
            .map(|rows| {
                let (answer, answered) = oneshot::channel();
                (
                    Waiting {
                        request: rows,
                        answer,
                    },
                    answered,
                )
            })
            .unzip();
        write_statement(pool, &Arc::default(), taken).await;
        let mut answers = Vec::new();
        for answered in answered {
            answers.push(answered.await.expect("every append is answered"));
        }
        answers
    }

    async fn stored(pool: &PgPool, aggregate_id: &str) -> (Vec<i64>, i64, i64) {
        let positions = sqlx::query_scalar(
            "SELECT position FROM events WHERE aggregate_id = $1 ORDER BY sequence",
        )
        .bind(aggregate_id)
        .fetch_all(pool)
        .await
        .expect("read the stream");
        let outcomes =
            sqlx::query_scalar("SELECT count(*) FROM command_outcomes WHERE aggregate_id = $1")
                .bind(aggregate_id)
                .fetch_one(pool)
                .await
                .expect("count the outcomes");
        let claims =
            sqlx::query_scalar("SELECT count(*) FROM http_idempotency WHERE idempotency_key = $1")
                .bind(format!("key-{aggregate_id}"))
                .fetch_one(pool)
                .await
                .expect("count the claims");
        (positions, outcomes, claims)
    }

    fn pool(test: &TestStore) -> PgPool {
        let Database::Postgres(pool) = test.store.database() else {
            unreachable!("a PostgreSQL test store");
        };
        pool.clone()
    }

    #[tokio::test]
    async fn appends_sharing_a_statement_each_get_their_own_positions_in_order() {
        let test = TestStore::postgres().await;
        let pool = pool(&test);

        let answers = in_one_statement(
            &pool,
            vec![
                rows("a", 1..=2, "{}"),
                claimed(rows("b", 1..=1, "{}"), "key-b"),
                rows("c", 1..=3, "{}"),
            ],
        )
        .await;

        let mut told = Vec::new();
        for (answer, id) in answers.into_iter().zip(["a", "b", "c"]) {
            let positions = answer.expect("stored");
            let (stored_positions, outcomes, _) = stored(&pool, id).await;
            assert_eq!(positions, stored_positions, "stream {id}");
            assert_eq!(outcomes, 1);
            told.extend(positions);
        }
        assert_eq!(told.len(), 6);
        assert!(
            told.is_sorted(),
            "one append's events follow the one's before it"
        );
        assert_eq!(
            stored(&pool, "b").await.2,
            1,
            "the claim is stored with its append"
        );
        test.cleanup().await;
    }

    #[tokio::test]
    async fn an_append_that_fails_a_shared_statement_fails_alone() {
        let test = TestStore::postgres().await;
        let pool = pool(&test);
        let first = in_one_statement(&pool, vec![rows("moved", 1..=1, "{}")]).await;
        assert!(first[0].is_ok());

        let answers = in_one_statement(
            &pool,
            vec![
                claimed(rows("a", 1..=1, "{}"), "key-a"),
                // The stream moved on: its sequence 1 is stored already.
                rows("moved", 1..=1, "{}"),
                // PostgreSQL's jsonb refuses a NUL character.
                rows("refused", 1..=1, r#"{"text": "\u0000"}"#),
                claimed(rows("b", 1..=1, "{}"), "key-b"),
            ],
        )
        .await;

        assert!(
            matches!(answers[1], Err(AppendError::Conflict)),
            "{:?}",
            answers[1]
        );
        assert!(
            matches!(answers[2], Err(AppendError::Store(StoreError::Database(_)))),
            "{:?}",
            answers[2]
        );
        for (answer, id) in [(&answers[0], "a"), (&answers[3], "b")] {
            let positions = answer.as_ref().expect("the others are stored");
            assert_eq!(
                stored(&pool, id).await,
                (positions.clone(), 1, 1),
                "stream {id}"
            );
        }
        assert_eq!(
            stored(&pool, "moved").await.0.len(),
            1,
            "nothing more on the moved stream"
        );
        assert_eq!(stored(&pool, "refused").await, (vec![], 0, 0));
        test.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_append_of_a_crowd_is_stored_once_and_told_its_positions() {
        let test = TestStore::postgres().await;
        let pool = pool(&test);
        let group = Arc::new(AppendGroup::default());
        let kept = Arc::new(KeptConnections::default());

        let appends = (0..64).map(|n| {
            let (group, pool, kept) = (Arc::clone(&group), pool.clone(), Arc::clone(&kept));
            tokio::spawn(async move {
                let id = format!("crowd-{n}");
                let sequences = 1..=(n % 3 + 1);
                let positions = group.append(&pool, &kept, rows(&id, sequences, "{}")).await;
                (id, positions)
            })
        });
        let answers = futures::future::join_all(appends).await;

        for answer in answers {
            let (id, positions) = answer.expect("the append's task ran");
            let (stored_positions, outcomes, _) = stored(&pool, &id).await;
            assert_eq!(positions.expect("stored"), stored_positions, "stream {id}");
            assert_eq!(outcomes, 1);
        }
        // Each writer counts itself out just after its last answer.
        let mut waited = 0;
        while group.statements_running() != 0 && waited < 500 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waited += 1;
        }
        assert_eq!(
            group.statements_running(),
            0,
            "no statement is left counted"
        );
        test.cleanup().await;
    }
}
