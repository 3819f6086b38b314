//! The auditor's export of the log: NDJSON, one event per line in commit order, each
//! line chained to the one before by a hash, and a closing trailer with the head hash
//! and the counts.
//!
//! A record's `hash` is SHA-256 over the previous record's hash (hex) and the record's
//! canonical bytes (the record without `hash`, keys sorted, no whitespace). The first
//! record chains to a fixed genesis value. Changing, removing, inserting or reordering a
//! line breaks the chain at that line; cutting the file short loses the trailer. The
//! chain depends only on the stored events and the filter, so two exports of the same
//! range carry the same hashes.
//!
//! Reading is page by page (`Exporter::next_lines`), so an export of any size runs in
//! constant memory.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::log::{LogPages, format_timestamp};
use crate::{LogCursor, Store, StoreError, StoredEvent};

/// What the chain of every export starts from.
const GENESIS: &str = "shopagent-export-v1";
const PAGE: u32 = 1_000;

/// Which events an export holds (empty: all of them), selected by the database.
pub use crate::log::LogFilter as ExportFilter;

/// The filter as the trailer records it.
fn describe(filter: &ExportFilter) -> Value {
    let time = |t: Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
    json!({
        "from_position": filter.from_position,
        "to_position": filter.to_position,
        "since": time(filter.since),
        "until": time(filter.until),
        "aggregate_type": filter.aggregate_type,
        "aggregate_id": filter.aggregate_id,
        "tenant": filter.tenant,
    })
}

/// Personal data replaced by stable pseudonyms: the same value and key always give the
/// same pseudonym, which cannot be turned back without the key.
#[derive(Clone)]
pub struct Redactor {
    key: Vec<u8>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor").finish_non_exhaustive()
    }
}

/// Fields that hold personal data wherever they appear in a payload.
const PERSONAL_FIELDS: &[&str] = &[
    "name",
    "full_name",
    "first_name",
    "last_name",
    "line1",
    "line2",
    "street_address",
    "city",
    "postal_code",
    "email",
    "phone",
    "phone_number",
];

impl Redactor {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn pseudonym(&self, value: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(&self.key);
        hasher.update([0]);
        hasher.update(value.as_bytes());
        format!("anon_{}", &hex::encode(hasher.finalize())[..16])
    }

    fn redact(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, field) in map.iter_mut() {
                    match field {
                        Value::String(text) if PERSONAL_FIELDS.contains(&key.as_str()) => {
                            *text = self.pseudonym(text);
                        }
                        other => self.redact(other),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact(v)),
            _ => {}
        }
    }
}

/// Sorted keys, no whitespace: the bytes a record's hash is taken over.
/// The canonical bytes of `value`: keys sorted at every level, no whitespace. Written
/// directly (no sorted copy), whatever order the map keeps its keys in.
fn canonical(value: &Value) -> Vec<u8> {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (index, (key, item)) in entries.into_iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    // Writing into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut *out, key);
                    out.push(b':');
                    write(item, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => write_scalar(scalar, out),
        }
    }
    fn write_scalar(value: &Value, out: &mut Vec<u8>) {
        let _ = serde_json::to_writer(&mut *out, value);
    }
    let mut out = Vec::with_capacity(512);
    write(value, &mut out);
    out
}

fn digest(previous: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical);
    hex::encode(hasher.finalize())
}

fn chain(previous: &str, record: &Value) -> String {
    digest(previous, &canonical(record))
}

/// The record's line: its canonical bytes, with the hash chained from `previous` as a
/// last member. Returns the line and the hash.
fn chained_line(previous: &str, record: &Value) -> (String, String) {
    let mut bytes = canonical(record);
    let hash = digest(previous, &bytes);
    bytes.pop();
    bytes.extend_from_slice(b",\"hash\":\"");
    bytes.extend_from_slice(hash.as_bytes());
    bytes.extend_from_slice(b"\"}");
    (String::from_utf8(bytes).unwrap_or_default(), hash)
}

fn genesis() -> String {
    hex::encode(Sha256::digest(GENESIS.as_bytes()))
}

fn record_of(event: StoredEvent) -> Value {
    json!({
        "position": event.position(),
        "event_id": event.event_id,
        "recorded_at": format_timestamp(event.recorded_at),
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "event_type": event.event_type,
        "event_version": event.event_version,
        "payload": event.payload,
        "metadata": event.metadata,
    })
}

/// An export in progress: call [`Exporter::next_lines`] until it returns `None`.
#[derive(Debug)]
pub struct Exporter {
    store: Store,
    filter: ExportFilter,
    redactor: Option<Redactor>,
    pages: LogPages,
    cursor: LogCursor,
    head: String,
    count: u64,
    first_position: Option<i64>,
    last_position: Option<i64>,
    /// Everything up to here is read; later commits are not part of this export.
    end: i64,
    done: bool,
}

impl Exporter {
    /// Starts an export of what is in the log now.
    pub async fn start(
        store: Store,
        filter: ExportFilter,
        redactor: Option<Redactor>,
    ) -> Result<Self, StoreError> {
        let end = store.head_position().await?;
        Ok(Self {
            pages: LogPages::matching(store.clone(), LogCursor::default(), PAGE, filter.clone()),
            store,
            filter,
            redactor,
            cursor: LogCursor::default(),
            head: genesis(),
            count: 0,
            first_position: None,
            last_position: None,
            end,
            done: false,
        })
    }

    /// Events the export may still read (an estimate for progress bars).
    pub fn end_position(&self) -> i64 {
        self.end
    }

    /// The next page of NDJSON lines (each without its newline), the trailer last;
    /// `None` once the trailer was returned.
    pub async fn next_lines(&mut self) -> Result<Option<Vec<String>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let events = self.pages.next_page().await?;
        let mut lines = Vec::with_capacity(events.len());
        // Nothing readable yet is not the end while events committed before the export
        // began still wait for older transactions to finish (PostgreSQL visibility).
        let finished = events.is_empty()
            && self
                .store
                .count_between_matching(self.cursor, self.end, &self.filter)
                .await?
                == 0;
        if events.is_empty() && !finished {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for event in events {
            self.cursor = event.cursor;
            if event.position() > self.end {
                // Committed after the export started: not part of it.
                continue;
            }
            if !self.filter.matches(&event) {
                continue;
            }
            let position = event.position();
            let mut record = record_of(event);
            if let Some(redactor) = &self.redactor {
                redactor.redact(&mut record["payload"]);
            }
            record["prev_hash"] = Value::String(self.head.clone());
            let (line, hash) = chained_line(&self.head, &record);
            self.head = hash;
            self.count += 1;
            self.first_position.get_or_insert(position);
            self.last_position = Some(position);
            lines.push(line);
        }
        if finished {
            self.done = true;
            lines.push(
                json!({"trailer": {
                    "head_hash": self.head,
                    "count": self.count,
                    "first_position": self.first_position,
                    "last_position": self.last_position,
                    "filter": describe(&self.filter),
                    "redacted": self.redactor.is_some(),
                }})
                .to_string(),
            );
        }
        Ok(Some(lines))
    }
}

/// What a verified export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub head_hash: String,
}

/// Where and why an export does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct Broken {
    /// 1-based line number.
    pub line: u64,
    pub why: String,
}

/// Checks the chain of an export, line by line (constant memory).
pub fn verify<I, E>(lines: I) -> Result<Verified, Broken>
where
    I: IntoIterator<Item = Result<String, E>>,
    E: std::fmt::Display,
{
    let mut head = genesis();
    let mut lines_read = 0u64;
    // Every line before the trailer is a record: the index is the count so far.
    for (index, line) in lines.into_iter().enumerate() {
        let records = index as u64;
        lines_read = records + 1;
        let broken = |why: String| Broken {
            line: records + 1,
            why,
        };
        let line = line.map_err(|e| broken(format!("unreadable: {e}")))?;
        let mut value: Value =
            serde_json::from_str(&line).map_err(|e| broken(format!("not a JSON record: {e}")))?;
        if let Some(trailer) = value.get("trailer") {
            if trailer["head_hash"] != head.as_str() {
                return Err(broken("the trailer's head hash is not the chain's".into()));
            }
            if trailer["count"] != records {
                return Err(broken(format!(
                    "the trailer counts {} records, the file holds {records}",
                    trailer["count"]
                )));
            }
            return Ok(Verified {
                records,
                head_hash: head,
            });
        }
        let claimed = value
            .as_object_mut()
            .and_then(|map| map.remove("hash"))
            .and_then(|h| h.as_str().map(str::to_owned))
            .ok_or_else(|| broken("the record has no hash".into()))?;
        if value["prev_hash"] != head.as_str() {
            return Err(broken(
                "the record does not follow the one before (removed, inserted or reordered)".into(),
            ));
        }
        let computed = chain(&head, &value);
        if computed != claimed {
            return Err(broken("the record was changed".into()));
        }
        head = computed;
    }
    Err(Broken {
        line: lines_read + 1,
        why: "the trailer is missing (the export was cut short)".into(),
    })
}
