//! Ranges every time value must fall in before it is stored (issue 8: a
//! duration of 4,294,967,295 minutes was accepted, and every later read
//! overflowed in time arithmetic and aborted the daemon). Input outside
//! these ranges is refused at the boundary (HL7 AE 102, API 422); the
//! arithmetic that remains is checked so a record stored by an older
//! version can still be read.

use jiff::{civil::Date, SignedDuration, Timestamp};

/// Earliest year accepted in a time from the PMS or the API.
pub const MIN_YEAR: i16 = 1900;
/// Latest year accepted: far beyond any appointment, far inside jiff's range.
pub const MAX_YEAR: i16 = 2199;
/// The longest appointment or slot: one week.
pub const MAX_DURATION_MINUTES: u32 = 10_080;
/// The widest UTC offset in use anywhere (UTC+14:00, Line Islands).
pub const MAX_OFFSET_MINUTES: i32 = 14 * 60;

/// What the API and the HL7 ACK say about a value out of range.
pub const YEARS_TEXT: &str = "years 1900 to 2199";
pub const DURATION_TEXT: &str = "at most 10,080 minutes (one week)";

pub fn date_in_range(d: Date) -> bool {
    (MIN_YEAR..=MAX_YEAR).contains(&d.year())
}

/// Judged in UTC: a year-boundary instant is in range in some zone anyway.
pub fn timestamp_in_range(t: Timestamp) -> bool {
    date_in_range(t.to_zoned(jiff::tz::TimeZone::UTC).date())
}

pub fn duration_in_range(minutes: u32) -> bool {
    minutes <= MAX_DURATION_MINUTES
}

/// `start + minutes`, or `None` where that is not a representable time.
pub fn end_of(start: Timestamp, minutes: u32) -> Option<Timestamp> {
    start
        .checked_add(SignedDuration::from_mins(i64::from(minutes)))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_of_never_panics() {
        assert_eq!(end_of(Timestamp::MAX, u32::MAX), None);
        assert_eq!(end_of(Timestamp::MAX, 1), None);
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(
            end_of(t, 30),
            Some(Timestamp::from_second(1_800_001_800).unwrap())
        );
    }

    #[test]
    fn ranges() {
        assert!(timestamp_in_range("1900-01-01T00:00:00Z".parse().unwrap()));
        assert!(timestamp_in_range("2199-12-31T23:59:59Z".parse().unwrap()));
        assert!(!timestamp_in_range("2200-01-01T00:00:00Z".parse().unwrap()));
        assert!(!timestamp_in_range(Timestamp::MAX));
        assert!(!timestamp_in_range(Timestamp::MIN));
        assert!(duration_in_range(10_080));
        assert!(!duration_in_range(10_081));
    }
}
