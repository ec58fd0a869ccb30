//! The typing rules of the event contract: one implementation, used for every backend.
//!
//! Scalar rules live here as small pure functions (tested on a table of cases);
//! [`crate::typed_batch`] applies them to whole Arrow batches.

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// Largest absolute value a DECIMAL(18,6) holds, in units of 10^-6.
const PRICE_LIMIT_MICROS: i128 = 10i128.pow(18) - 1;

/// `"123"`, `"123.0"` -> 123; anything else -> None.
pub fn parse_integer_text(text: &str) -> Option<i64> {
    let t = text.trim();
    let (int_part, frac) = match t.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (t, None),
    };
    if let Some(f) = frac
        && (f.is_empty() || !f.bytes().all(|b| b == b'0'))
    {
        return None;
    }
    let digits = int_part.strip_prefix(['+', '-']).unwrap_or(int_part);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    int_part.trim_start_matches('+').parse::<i64>().ok()
}

/// A float that holds an integral value in i64 range -> that integer.
pub fn integer_from_float(value: f64) -> Option<i64> {
    (value.is_finite() && value.fract() == 0.0 && value.abs() < 9.2e18).then_some(value as i64)
}

/// Decimal text (optionally with an exponent) -> a finite f64.
pub fn parse_float_text(text: &str) -> Option<f64> {
    let t = text.trim();
    let plain = t.strip_prefix(['+', '-']).unwrap_or(t);
    let shape_ok = !plain.is_empty()
        && plain.bytes().any(|b| b.is_ascii_digit())
        && plain
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !shape_ok {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// yes/true/1 -> true, no/false/0 -> false (trimmed, case-insensitive), else None.
pub fn parse_permission(text: &str) -> Option<bool> {
    let t = text.trim();
    if ["yes", "true", "1"]
        .iter()
        .any(|w| t.eq_ignore_ascii_case(w))
    {
        Some(true)
    } else if ["no", "false", "0"]
        .iter()
        .any(|w| t.eq_ignore_ascii_case(w))
    {
        Some(false)
    } else {
        None
    }
}

/// Price text -> DECIMAL(18,6) as an integer number of millionths.
///
/// Currency symbols, codes and spaces are stripped; the last `.` or `,` followed by
/// 1-2 digits at the end is the decimal mark, any other `.`/`,` is a thousands separator.
pub fn parse_price(text: &str) -> Option<i128> {
    let mut negative = false;
    let mut body = String::with_capacity(text.len());
    for ch in text.trim().chars() {
        match ch {
            '0'..='9' | '.' | ',' => body.push(ch),
            '-' if body.is_empty() && !negative => negative = true,
            '+' if body.is_empty() => {}
            // Currency codes (EUR, USD), symbols (€ $ £ ¥ ...) and any kind of space are
            // not part of the number; letters between digits are caught below.
            c if c.is_alphabetic() || c.is_whitespace() || is_currency_symbol(c) => {}
            '\'' | '’' => {}
            _ => return None,
        }
    }
    if !body.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    // Letters between digits ("12a34") leave no trace in `body`; reject them explicitly.
    if has_letters_between_digits(text) {
        return None;
    }
    let last_sep = body.rfind(['.', ',']);
    let (int_digits, frac_digits): (String, &str) = match last_sep {
        Some(pos) => {
            let tail = &body[pos + 1..];
            if (1..=2).contains(&tail.len()) && tail.bytes().all(|b| b.is_ascii_digit()) {
                (
                    body[..pos].chars().filter(char::is_ascii_digit).collect(),
                    tail,
                )
            } else {
                (body.chars().filter(char::is_ascii_digit).collect(), "")
            }
        }
        None => (body.clone(), ""),
    };
    let int_value: i128 = if int_digits.is_empty() {
        0
    } else if int_digits.len() > 18 {
        return None;
    } else {
        int_digits.parse().ok()?
    };
    let mut frac_value: i128 = 0;
    for (i, b) in frac_digits.bytes().enumerate() {
        frac_value += i128::from(b - b'0') * 10i128.pow(5 - i as u32);
    }
    let micros = int_value.checked_mul(1_000_000)?.checked_add(frac_value)?;
    if micros > PRICE_LIMIT_MICROS {
        return None;
    }
    Some(if negative { -micros } else { micros })
}

fn is_currency_symbol(c: char) -> bool {
    matches!(
        c,
        '$' | '€'
            | '£'
            | '¥'
            | '₹'
            | '₩'
            | '₺'
            | '₽'
            | '₫'
            | '฿'
            | '₪'
            | '¢'
            | '₴'
            | '₦'
            | '₱'
            | '₡'
    )
}

fn has_letters_between_digits(text: &str) -> bool {
    let t = text.trim();
    let first = t.find(|c: char| c.is_ascii_digit());
    let last = t.rfind(|c: char| c.is_ascii_digit());
    match (first, last) {
        (Some(a), Some(b)) => t[a..=b].chars().any(char::is_alphabetic),
        _ => false,
    }
}

/// A number -> DECIMAL(18,6) millionths (rounded half away from zero).
pub fn price_from_float(value: f64) -> Option<i128> {
    if !value.is_finite() {
        return None;
    }
    let micros = (value * 1_000_000.0).round();
    (micros.abs() <= PRICE_LIMIT_MICROS as f64).then_some(micros as i128)
}

/// ISO-8601 text -> UTC microseconds since the epoch. Text without an offset is UTC.
pub fn parse_timestamp_text(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.timestamp_micros());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(dt) = DateTime::parse_from_str(t, fmt) {
            return Some(dt.timestamp_micros());
        }
    }
    let naive = t.strip_suffix(['Z', 'z']).unwrap_or(t);
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(naive, fmt) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(naive, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_micros())
}

/// Seconds of 1971-01-01 and 2200-01-01: an epoch integer counted in any unit (seconds,
/// milliseconds, microseconds, nanoseconds) that falls inside these bounds in exactly one
/// of them, since each unit's range spans less than the factor 1000 between units.
const PLAUSIBLE_EPOCH_SECONDS: std::ops::Range<i64> = 31_536_000..7_258_118_400;

/// An integer epoch timestamp of unknown unit -> UTC microseconds. The case data counts
/// nanoseconds; exports in seconds, milliseconds or microseconds are told apart by
/// magnitude. A value that is a plausible time (1971..2200) in no unit is unusable (None),
/// never read as a time in January 1970.
pub fn epoch_integer_micros(value: i64) -> Option<i64> {
    // (values per second, microseconds per value, or values per microsecond as divisor)
    [
        (1_000_000_000_i64, None, Some(1_000_i64)),
        (1_000_000, Some(1_i64), None),
        (1_000, Some(1_000), None),
        (1, Some(1_000_000), None),
    ]
    .into_iter()
    .find(|(per_second, _, _)| PLAUSIBLE_EPOCH_SECONDS.contains(&value.div_euclid(*per_second)))
    .and_then(|(_, multiply, divide)| match (multiply, divide) {
        (Some(m), _) => value.checked_mul(m),
        (None, Some(d)) => Some(value.div_euclid(d)),
        (None, None) => None,
    })
}

/// UTC date of a timestamp in microseconds, as days since the epoch (Arrow Date32).
pub fn epoch_day_of_micros(micros: i64) -> i32 {
    micros.div_euclid(86_400_000_000) as i32
}

/// Days since the epoch -> calendar date (Arrow Date32 -> NaiveDate).
pub fn date_of_epoch_day(days: i32) -> NaiveDate {
    NaiveDate::from_epoch_days(days).unwrap_or(NaiveDate::MIN)
}

/// Calendar date -> days since the epoch.
pub fn epoch_day_of_date(date: NaiveDate) -> i32 {
    date.to_epoch_days()
}

/// Whether a timestamp is usable as part of an event key: inside years 1000..=9999,
/// the range every backend (MySQL DATETIME above all) can store.
pub fn usable_timestamp(micros: i64) -> bool {
    // 1000-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z
    (-30_610_224_000_000_000..=253_402_300_799_999_999).contains(&micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers() {
        let cases: &[(&str, Option<i64>)] = &[
            ("123", Some(123)),
            ("123.0", Some(123)),
            (" 42 ", Some(42)),
            ("-7", Some(-7)),
            ("+7", Some(7)),
            ("123.00", Some(123)),
            ("123.5", None),
            ("123.", None),
            ("", None),
            ("abc", None),
            ("1e3", None),
            ("12 3", None),
            ("99999999999999999999", None),
            ("-", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_integer_text(text), *want, "{text:?}");
        }
        assert_eq!(integer_from_float(123.0), Some(123));
        assert_eq!(integer_from_float(123.5), None);
        assert_eq!(integer_from_float(f64::NAN), None);
    }

    #[test]
    fn floats() {
        let cases: &[(&str, Option<f64>)] = &[
            ("4.5", Some(4.5)),
            (" 3 ", Some(3.0)),
            ("-0.25", Some(-0.25)),
            ("1e2", Some(100.0)),
            ("NaN", None),
            ("inf", None),
            ("infinity", None),
            ("four", None),
            ("", None),
            ("1,5", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_float_text(text), *want, "{text:?}");
        }
    }

    #[test]
    fn permissions() {
        let cases: &[(&str, Option<bool>)] = &[
            ("yes", Some(true)),
            (" YES ", Some(true)),
            ("True", Some(true)),
            ("1", Some(true)),
            ("no", Some(false)),
            ("FALSE", Some(false)),
            ("0", Some(false)),
            ("", None),
            ("maybe", None),
            ("y", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_permission(text), *want, "{text:?}");
        }
    }

    #[test]
    fn prices() {
        let m = |v: f64| Some((v * 1_000_000.0).round() as i128);
        let cases: &[(&str, Option<i128>)] = &[
            ("€1.234,56", m(1234.56)),
            ("$1,234.56", m(1234.56)),
            ("1234,5", m(1234.5)),
            ("n/a", None),
            ("", None),
            ("EUR 99", m(99.0)),
            ("99.90 USD", m(99.9)),
            ("£ 1 234,50", m(1234.5)),
            ("1.234.567", m(1234567.0)),
            ("1,234", m(1234.0)),
            ("0.5", m(0.5)),
            ("-12.30", m(-12.3)),
            ("CHF 1'234.50", m(1234.5)),
            ("12a34", None),
            ("free", None),
            ("1234567890123456789", None),
            ("$", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_price(text), *want, "{text:?}");
        }
        assert_eq!(price_from_float(19.99), m(19.99));
        assert_eq!(price_from_float(f64::INFINITY), None);
    }

    #[test]
    fn timestamps() {
        let base = 1_704_067_200_000_000_i64; // 2024-01-01T00:00:00Z
        let cases: &[(&str, Option<i64>)] = &[
            ("2024-01-01T00:00:00Z", Some(base)),
            ("2024-01-01T00:00:00.123456Z", Some(base + 123_456)),
            ("2024-01-01T02:00:00+02:00", Some(base)),
            ("2024-01-01 00:00:00", Some(base)),
            ("2024-01-01T00:00:00.5", Some(base + 500_000)),
            ("2024-01-01", Some(base)),
            ("yesterday", None),
            ("", None),
            ("2024-13-01T00:00:00Z", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_timestamp_text(text), *want, "{text:?}");
        }
        assert_eq!(epoch_day_of_micros(base), 19_723);
        assert_eq!(epoch_day_of_micros(-1), -1);
        assert!(usable_timestamp(base));
        // 2024-01-01T00:00:00.123456Z counted in each unit; outside 1971..2200 in every
        // unit: unusable, never 1970.
        let us = 1_704_067_200_123_456_i64;
        assert_eq!(epoch_integer_micros(us * 1_000), Some(us));
        assert_eq!(epoch_integer_micros(us), Some(us));
        assert_eq!(epoch_integer_micros(us / 1_000), Some(us / 1_000 * 1_000));
        assert_eq!(
            epoch_integer_micros(us / 1_000_000),
            Some(1_704_067_200_000_000)
        );
        for implausible in [0, 1, 86_400, 20_000_000, i64::MAX, -1_704_067_200, i64::MIN] {
            assert_eq!(epoch_integer_micros(implausible), None, "{implausible}");
        }
        assert!(!usable_timestamp(i64::MAX));
    }
}
