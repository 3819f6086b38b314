//! What the API benches share: options from the environment, latency figures, and the
//! raw database baseline.

use std::time::Duration;

/// The environment variable `name` parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p50, p95, p99 and max of the samples (sorted in place).
pub fn percentiles(samples: &mut [Duration]) -> [Duration; 4] {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    [at(0.50), at(0.95), at(0.99), at(1.0)]
}

/// Milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The raw database baseline of DESIGN.md, on a plain table of events: what a command
/// costs the database at least (load the aggregate's stream, append its event).
#[allow(dead_code)] // Not every bench that includes this module measures the baseline.
pub struct RawLog {
    pool: sqlx::PgPool,
}

#[allow(dead_code)]
impl RawLog {
    /// A pool of `connections` on `url`, with the table created.
    pub async fn open(url: &str, connections: usize) -> Self {
        // Its connections never idle, so, as the store's pool does, it lends them
        // without a ping first (sqlx still pings each on its way back).
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(connections as u32)
            .test_before_acquire(false)
            .connect(url)
            .await
            .expect("raw pool");
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS raw_events (id BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL,
                 seq BIGINT NOT NULL, payload JSONB NOT NULL, UNIQUE (stream, seq))",
        )
        .execute(&pool)
        .await
        .expect("raw table");
        Self { pool }
    }

    /// One transaction: `stream`'s rows read, and the next one inserted with `payload`.
    pub async fn load_and_append(&self, stream: &str, payload: &serde_json::Value) {
        let mut tx = self.pool.begin().await.expect("transaction");
        let rows: Vec<(i64, serde_json::Value)> =
            sqlx::query_as("SELECT seq, payload FROM raw_events WHERE stream = $1 ORDER BY seq")
                .bind(stream)
                .fetch_all(&mut *tx)
                .await
                .expect("load");
        sqlx::query("INSERT INTO raw_events (stream, seq, payload) VALUES ($1, $2, $3)")
            .bind(stream)
            .bind(rows.len() as i64 + 1)
            .bind(payload)
            .execute(&mut *tx)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
    }

    /// Drops the table: each baseline starts on an empty one, and what it wrote does
    /// not stay in the database's cache beside the server's tables.
    pub async fn close(self) {
        sqlx::query("DROP TABLE IF EXISTS raw_events")
            .execute(&self.pool)
            .await
            .expect("drop the raw table");
        self.pool.close().await;
    }
}
