//! The time flags of the audit commands (`--at`, `--since`, `--until`): an RFC 3339 time, a
//! duration ago, or `now`, as milliseconds since the epoch (the wire's `*_unix_ms`).
//!
//! ```text
//!   2026-11-24T14:02:00Z            RFC 3339: Z or an offset (+01:00, -05:30), any fraction of a
//!   2026-11-24T15:02:00.250+01:00   second (kept to the millisecond)
//!   90s  15m  2h  7d  1w  1h30m     that long ago (humantime's durations)
//!   now                             the local clock
//! ```
//!
//! humantime parses the date and time of day but knows only UTC, so the offset is split off and
//! applied here. A time without an offset is refused rather than guessed: an audit question about
//! "14:02" in the wrong zone answers about someone else.

use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

/// The accepted forms, for error messages.
pub const FORMS: &str = "give an RFC 3339 time (2026-11-24T14:02:00Z, 2026-11-24T15:02:00.250+01:00), \
                         a duration ago (90s, 15m, 2h, 7d, 1w, 1h30m) or `now`";

/// Why a time flag's value is not a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Neither an RFC 3339 time, a duration nor `now`.
    #[error("`{text}` is not a time ({why}); {FORMS}")]
    Unrecognized {
        /// The value given.
        text: String,
        /// What the duration parser said.
        why: String,
    },
    /// An RFC 3339 time without `Z` or an offset.
    #[error("`{0}` has no UTC offset: add Z for UTC or an offset such as +01:00")]
    NoOffset(String),
    /// Shaped like an RFC 3339 time, but not a valid one.
    #[error("`{text}` is not a valid RFC 3339 time ({why}); {FORMS}")]
    InvalidRfc3339 {
        /// The value given.
        text: String,
        /// What is wrong.
        why: String,
    },
    /// The time is not after the epoch (0 means "no bound" on the wire).
    #[error("`{0}` is not after 1970-01-01T00:00:00Z")]
    BeforeEpoch(String),
}

/// Parses a time flag against the local clock (clap's value parser).
pub fn parse(text: &str) -> Result<i64, TimeError> {
    parse_at(text, SystemTime::now())
}

/// Parses a time flag; relative forms count back from `now`.
pub fn parse_at(text: &str, now: SystemTime) -> Result<i64, TimeError> {
    let trimmed = text.trim();
    let instant = if trimmed.eq_ignore_ascii_case("now") {
        now
    } else if looks_like_a_date(trimmed) {
        rfc3339(trimmed)?
    } else {
        let ago = humantime::parse_duration(trimmed).map_err(|e| TimeError::Unrecognized {
            text: text.to_owned(),
            why: e.to_string(),
        })?;
        now.checked_sub(ago)
            .ok_or_else(|| TimeError::BeforeEpoch(text.to_owned()))?
    };
    let ms = instant
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0);
    if ms <= 0 {
        return Err(TimeError::BeforeEpoch(text.to_owned()));
    }
    Ok(ms)
}

/// Whether `text` starts like `YYYY-`: a date, never a duration.
fn looks_like_a_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() > 4 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// An RFC 3339 date-time (`T`, `t` or a space between date and time; `Z`, `z` or `±HH:MM`).
fn rfc3339(text: &str) -> Result<SystemTime, TimeError> {
    let invalid = |why: &str| TimeError::InvalidRfc3339 {
        text: text.to_owned(),
        why: why.to_owned(),
    };
    if !text.is_ascii() {
        return Err(invalid("not ASCII"));
    }
    let (local, east_of_utc) = split_offset(text)?;
    // YYYY-MM-DDTHH:MM:SS is 19 bytes; a fraction is a dot and at least one digit.
    if local.len() < 19 {
        return Err(invalid("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let fraction_ok = match local[19..].strip_prefix('.') {
        Some(digits) => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        None => local.len() == 19,
    };
    if !fraction_ok {
        return Err(invalid(
            "expected a fraction of a second such as .250 after the seconds",
        ));
    }
    let mut utc = local.to_owned();
    match local.as_bytes()[10] {
        b'T' | b't' | b' ' => utc.replace_range(10..11, "T"),
        _ => return Err(invalid("expected T between the date and the time")),
    }
    utc.push('Z');
    let at_utc = humantime::parse_rfc3339(&utc).map_err(|e| invalid(&e.to_string()))?;
    let instant = if east_of_utc >= 0 {
        at_utc.checked_sub(Duration::from_secs(east_of_utc.unsigned_abs()))
    } else {
        at_utc.checked_add(Duration::from_secs(east_of_utc.unsigned_abs()))
    };
    instant.ok_or_else(|| TimeError::BeforeEpoch(text.to_owned()))
}

/// The date-time without its offset, and the offset in seconds east of UTC.
fn split_offset(text: &str) -> Result<(&str, i64), TimeError> {
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return Ok((local, 0));
    }
    let invalid = |why: &str| TimeError::InvalidRfc3339 {
        text: text.to_owned(),
        why: why.to_owned(),
    };
    // `±HH:MM` after at least the 19 bytes of the date and time.
    let Some(start) = text.len().checked_sub(6).filter(|start| *start >= 19) else {
        return Err(TimeError::NoOffset(text.to_owned()));
    };
    let (local, offset) = text.split_at(start);
    let b = offset.as_bytes();
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Err(TimeError::NoOffset(text.to_owned())),
    };
    if b[3] != b':' || ![b[1], b[2], b[4], b[5]].iter().all(u8::is_ascii_digit) {
        return Err(invalid("expected an offset as ±HH:MM"));
    }
    let digit = |i: usize| i64::from(b[i] - b'0');
    let (hours, minutes) = (digit(1) * 10 + digit(2), digit(4) * 10 + digit(5));
    if hours > 23 || minutes > 59 {
        return Err(invalid("the offset is out of range"));
    }
    Ok((local, sign * (hours * 3600 + minutes * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-24T14:02:00Z.
    const T: i64 = 1_795_528_920_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(T as u64)
    }

    fn ok(text: &str) -> i64 {
        parse_at(text, now()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> TimeError {
        parse_at(text, now()).expect_err(text)
    }

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(ok("2026-11-24T14:02:00Z"), T);
        assert_eq!(ok("2026-11-24t14:02:00z"), T);
        assert_eq!(ok("2026-11-24 14:02:00Z"), T);
        assert_eq!(ok("2026-11-24T14:02:00+00:00"), T);
        assert_eq!(ok("2026-11-24T14:02:00-00:00"), T);
        assert_eq!(ok("1970-01-01T00:00:00.001Z"), 1);
    }

    #[test]
    fn rfc3339_offsets_move_to_utc() {
        assert_eq!(ok("2026-11-24T15:02:00+01:00"), T);
        assert_eq!(ok("2026-11-24T08:32:00-05:30"), T);
        // Across midnight and a month end.
        assert_eq!(ok("2026-11-25T00:02:00+10:00"), T);
        assert_eq!(ok("2026-12-01T01:00:00+02:00"), ok("2026-11-30T23:00:00Z"));
    }

    #[test]
    fn rfc3339_fractions_keep_milliseconds() {
        assert_eq!(ok("2026-11-24T14:02:00.250Z"), T + 250);
        assert_eq!(ok("2026-11-24T14:02:00.5Z"), T + 500);
        assert_eq!(ok("2026-11-24T15:02:00.123456789+01:00"), T + 123);
    }

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(ok("90s"), T - 90_000);
        assert_eq!(ok("15m"), T - 15 * 60_000);
        assert_eq!(ok("2h"), T - 2 * 3_600_000);
        assert_eq!(ok("7d"), T - 7 * 86_400_000);
        assert_eq!(ok("1w"), T - 7 * 86_400_000);
        assert_eq!(ok("1h30m"), T - 90 * 60_000);
        assert_eq!(ok("1h 30m"), T - 90 * 60_000);
        assert_eq!(ok("now"), T);
        assert_eq!(ok(" NOW "), T);
    }

    #[test]
    fn a_time_without_an_offset_is_refused() {
        assert_eq!(
            err("2026-11-24T14:02:00"),
            TimeError::NoOffset("2026-11-24T14:02:00".to_owned())
        );
        assert!(err("2026-11-24T14:02:00.5").to_string().contains("add Z for UTC"));
    }

    #[test]
    fn malformed_times_name_the_accepted_forms() {
        for text in [
            "yesterday",
            "90",
            "-1h",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-24T25:00:00Z",
            "2026-11-24T14:02Z",
            "2026-11-24X14:02:00Z",
            "2026-11-24T14:02:00.Z",
            "2026-11-24T14:02:00.1x5Z",
            "2026-11-24T14:02:00+1:00",
            "2026-11-24T14:02:00+24:00",
            "2026-11-24T14:02:00+01:60",
            "2026-11-24T14:02:00é+0:00",
            "",
        ] {
            let message = err(text).to_string();
            assert!(
                message.contains("RFC 3339") || message.contains("UTC offset"),
                "{text}: {message}"
            );
            assert!(
                message.contains("1h30m") || message.contains("offset"),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn times_before_the_epoch_are_refused() {
        assert_eq!(
            err("1970-01-01T00:00:00Z"),
            TimeError::BeforeEpoch("1970-01-01T00:00:00Z".to_owned())
        );
        assert_eq!(
            parse_at("2h", UNIX_EPOCH + Duration::from_secs(60)),
            Err(TimeError::BeforeEpoch("2h".to_owned()))
        );
    }
}
