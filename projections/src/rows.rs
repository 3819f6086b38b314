//! Statements built at run time for batched read-model writes, on either backend.
//!
//! A projection that writes a batch at once reads the rows the batch touches in one
//! statement, changes them in memory, and writes them back with one multi-row upsert.
//! [`Statement`] carries the SQL and its values together, so the text and the binds
//! cannot drift apart; both backends accept `$N` placeholders.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::on_read_model;
use crate::runner::{ProjectionError, ReadModelTx};

/// Rows per multi-row statement, and events per pass of a projection that writes in
/// batches (so a pass names at most this many keys of each kind): at most a few
/// thousand bind values per statement, well under both backends' limits (SQLite 32,766,
/// PostgreSQL 65,535) for tables of up to 30 columns.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
}

impl From<i64> for Cell {
    fn from(value: i64) -> Self {
        Self::Int(Some(value))
    }
}

impl From<Option<i64>> for Cell {
    fn from(value: Option<i64>) -> Self {
        Self::Int(value)
    }
}

impl From<String> for Cell {
    fn from(value: String) -> Self {
        Self::Text(Some(value))
    }
}

impl From<&str> for Cell {
    fn from(value: &str) -> Self {
        Self::Text(Some(value.to_owned()))
    }
}

impl From<Option<String>> for Cell {
    fn from(value: Option<String>) -> Self {
        Self::Text(value)
    }
}

/// Binds `cells` to `query` in order; a macro because `sqlx::query` and
/// `sqlx::query_as` have no common trait for `bind`.
macro_rules! bind_cells {
    ($query:expr, $cells:expr) => {{
        let mut query = $query;
        for cell in $cells {
            query = match cell {
                Cell::Int(value) => query.bind(*value),
                Cell::Text(value) => query.bind(value.as_deref()),
            };
        }
        query
    }};
}

/// SQL text with the values of its placeholders.
///
/// Run unprepared (`persistent(false)`), so PostgreSQL plans each run for its values.
/// A prepared statement that has run five times may keep a generic plan, made without
/// the values: made while a read model was young and unanalysed, it looks a row up by
/// scanning the tenant's whole table through an index led by `tenant` alone, a cost
/// that then grows with the table. The texts vary with the batch anyway.
#[derive(Debug, Default)]
pub(crate) struct Statement {
    sql: String,
    cells: Vec<Cell>,
}

impl Statement {
    pub(crate) fn new(sql: &str) -> Self {
        Self {
            sql: sql.to_owned(),
            cells: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub(crate) fn push_bind(&mut self, value: impl Into<Cell>) -> &mut Self {
        self.cells.push(value.into());
        let placeholder = format!("${}", self.cells.len());
        self.sql.push_str(&placeholder);
        self
    }

    /// Appends `(v1, v2, …)`, one placeholder per value.
    pub(crate) fn push_tuple<C: Into<Cell>>(
        &mut self,
        values: impl IntoIterator<Item = C>,
    ) -> &mut Self {
        self.push("(");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_bind(value);
        }
        self.push(")")
    }

    pub(crate) async fn execute(&self, tx: &mut ReadModelTx<'_>) -> Result<(), ProjectionError> {
        on_read_model!(tx, conn => {
            let query = bind_cells!(sqlx::query(&self.sql).persistent(false), &self.cells);
            query.execute(conn).await?;
        });
        Ok(())
    }

    pub(crate) async fn fetch_all<R>(
        &self,
        tx: &mut ReadModelTx<'_>,
    ) -> Result<Vec<R>, ProjectionError>
    where
        R: for<'r> sqlx::FromRow<'r, PgRow> + for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin,
    {
        Ok(on_read_model!(tx, conn => {
            let query = bind_cells!(sqlx::query_as(&self.sql).persistent(false), &self.cells);
            query.fetch_all(conn).await?
        }))
    }
}

/// What a row whose key is already in the table does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OnConflict<'a> {
    /// It stays as it is.
    Keep,
    /// These columns take the new row's values.
    Overwrite(&'a [&'a str]),
}

/// Writes `rows` (one cell per column of `columns`, in that order) into `table`, whose
/// primary key is `key`, in as few statements as the bind limits allow. Two rows of
/// one call must not share a key.
pub(crate) async fn upsert(
    tx: &mut ReadModelTx<'_>,
    table: &str,
    columns: &[&str],
    key: &[&str],
    on_conflict: OnConflict<'_>,
    rows: Vec<Vec<Cell>>,
) -> Result<(), ProjectionError> {
    let conflict = match on_conflict {
        OnConflict::Keep => "DO NOTHING".to_owned(),
        OnConflict::Overwrite(updated) => {
            let sets: Vec<String> = updated
                .iter()
                .map(|column| format!("{column} = excluded.{column}"))
                .collect();
            format!("DO UPDATE SET {}", sets.join(", "))
        }
    };
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut statement = Statement::new(&format!(
            "INSERT INTO {table} ({}) VALUES ",
            columns.join(", ")
        ));
        for (i, row) in rows.by_ref().take(ROWS_PER_STATEMENT).enumerate() {
            debug_assert_eq!(row.len(), columns.len(), "one cell per column");
            if i > 0 {
                statement.push(", ");
            }
            statement.push_tuple(row);
        }
        statement.push(&format!(" ON CONFLICT ({}) {conflict}", key.join(", ")));
        statement.execute(tx).await?;
    }
    Ok(())
}

/// The rows a batch touches, named by key: per tenant, the values each key column may
/// hold. Read with one statement, whatever the number of tenants.
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    by_tenant: BTreeMap<String, BTreeMap<&'static str, BTreeSet<String>>>,
}

impl Wanted {
    pub(crate) fn add(&mut self, tenant: &str, column: &'static str, key: impl Into<String>) {
        self.by_tenant
            .entry(tenant.to_owned())
            .or_default()
            .entry(column)
            .or_default()
            .insert(key.into());
    }

    /// Reads `columns` of the wanted rows of `table`.
    pub(crate) async fn fetch<R>(
        &self,
        tx: &mut ReadModelTx<'_>,
        table: &str,
        columns: &[&str],
    ) -> Result<Vec<R>, ProjectionError>
    where
        R: for<'r> sqlx::FromRow<'r, PgRow> + for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin,
    {
        if self.by_tenant.is_empty() {
            return Ok(Vec::new());
        }
        let mut statement = Statement::new(&format!(
            "SELECT {} FROM {table} WHERE ",
            columns.join(", ")
        ));
        for (t, (tenant, columns)) in self.by_tenant.iter().enumerate() {
            if t > 0 {
                statement.push(" OR ");
            }
            statement
                .push("(tenant = ")
                .push_bind(tenant.as_str())
                .push(" AND (");
            for (c, (column, keys)) in columns.iter().enumerate() {
                if c > 0 {
                    statement.push(" OR ");
                }
                statement
                    .push(column)
                    .push(" IN ")
                    .push_tuple(keys.iter().map(String::as_str));
            }
            statement.push("))");
        }
        statement.fetch_all(tx).await
    }
}

/// The id of the aggregate a stream belongs to: its stream id without the tenant.
pub(crate) fn stream_key(aggregate_id: &str) -> &str {
    aggregate_id.rsplit('/').next().unwrap_or_default()
}
