//! Wire formats of time in events and API bodies: RFC 3339 timestamps
//! (`time::serde::rfc3339`) and ISO 8601 calendar dates, never the `time` crate's
//! default tuples.

time::serde::format_description!(pub date, Date, "[year]-[month]-[day]");
