//! Times on the wire are `int64 …_unix_ms`; the domain's [`Timestamp`] is unsigned. Leader times
//! going out saturate (they never reach `i64::MAX`); times coming in must not be negative.

use ipam_core::ids::Timestamp;

use super::error::PbError;
use super::error::Result;

/// A domain time as the wire's `int64 …_unix_ms`.
pub fn to_unix_ms(at: Timestamp) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

/// An optional domain time: `None` is 0 ("not set") on the wire.
pub fn option_to_unix_ms(at: Option<Timestamp>) -> i64 {
    at.map_or(0, to_unix_ms)
}

/// A wire time as a domain time; negative times are refused.
pub fn from_unix_ms(field: &str, ms: i64) -> Result<Timestamp> {
    Timestamp::try_from(ms).map_err(|_| PbError::OutOfRange {
        field: field.to_owned(),
        value: ms.to_string(),
        why: "a time in milliseconds since the Unix epoch is not negative".to_owned(),
    })
}

/// A wire time that must be set (not 0) and not negative.
pub fn required_unix_ms(field: &str, ms: i64) -> Result<Timestamp> {
    if ms == 0 {
        return Err(PbError::Missing {
            field: field.to_owned(),
        });
    }
    from_unix_ms(field, ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for at in [0, 1, 1_700_000_000_000] {
            assert_eq!(from_unix_ms("at", to_unix_ms(at)), Ok(at));
        }
        assert_eq!(to_unix_ms(u64::MAX), i64::MAX);
        assert_eq!(option_to_unix_ms(None), 0);
        assert_eq!(option_to_unix_ms(Some(5)), 5);
    }

    #[test]
    fn rejects_negative_and_unset() {
        assert_eq!(
            from_unix_ms("at", -1).map_err(|e| e.field().to_owned()),
            Err("at".to_owned())
        );
        assert_eq!(
            required_unix_ms("bound_before_unix_ms", 0),
            Err(PbError::Missing {
                field: "bound_before_unix_ms".to_owned()
            })
        );
        assert!(required_unix_ms("bound_before_unix_ms", -5).is_err());
        assert_eq!(required_unix_ms("bound_before_unix_ms", 7), Ok(7));
    }
}
