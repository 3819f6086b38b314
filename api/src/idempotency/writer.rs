//! The idempotency records' writes, gathered. Every POST writes its record twice: a
//! claim on its key when it starts, its answer when it ends. Each was a transaction of
//! its own; now one task writes them all, and the claims and answers that arrive while
//! one batch is being written go together into the next: one statement, one
//! transaction. A lone request waits for nothing (its batch is written as soon as it
//! arrives); under load, a batch carries as many writes as requests came meanwhile.
//!
//! A caller still waits for its own write: a request runs only once its claim is
//! committed, and its answer is sent only once stored, so a retry sent after an answer
//! always replays it, whichever process it reaches.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use shopagent_commands::Database;
use tokio::sync::{mpsc, oneshot};

/// The row a request writes when it starts: its key, taken while it runs.
#[derive(Debug)]
pub(super) struct Claim {
    pub tenant: String,
    pub key: String,
    pub request_hash: String,
    pub lease_until_ms: i64,
    pub created_at_ms: i64,
    /// What is kept of the request to run it again ([`super::KeptRequest`], JSON).
    pub request: String,
    pub request_body: Bytes,
}

/// A request's answer, stored for its retries.
#[derive(Debug)]
pub(super) struct Answer {
    pub tenant: String,
    pub key: String,
    pub status: i32,
    /// The stored headers, JSON pairs.
    pub headers: String,
    pub body: String,
}

/// Why a write failed; shared by every write of a batch the database could not take.
pub type WriteError = Arc<sqlx::Error>;

enum Write {
    Claim(Claim, oneshot::Sender<Result<bool, WriteError>>),
    Answer(Answer, oneshot::Sender<Result<(), WriteError>>),
}

/// Most writes in one statement: bounds its size (a kept request body is up to
/// 256 KiB).
const MOST_PER_BATCH: usize = 128;

/// Hands writes to the task that batches them. Cheap to clone; the task ends when the
/// last clone is dropped, once it has written what it was given.
#[derive(Debug, Clone)]
pub struct RecordWriter {
    writes: mpsc::UnboundedSender<Write>,
}

impl RecordWriter {
    /// Starts the writing task on `db`. Must be called within a Tokio runtime.
    pub fn start(db: Database) -> Self {
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(db, queue));
        Self { writes }
    }

    /// Writes `claim`; true when its row was inserted (the key was free), false when a
    /// row for the key was already there.
    pub(super) async fn claim(&self, claim: Claim) -> Result<bool, WriteError> {
        let (reply, written) = oneshot::channel();
        self.writes
            .send(Write::Claim(claim, reply))
            .map_err(|_| stopped())?;
        written.await.map_err(|_| stopped())?
    }

    /// Stores `answer` on its key's row, which stops being in flight.
    pub(super) async fn answer(&self, answer: Answer) -> Result<(), WriteError> {
        let (reply, written) = oneshot::channel();
        self.writes
            .send(Write::Answer(answer, reply))
            .map_err(|_| stopped())?;
        written.await.map_err(|_| stopped())?
    }
}

fn stopped() -> WriteError {
    Arc::new(sqlx::Error::PoolClosed)
}

async fn write_batches(db: Database, mut queue: mpsc::UnboundedReceiver<Write>) {
    let mut batch = Vec::with_capacity(MOST_PER_BATCH);
    while queue.recv_many(&mut batch, MOST_PER_BATCH).await > 0 {
        write(&db, std::mem::take(&mut batch)).await;
    }
}

/// Writes `batch` and tells each writer how its write went. When the database refuses
/// the batch's statement, each write is tried again alone, so that a write it refuses
/// fails only its own request; when it cannot be reached, every write fails at once.
async fn write(db: &Database, batch: Vec<Write>) {
    let (mut claims, mut answers) = (Vec::new(), Vec::new());
    for write in batch {
        match write {
            Write::Claim(claim, reply) => claims.push((claim, reply)),
            Write::Answer(answer, reply) => answers.push((answer, reply)),
        }
    }
    // Two claims on one key in one batch: only the first is written; the second finds
    // the first's row, as it would have in the next batch.
    let mut keys = HashSet::new();
    let (firsts, repeats): (Vec<_>, Vec<_>) = claims
        .into_iter()
        .partition(|(claim, _)| keys.insert((claim.tenant.clone(), claim.key.clone())));

    let claim_rows: Vec<&Claim> = firsts.iter().map(|(claim, _)| claim).collect();
    let answer_rows: Vec<&Answer> = answers.iter().map(|(answer, _)| answer).collect();
    let writes = claim_rows.len() + answer_rows.len();
    match statement(db, &claim_rows, &answer_rows).await {
        Ok(inserted) => {
            for (claim, reply) in firsts {
                let _ = reply.send(Ok(inserted.contains(&(claim.tenant, claim.key))));
            }
            for (_, reply) in answers {
                let _ = reply.send(Ok(()));
            }
        }
        Err(sqlx::Error::Database(_)) if writes > 1 => {
            for (claim, reply) in firsts {
                let written = statement(db, &[&claim], &[]).await;
                let _ = reply.send(
                    written
                        .map(|inserted| !inserted.is_empty())
                        .map_err(Arc::new),
                );
            }
            for (answer, reply) in answers {
                let written = statement(db, &[], &[&answer]).await;
                let _ = reply.send(written.map(drop).map_err(Arc::new));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            let claims = firsts.into_iter().chain(repeats).map(|(_, reply)| reply);
            for reply in claims {
                let _ = reply.send(Err(error.clone()));
            }
            for (_, reply) in answers {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
    }
    for (_, reply) in repeats {
        let _ = reply.send(Ok(false));
    }
}

/// Writes `answers` and `claims` in one transaction; answers the (tenant, key) of
/// the claims inserted.
async fn statement(
    db: &Database,
    claims: &[&Claim],
    answers: &[&Answer],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    match db {
        Database::Postgres(pool) => {
            // One round trip: the answers' update and the claims' insert are one
            // statement, an implicit transaction.
            const SQL: &str = "WITH answered AS (
                    UPDATE http_idempotency AS r
                       SET state = 'done', status = a.status, headers = a.headers,
                           body = a.body, request = NULL, request_body = NULL
                      FROM UNNEST($8::text[], $9::text[], $10::int4[], $11::text[], $12::text[])
                           AS a(tenant, idempotency_key, status, headers, body)
                     WHERE r.tenant = a.tenant AND r.idempotency_key = a.idempotency_key
                )
                INSERT INTO http_idempotency (tenant, idempotency_key, request_hash, state,
                    lease_until_ms, created_at_ms, request, request_body)
                SELECT tenant, idempotency_key, request_hash, 'in_flight', lease_until_ms,
                       created_at_ms, request, request_body
                  FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[],
                              $6::text[], $7::bytea[])
                       AS c(tenant, idempotency_key, request_hash, lease_until_ms,
                            created_at_ms, request, request_body)
                ON CONFLICT (tenant, idempotency_key) DO NOTHING
                RETURNING tenant, idempotency_key";
            // Planned for each batch, with its arrays' lengths known: a plan made once for
            // any length (a prepared statement's generic plan) joined the answers to the
            // whole table by a scan of it, growing with every request ever answered.
            let rows: Vec<(String, String)> = sqlx::query_as(SQL)
                .persistent(false)
                .bind(column(claims, |c| c.tenant.as_str()))
                .bind(column(claims, |c| c.key.as_str()))
                .bind(column(claims, |c| c.request_hash.as_str()))
                .bind(column(claims, |c| c.lease_until_ms))
                .bind(column(claims, |c| c.created_at_ms))
                .bind(column(claims, |c| c.request.as_str()))
                .bind(column(claims, |c| c.request_body.as_ref()))
                .bind(column(answers, |a| a.tenant.as_str()))
                .bind(column(answers, |a| a.key.as_str()))
                .bind(column(answers, |a| a.status))
                .bind(column(answers, |a| a.headers.as_str()))
                .bind(column(answers, |a| a.body.as_str()))
                .fetch_all(pool)
                .await?;
            Ok(rows.into_iter().collect())
        }
        Database::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            for answer in answers {
                sqlx::query(ANSWER_SQLITE)
                    .bind(&answer.tenant)
                    .bind(&answer.key)
                    .bind(answer.status)
                    .bind(&answer.headers)
                    .bind(&answer.body)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut inserted = HashSet::new();
            for claim in claims {
                let done = sqlx::query(CLAIM_SQLITE)
                    .bind(&claim.tenant)
                    .bind(&claim.key)
                    .bind(&claim.request_hash)
                    .bind(claim.lease_until_ms)
                    .bind(claim.created_at_ms)
                    .bind(&claim.request)
                    .bind(claim.request_body.as_ref())
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 1 {
                    inserted.insert((claim.tenant.clone(), claim.key.clone()));
                }
            }
            tx.commit().await?;
            Ok(inserted)
        }
    }
}

/// One field of every row, as the array bound for its `UNNEST` column.
fn column<'a, T, V>(rows: &[&'a T], field: impl Fn(&'a T) -> V) -> Vec<V> {
    rows.iter().map(|row| field(row)).collect()
}

const ANSWER_SQLITE: &str = "UPDATE http_idempotency SET state = 'done', status = $3, headers = $4,
         body = $5, request = NULL, request_body = NULL
     WHERE tenant = $1 AND idempotency_key = $2";
const CLAIM_SQLITE: &str = "INSERT INTO http_idempotency (tenant, idempotency_key, request_hash,
         state, lease_until_ms, created_at_ms, request, request_body)
     VALUES ($1, $2, $3, 'in_flight', $4, $5, $6, $7)
     ON CONFLICT (tenant, idempotency_key) DO NOTHING";

#[cfg(test)]
mod tests {
    use shopagent_commands::test_support::TestStore;

    use super::*;

    fn claim(key: &str) -> Claim {
        Claim {
            tenant: "acme".into(),
            key: key.into(),
            request_hash: "hash".into(),
            lease_until_ms: 2,
            created_at_ms: 1,
            request: "{}".into(),
            request_body: Bytes::from_static(b"body"),
        }
    }

    fn answer(key: &str, body: &str) -> Answer {
        Answer {
            tenant: "acme".into(),
            key: key.into(),
            status: 201,
            headers: "[]".into(),
            body: body.into(),
        }
    }

    async fn stored(db: &Database, key: &str) -> Option<(String, Option<String>)> {
        const SQL: &str = "SELECT state, body FROM http_idempotency WHERE tenant = 'acme' AND idempotency_key = $1";
        shopagent_commands::on_pool!(db, pool => sqlx::query_as(SQL).bind(key).fetch_optional(pool).await)
            .expect("read")
    }

    /// Many requests at once, four to a key: each key goes to exactly one of them,
    /// whether they share a batch or not.
    async fn each_key_is_claimed_by_exactly_one_of_its_requests(test: &TestStore) {
        let db = test.store.derived().clone();
        let records = RecordWriter::start(db.clone());
        let claims = (0..40).map(|i| {
            let records = records.clone();
            tokio::spawn(async move {
                let key = format!("key-{}", i % 10);
                (
                    key.clone(),
                    records.claim(claim(&key)).await.expect("written"),
                )
            })
        });
        let mut won = std::collections::BTreeMap::<String, usize>::new();
        for claimed in claims {
            let (key, inserted) = claimed.await.expect("task");
            *won.entry(key).or_default() += usize::from(inserted);
        }
        assert_eq!(won.len(), 10);
        assert!(won.values().all(|&n| n == 1), "{won:?}");
        for i in 0..10 {
            let row = stored(&db, &format!("key-{i}")).await;
            assert_eq!(row.map(|(state, _)| state).as_deref(), Some("in_flight"));
        }
    }

    /// Answers and claims sent together each land on their own row.
    async fn answers_written_with_claims_land_on_their_own_keys(test: &TestStore) {
        let db = test.store.derived().clone();
        let records = RecordWriter::start(db.clone());
        for i in 0..20 {
            assert!(
                records
                    .claim(claim(&format!("old-{i}")))
                    .await
                    .expect("claimed")
            );
        }
        let writes = (0..20).map(|i| {
            let records = records.clone();
            tokio::spawn(async move {
                let answered = records.answer(answer(&format!("old-{i}"), &format!("answer {i}")));
                let claimed = records.claim(claim(&format!("new-{i}")));
                let (answered, claimed) = tokio::join!(answered, claimed);
                answered.expect("answered");
                assert!(claimed.expect("claimed"));
            })
        });
        for write in writes {
            write.await.expect("task");
        }
        for i in 0..20 {
            let old = stored(&db, &format!("old-{i}")).await;
            let answer = format!("answer {i}");
            assert_eq!(old, Some(("done".into(), Some(answer))));
            let new = stored(&db, &format!("new-{i}")).await;
            assert_eq!(new, Some(("in_flight".into(), None)));
        }
    }

    shopagent_commands::on_both_backends!(
        each_key_is_claimed_by_exactly_one_of_its_requests,
        answers_written_with_claims_land_on_their_own_keys,
    );

    /// PostgreSQL refuses a NUL character in text: that answer's write fails, and the
    /// others sent with it are stored.
    #[tokio::test]
    async fn a_write_the_database_refuses_fails_only_its_own_request() {
        let test = TestStore::postgres().await;
        let db = test.store.derived().clone();
        let records = RecordWriter::start(db.clone());
        for key in ["good-1", "bad", "good-2"] {
            assert!(records.claim(claim(key)).await.expect("claimed"));
        }
        let (first, refused, second, claimed) = tokio::join!(
            records.answer(answer("good-1", "one")),
            records.answer(answer("bad", "nul \0 inside")),
            records.answer(answer("good-2", "two")),
            records.claim(claim("good-3")),
        );
        let refused = refused.as_ref().map_err(|error| error.as_ref());
        assert!(
            matches!(refused, Err(sqlx::Error::Database(_))),
            "{refused:?}"
        );
        first.expect("stored");
        second.expect("stored");
        assert!(claimed.expect("claimed"));
        assert_eq!(
            stored(&db, "good-1").await,
            Some(("done".into(), Some("one".into())))
        );
        assert_eq!(
            stored(&db, "good-2").await,
            Some(("done".into(), Some("two".into())))
        );
        assert_eq!(stored(&db, "bad").await, Some(("in_flight".into(), None)));
        test.cleanup().await;
    }
}
