//! The idempotency records' writes, gathered. A POST writes its record twice: a claim
//! on its key when it starts, its answer when it ends. (A request of a route whose only
//! effects are its commands has its claim written by its first append instead, see
//! `commands::request_claim`; only its answer comes here.) Each was a transaction of
//! its own; now one task writes them all, and the claims and answers that arrive while
//! one batch is being written go together into the next: one statement, one
//! transaction.
//!
//! A request waits for its claim: it runs only once its key is taken, whichever process
//! a retry reaches. Its answer is written behind the response: the request does not
//! wait for it, and answers wait for the next claim to share its batch (at most
//! [`ANSWERS_WAIT`]), so that a caller's next request carries its last answer. Until
//! an answer is written, a retry reaching this process is answered from memory
//! ([`RecordWriter::unwritten`]); one reaching another process finds the key still
//! held and is told to retry shortly. A crash before it is written loses nothing the
//! caller was promised: the request's commands are committed, and a retry (or the
//! server itself, once the lease ran out) runs the request again, its commands
//! replaying their recorded outcomes. The answer itself was never flushed to disk
//! before it was sent either (records are written with `synchronous_commit` off).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shopagent_commands::{Database, KeptConnections, RequestClaim as Claim};
use tokio::sync::{mpsc, oneshot};

/// A request's answer, stored for its retries.
#[derive(Debug)]
pub(super) struct Answer {
    pub tenant: String,
    pub key: String,
    /// The answered request's [`super::request_hash`]: a retry is answered from memory
    /// only when it asks the same.
    pub request_hash: String,
    pub status: i32,
    /// The stored headers, JSON pairs.
    pub headers: String,
    pub body: String,
}

/// Why a write failed; shared by every write of a batch the database could not take.
pub type WriteError = Arc<sqlx::Error>;

/// How one write went.
type Written<T> = Result<T, WriteError>;

enum Write {
    Claim(Claim, oneshot::Sender<Written<bool>>),
    Answer(Arc<Answer>, oneshot::Sender<Written<()>>),
    /// Written once everything sent before it is.
    Flush(oneshot::Sender<()>),
}

impl Write {
    /// A write its sender waits for: its batch is written without waiting for more.
    fn is_waited_for(&self) -> bool {
        !matches!(self, Write::Answer(..))
    }
}

/// Most writes in one statement: bounds its size (a kept request body is up to
/// 256 KiB).
const MOST_PER_BATCH: usize = 128;

/// Longest an answer waits for a claim to share its batch with. Nobody waits for an
/// answer, so this is only how long a retry reaching another process may find the key
/// still held (it is told to retry after a second).
pub(super) const ANSWERS_WAIT: Duration = Duration::from_millis(10);

/// Answers sent to the writer and not yet written, by (tenant, key).
type Unwritten = Arc<Mutex<HashMap<(String, String), Arc<Answer>>>>;

/// Hands writes to the task that batches them. Cheap to clone; the task ends when the
/// last clone is dropped, once it has written what it was given.
#[derive(Debug, Clone)]
pub struct RecordWriter {
    writes: mpsc::UnboundedSender<Write>,
    unwritten: Unwritten,
}

impl RecordWriter {
    /// Starts the writing task on `db`. Must be called within a Tokio runtime.
    pub fn start(db: Database) -> Self {
        let (writes, queue) = mpsc::unbounded_channel();
        let unwritten = Unwritten::default();
        tokio::spawn(write_batches(db, queue, unwritten.clone()));
        Self { writes, unwritten }
    }

    /// Writes `claim`; true when its row was inserted (the key was free), false when a
    /// row for the key was already there.
    pub(super) async fn claim(&self, claim: Claim) -> Written<bool> {
        let (reply, written) = oneshot::channel();
        self.writes
            .send(Write::Claim(claim, reply))
            .map_err(|_| stopped())?;
        written.await.map_err(|_| stopped())?
    }

    /// Stores `answer` on its key's row, which stops being in flight. The answer is
    /// handed over at once (and kept in memory until written); the future returned
    /// tells how its write went, and need not be awaited: a write nobody awaits that
    /// fails is logged.
    pub(super) fn answer(&self, answer: Answer) -> impl Future<Output = Written<()>> + use<> {
        let answer = Arc::new(answer);
        let id = (answer.tenant.clone(), answer.key.clone());
        lock(&self.unwritten).insert(id.clone(), answer.clone());
        let (reply, written) = oneshot::channel();
        if self.writes.send(Write::Answer(answer, reply)).is_err() {
            lock(&self.unwritten).remove(&id);
        }
        async move { written.await.map_err(|_| stopped())? }
    }

    /// The answer on (tenant, key) handed to the writer and not yet written.
    pub(super) fn unwritten(&self, tenant: &str, key: &str) -> Option<Arc<Answer>> {
        lock(&self.unwritten)
            .get(&(tenant.to_owned(), key.to_owned()))
            .cloned()
    }

    /// Returns once everything handed over before the call is written (or failed).
    pub async fn flush(&self) {
        let (reply, flushed) = oneshot::channel();
        if self.writes.send(Write::Flush(reply)).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// The map of unwritten answers. It is only ever held for a map operation, so a panic
/// cannot leave it half changed: a poisoned lock is taken as is.
fn lock(
    unwritten: &Unwritten,
) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Answer>>> {
    unwritten.lock().unwrap_or_else(PoisonError::into_inner)
}

fn stopped() -> WriteError {
    Arc::new(sqlx::Error::PoolClosed)
}

async fn write_batches(
    db: Database,
    mut queue: mpsc::UnboundedReceiver<Write>,
    unwritten: Unwritten,
) {
    let target = Target {
        db,
        kept: Arc::default(),
    };
    let mut batch = Vec::with_capacity(MOST_PER_BATCH);
    while queue.recv_many(&mut batch, MOST_PER_BATCH).await > 0 {
        gather_answers(&mut queue, &mut batch).await;
        write(&target, &unwritten, std::mem::take(&mut batch)).await;
    }
}

/// Where batches are written: the database and, on PostgreSQL, the connection kept from
/// one batch to the next ([`KeptConnections`]: given back once quiet, or after a
/// statement on it failed).
struct Target {
    db: Database,
    kept: Arc<KeptConnections>,
}

/// A batch of answers alone waits, up to [`ANSWERS_WAIT`], for a write someone waits
/// for (a claim, a flush) to go with, or until it is full.
async fn gather_answers(queue: &mut mpsc::UnboundedReceiver<Write>, batch: &mut Vec<Write>) {
    let deadline = tokio::time::Instant::now() + ANSWERS_WAIT;
    let mut seen = 0;
    while batch.len() < MOST_PER_BATCH {
        if batch[seen..].iter().any(Write::is_waited_for) {
            return;
        }
        seen = batch.len();
        tokio::select! {
            received = queue.recv_many(batch, MOST_PER_BATCH - seen) => if received == 0 {
                return;
            },
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Writes `batch` and tells each writer how its write went. When the database refuses
/// the batch's statement, each write is tried again alone, so that a write it refuses
/// fails only its own request; when it cannot be reached, every write fails at once.
async fn write(target: &Target, unwritten: &Unwritten, batch: Vec<Write>) {
    let (mut claims, mut answers, mut flushes) = (Vec::new(), Vec::new(), Vec::new());
    for write in batch {
        match write {
            Write::Claim(claim, reply) => claims.push((claim, reply)),
            Write::Answer(answer, reply) => answers.push((answer, reply)),
            Write::Flush(reply) => flushes.push(reply),
        }
    }
    // Two claims on one key in one batch: only the first is written; the second finds
    // the first's row, as it would have in the next batch.
    let mut keys = HashSet::new();
    let (firsts, repeats): (Vec<_>, Vec<_>) = claims
        .into_iter()
        .partition(|(claim, _)| keys.insert((claim.tenant.clone(), claim.key.clone())));

    let claim_rows: Vec<&Claim> = firsts.iter().map(|(claim, _)| claim).collect();
    let answer_rows: Vec<&Answer> = answers.iter().map(|(answer, _)| answer.as_ref()).collect();
    let mut unreachable = None;
    let (claimed, stored): (Vec<Written<bool>>, Vec<Written<()>>) =
        match statement(target, &claim_rows, &answer_rows).await {
            Ok(inserted) => (
                claim_rows
                    .iter()
                    .map(|claim| Ok(inserted.contains(&(claim.tenant.clone(), claim.key.clone()))))
                    .collect(),
                answer_rows.iter().map(|_| Ok(())).collect(),
            ),
            Err(sqlx::Error::Database(_)) if claim_rows.len() + answer_rows.len() > 1 => {
                let mut claimed = Vec::with_capacity(claim_rows.len());
                for claim in &claim_rows {
                    let written = statement(target, &[claim], &[]).await;
                    claimed.push(
                        written
                            .map(|inserted| !inserted.is_empty())
                            .map_err(Arc::new),
                    );
                }
                let mut stored = Vec::with_capacity(answer_rows.len());
                for answer in &answer_rows {
                    let written = statement(target, &[], &[answer]).await;
                    stored.push(written.map(drop).map_err(Arc::new));
                }
                (claimed, stored)
            }
            Err(error) => {
                let error = Arc::new(error);
                unreachable = Some(error.clone());
                (
                    claim_rows.iter().map(|_| Err(error.clone())).collect(),
                    answer_rows.iter().map(|_| Err(error.clone())).collect(),
                )
            }
        };
    // Stored or failed, an answer is no longer kept: from now on a retry finds it in
    // the database, or its key still held.
    {
        let mut unwritten = lock(unwritten);
        for (answer, _) in &answers {
            let id = (answer.tenant.clone(), answer.key.clone());
            if unwritten
                .get(&id)
                .is_some_and(|kept| Arc::ptr_eq(kept, answer))
            {
                unwritten.remove(&id);
            }
        }
    }
    for ((_, reply), claimed) in firsts.into_iter().zip(claimed) {
        let _ = reply.send(claimed);
    }
    for ((_, reply), stored) in answers.into_iter().zip(stored) {
        answered(reply, stored);
    }
    for (_, reply) in repeats {
        let _ = reply.send(unreachable.clone().map_or(Ok(false), Err));
    }
    for reply in flushes {
        let _ = reply.send(());
    }
}

/// Tells an answer's sender how its write went; a failure nobody waits for is logged
/// (the key stays held, and the request is run again once its lease runs out).
fn answered(reply: oneshot::Sender<Written<()>>, written: Written<()>) {
    if let Err(Err(error)) = reply.send(written) {
        tracing::warn!(%error, "could not store idempotent response");
    }
}

/// Writes `answers` and `claims` in one transaction; answers the (tenant, key) of
/// the claims inserted.
async fn statement(
    target: &Target,
    claims: &[&Claim],
    answers: &[&Answer],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    match &target.db {
        Database::Postgres(pool) => {
            // An upsert may change a row once: of two answers to one key (a request
            // and the retry that took its key over), the later is kept.
            let mut keys = HashSet::new();
            let mut answers: Vec<&Answer> = answers
                .iter()
                .rev()
                .filter(|a| keys.insert((a.tenant.as_str(), a.key.as_str())))
                .copied()
                .collect();
            answers.reverse();
            let answers = answers.as_slice();
            let rows = sqlx::query_as(BATCH_POSTGRES)
                .bind(column(claims, |c| c.tenant.as_str()))
                .bind(column(claims, |c| c.key.as_str()))
                .bind(column(claims, |c| c.request_hash.as_str()))
                .bind(column(claims, |c| c.lease_until_ms))
                .bind(column(claims, |c| c.created_at_ms))
                .bind(column(claims, |c| c.request.as_str()))
                .bind(column(claims, |c| c.request_body.as_ref()))
                .bind(column(answers, |a| a.tenant.as_str()))
                .bind(column(answers, |a| a.key.as_str()))
                .bind(column(answers, |a| a.request_hash.as_str()))
                .bind(column(answers, |a| a.status))
                .bind(column(answers, |a| a.headers.as_str()))
                .bind(column(answers, |a| a.body.as_str()))
                .bind(super::now_ms());
            // After a failure the connection goes back to the pool, which tests it
            // (the database may have closed the session: a restart, an operator).
            let mut connection = target.kept.lend(pool).await?;
            let rows: Vec<(String, String)> = rows.fetch_all(&mut *connection).await?;
            connection.keep();
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
                    .bind(&answer.request_hash)
                    .bind(super::now_ms())
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

/// A batch's answers and claims, one statement on PostgreSQL (an implicit transaction,
/// one round trip). An answer reaches its claim's row through the key's unique index
/// (`ON CONFLICT … DO UPDATE`), a plan that does not depend on the table's size, so the
/// statement is prepared once per connection and not planned again. (The `UPDATE … FROM
/// UNNEST` join it replaces was planned for every batch, a fifth of the database's time
/// under load: the plan a prepared statement settled on scanned the whole table once it
/// had grown.) An answer whose claim is gone makes its row, kept for retries as the
/// claim's would have been.
const BATCH_POSTGRES: &str = "WITH answered AS (
        INSERT INTO http_idempotency AS r (tenant, idempotency_key, request_hash,
            state, lease_until_ms, created_at_ms, status, headers, body)
        SELECT tenant, idempotency_key, request_hash, 'done', 0, $14, status,
               headers, body
          FROM UNNEST($8::text[], $9::text[], $10::text[], $11::int4[],
                      $12::text[], $13::text[])
               AS a(tenant, idempotency_key, request_hash, status, headers, body)
        ON CONFLICT (tenant, idempotency_key) DO UPDATE
           SET state = 'done', status = excluded.status,
               headers = excluded.headers, body = excluded.body,
               request = NULL, request_body = NULL
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

const ANSWER_SQLITE: &str = "INSERT INTO http_idempotency (tenant, idempotency_key, request_hash,
         state, lease_until_ms, created_at_ms, status, headers, body)
     VALUES ($1, $2, $6, 'done', 0, $7, $3, $4, $5)
     ON CONFLICT (tenant, idempotency_key) DO UPDATE
        SET state = 'done', status = excluded.status, headers = excluded.headers,
            body = excluded.body, request = NULL, request_body = NULL";
const CLAIM_SQLITE: &str = "INSERT INTO http_idempotency (tenant, idempotency_key, request_hash,
         state, lease_until_ms, created_at_ms, request, request_body)
     VALUES ($1, $2, $3, 'in_flight', $4, $5, $6, $7)
     ON CONFLICT (tenant, idempotency_key) DO NOTHING";

#[cfg(test)]
mod tests {
    use shopagent_commands::test_support::{
        TestStore, backend_that_ran, explain_generic_plan, terminate_backend,
    };

    use super::*;

    fn claim(key: &str) -> Claim {
        Claim {
            tenant: "acme".into(),
            key: key.into(),
            request_hash: "hash".into(),
            lease_until_ms: 2,
            created_at_ms: 1,
            request: "{}".into(),
            request_body: axum::body::Bytes::from_static(b"body"),
        }
    }

    fn answer(key: &str, body: &str) -> Answer {
        Answer {
            tenant: "acme".into(),
            key: key.into(),
            request_hash: "hash".into(),
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

    /// An answer is handed over at once: until its batch is written it is kept in
    /// memory, for retries reaching this process, and a flush returns once it is
    /// stored.
    async fn an_answer_is_kept_in_memory_until_it_is_written(test: &TestStore) {
        let db = test.store.derived().clone();
        let records = RecordWriter::start(db.clone());
        assert!(records.claim(claim("k")).await.expect("claimed"));
        let written = records.answer(answer("k", "the answer"));
        let kept = records.unwritten("acme", "k").expect("kept until written");
        assert_eq!(kept.body, "the answer");
        assert!(records.unwritten("acme", "other").is_none());
        // A flush does not wait out the answers' wait for company.
        records.flush().await;
        assert!(
            records.unwritten("acme", "k").is_none(),
            "dropped once written"
        );
        assert_eq!(
            stored(&db, "k").await,
            Some(("done".into(), Some("the answer".into())))
        );
        written.await.expect("written");
    }

    /// Nobody waits for an answer: one sent alone is still written, after at most
    /// [`ANSWERS_WAIT`] of waiting for company.
    async fn an_answer_nobody_awaits_is_written_on_its_own(test: &TestStore) {
        let db = test.store.derived().clone();
        let records = RecordWriter::start(db.clone());
        assert!(records.claim(claim("alone")).await.expect("claimed"));
        drop(records.answer(answer("alone", "by itself")));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while records.unwritten("acme", "alone").is_some() && std::time::Instant::now() < deadline {
            tokio::time::sleep(ANSWERS_WAIT).await;
        }
        assert_eq!(
            stored(&db, "alone").await,
            Some(("done".into(), Some("by itself".into())))
        );
    }

    /// An answer whose claim is gone (nothing in this server removes a claim while its
    /// request runs) is stored all the same, for the request's retries.
    async fn an_answer_whose_claim_is_gone_is_kept_for_its_retries(test: &TestStore) {
        let db = test.store.derived().clone();
        let records = RecordWriter::start(db.clone());
        records
            .answer(answer("unclaimed", "kept"))
            .await
            .expect("stored");
        assert_eq!(
            stored(&db, "unclaimed").await,
            Some(("done".into(), Some("kept".into())))
        );
    }

    /// A request and the retry that took its key over may both answer, in one batch:
    /// both writes succeed and the later answer is the one kept.
    async fn of_two_answers_to_one_key_the_later_is_kept(test: &TestStore) {
        let db = test.store.derived().clone();
        let records = RecordWriter::start(db.clone());
        assert!(records.claim(claim("twice")).await.expect("claimed"));
        let (first, second) = tokio::join!(
            records.answer(answer("twice", "first")),
            records.answer(answer("twice", "second")),
        );
        first.expect("stored");
        second.expect("stored");
        assert_eq!(
            stored(&db, "twice").await,
            Some(("done".into(), Some("second".into())))
        );
    }

    shopagent_commands::on_both_backends!(
        an_answer_whose_claim_is_gone_is_kept_for_its_retries,
        of_two_answers_to_one_key_the_later_is_kept,
        each_key_is_claimed_by_exactly_one_of_its_requests,
        answers_written_with_claims_land_on_their_own_keys,
        an_answer_is_kept_in_memory_until_it_is_written,
        an_answer_nobody_awaits_is_written_on_its_own,
    );

    /// The batch statement is prepared once per connection: whatever plan the server
    /// settles on for it (here its generic plan, on a table of some size), an answer
    /// reaches its row through the key, never by scanning the table.
    #[tokio::test]
    async fn answers_reach_their_rows_through_the_key_whatever_the_plan() {
        let test = TestStore::postgres().await;
        let Database::Postgres(pool) = test.store.derived() else {
            unreachable!("a PostgreSQL test store");
        };
        sqlx::raw_sql(
            "INSERT INTO http_idempotency (tenant, idempotency_key, request_hash, state,
                                           lease_until_ms, created_at_ms)
             SELECT 'acme', 'key-' || n, 'hash', 'in_flight', 0, 0
               FROM generate_series(1, 2000) AS n;
             ANALYZE http_idempotency;",
        )
        .execute(pool)
        .await
        .expect("a table of answers");
        let plan = explain_generic_plan(
            pool,
            "text[], text[], text[], int8[], int8[], text[], bytea[],
             text[], text[], text[], int4[], text[], text[], int8",
            BATCH_POSTGRES,
            "ARRAY['acme'], ARRAY['new'], ARRAY['hash'], ARRAY[1], ARRAY[1], ARRAY['{}'],
             ARRAY['body'::bytea], ARRAY['acme'], ARRAY['key-7'], ARRAY['hash'],
             ARRAY[201], ARRAY['[]'], ARRAY['answered'], 1",
        )
        .await;
        assert!(!plan.to_string().contains("Seq Scan"), "{plan:#}");
        assert_eq!(
            stored(&test.store.derived().clone(), "key-7").await,
            Some(("done".into(), Some("answered".into())))
        );
        test.cleanup().await;
    }

    /// The writer keeps its connection from one batch to the next; one the database
    /// closed meanwhile (a restart) fails at most the batch that finds it closed, and
    /// the writer goes on on another. Quiet, it keeps none.
    #[tokio::test]
    async fn a_kept_connection_the_database_closed_is_replaced_and_none_is_kept_when_quiet() {
        let test = TestStore::postgres().await;
        let db = test.store.derived().clone();
        let Database::Postgres(pool) = &db else {
            unreachable!("a PostgreSQL test store");
        };
        let admin = sqlx::PgPool::connect(test.config.database_url.as_deref().expect("url"))
            .await
            .expect("admin pool");
        let records = RecordWriter::start(db.clone());
        assert!(records.claim(claim("first")).await.expect("claimed"));
        let closed = backend_that_ran(&admin, "%WITH answered AS%").await;
        terminate_backend(&admin, closed).await;

        // Fails or not, depending on whether the writer still kept the closed one.
        let _ = records.claim(claim("second")).await;
        assert!(records.claim(claim("third")).await.expect("claimed"));

        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pool.num_idle() < pool.size() as usize {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer kept a connection while quiet"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        admin.close().await;
        test.cleanup().await;
    }

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
