//! Time as the store keeps it (unix milliseconds) and as people read it (RFC 3339, UTC).

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// The current wall-clock time in unix milliseconds, the unit of every timestamp in the store.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix ms as RFC 3339 UTC with exactly three fractional digits, e.g.
/// `2026-04-14T09:30:12.340Z`: fixed width, so columns of timestamps line up.
pub fn rfc3339(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

/// Unix ms in UTC, formatted with a `time` format description such as `[hour]:[minute]`.
/// Empty for a format that does not parse or a time out of range (neither comes from data).
pub fn utc(ms: i64, format: &str) -> String {
    let Ok(items) = time::format_description::parse_borrowed::<2>(format) else {
        return String::new();
    };
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&items).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_776_159_012_340), "2026-04-14T09:30:12.340Z");
        assert_eq!(rfc3339(1_776_159_012_345), "2026-04-14T09:30:12.345Z");
    }

    #[test]
    fn now_is_after_the_incident() {
        assert!(now_ms() > 1_776_159_012_340);
    }
}
