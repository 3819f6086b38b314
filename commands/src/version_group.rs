//! The PostgreSQL version reads that wait together share one statement.
//!
//! A version read (is the state kept in memory still the stream's?) is the most
//! frequent statement of a command's path: a merchant's registry entry before every
//! quote, placement and webhook, a mandate before an authorization. Each is one index
//! entry read, so what it costs is the statement: its round trip and its transaction.
//! Version reads are gathered like appends ([`crate::gather`]): one statement at a time,
//! taking every read queued when it starts, each stream read once however many of them
//! ask for it. The statement starts after each read it answers was asked for, so every
//! answer is as fresh as a read of its own.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use sqlx::PgPool;

use crate::database::KeptConnections;
use crate::gather::{Gather, Statement};
use crate::store::StoreError;

/// How many version-read statements may run at once: as for appends, one leaves the
/// most reads to share each.
const STATEMENTS_AT_ONCE: usize = 1;

/// At most this many reads go in one statement.
const READS_PER_STATEMENT: usize = 256;

/// The last sequence of each stream named, in the order named (no row: no events): the
/// last entry of the primary key under each stream, and no other, whatever the plan.
/// Written as `MAX(sequence)`, a prepared statement's generic plan made while the table
/// was small aggregated every entry of the stream (each with a visit to its row), so
/// that a version read cost as much as the stream was long.
pub(crate) const PG_STREAM_VERSIONS: &str = "
SELECT (SELECT e.sequence FROM events e
         WHERE e.aggregate_type = s.aggregate_type AND e.aggregate_id = s.aggregate_id
         ORDER BY e.sequence DESC LIMIT 1)
  FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS s(aggregate_type, aggregate_id, n)
 ORDER BY s.n";

/// The version reads waiting for a statement, and the statements running.
pub(crate) type VersionGroup = Gather<VersionStatement>;

impl VersionGroup {
    /// The last sequence of the stream (0: no events yet), read with whatever other
    /// version reads wait beside it.
    pub(crate) async fn read(
        self: &Arc<Self>,
        pool: &PgPool,
        kept: &Arc<KeptConnections>,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<i64, StoreError> {
        let statement = || VersionStatement {
            pool: pool.clone(),
            kept: Arc::clone(kept),
        };
        let stream = (aggregate_type.to_owned(), aggregate_id.to_owned());
        self.submit(stream, statement)
            .await
            .unwrap_or(Err(StoreError::Unavailable(sqlx::Error::WorkerCrashed)))
    }
}

/// One statement of version reads ([`PG_STREAM_VERSIONS`]).
pub(crate) struct VersionStatement {
    pool: PgPool,
    kept: Arc<KeptConnections>,
}

type Waiting = crate::gather::Waiting<VersionStatement>;

impl Statement for VersionStatement {
    /// The stream: its aggregate type and id.
    type Request = (String, String);
    type Answer = Result<i64, StoreError>;
    const AT_ONCE: usize = STATEMENTS_AT_ONCE;

    fn take(_waiting: &[Waiting]) -> usize {
        READS_PER_STATEMENT
    }

    fn run(&self, taken: Vec<Waiting>) -> impl Future<Output = ()> + Send {
        read_versions(&self.pool, &self.kept, taken)
    }
}

/// Reads the versions of `taken`'s streams in one statement and answers each.
async fn read_versions(pool: &PgPool, kept: &Arc<KeptConnections>, taken: Vec<Waiting>) {
    metrics::counter!("shopagent_version_read_statements_total").increment(1);
    // Each stream once, however many reads name it.
    let mut index = HashMap::with_capacity(taken.len());
    let mut types = Vec::with_capacity(taken.len());
    let mut ids = Vec::with_capacity(taken.len());
    let slots = taken
        .iter()
        .map(|waiting| {
            let (aggregate_type, aggregate_id) = &waiting.request;
            *index
                .entry((aggregate_type.as_str(), aggregate_id.as_str()))
                .or_insert_with(|| {
                    types.push(aggregate_type.as_str());
                    ids.push(aggregate_id.as_str());
                    types.len() - 1
                })
        })
        .collect::<Vec<_>>();
    let read = async {
        let mut connection = kept.lend(pool).await?;
        let versions: Vec<Option<i64>> = sqlx::query_scalar(PG_STREAM_VERSIONS)
            .bind(&types)
            .bind(&ids)
            .fetch_all(&mut *connection)
            .await?;
        connection.keep();
        if versions.len() != types.len() {
            return Err(StoreError::Corrupt(format!(
                "{} versions read for {} streams",
                versions.len(),
                types.len()
            )));
        }
        Ok(versions)
    };
    match read.await {
        Ok(versions) => {
            for (waiting, slot) in taken.into_iter().zip(slots) {
                let _ = waiting.answer.send(Ok(versions[slot].unwrap_or(0)));
            }
        }
        Err(error) => {
            for waiting in taken {
                let _ = waiting.answer.send(Err(error.again()));
            }
        }
    }
}
