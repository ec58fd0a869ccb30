//! What MySQL serves, checksummed from the content itself: each row's `row_hash` is
//! recomputed from its columns as read back, with the encoding the typing step hashes
//! (`typed_batch::encode_value`). A hand edit of a content column changes the
//! checksum even when the stored `row_hash` was left as it was.

use chrono::{NaiveDate, NaiveDateTime, Timelike};
use mysql_async::{Row, Value};

use ota_core::change::{DateChecksum, add_to_checksum};
use ota_core::contract::{PRICE_SCALE, TYPED_COLUMNS, TypedKind};
use ota_core::error::{PipelineError, Result};
use ota_core::typed_batch::{ContentValue, digest, encode_value};

/// The content columns `row_hash` covers, in hashing order.
pub fn content_columns() -> Vec<(&'static str, TypedKind)> {
    TYPED_COLUMNS
        .iter()
        .filter(|c| c.content)
        .map(|c| (c.name, c.kind))
        .collect()
}

/// Recomputes the `row_hash` of rows read as (content columns…, stored `row_hash`) and
/// adds them to a date's checksum. Rows come through the binary protocol (a prepared statement), so
/// floats arrive as their exact bits.
pub struct ContentChecksum {
    kinds: Vec<TypedKind>,
    buf: Vec<u8>,
    pub sum: DateChecksum,
}

impl Default for ContentChecksum {
    fn default() -> Self {
        ContentChecksum {
            kinds: content_columns().into_iter().map(|(_, k)| k).collect(),
            buf: Vec::with_capacity(512),
            sum: DateChecksum::default(),
        }
    }
}

impl ContentChecksum {
    /// Adds one row: its content columns, then its stored `row_hash`.
    pub fn add(&mut self, row: &Row) -> Result<()> {
        self.buf.clear();
        for (i, kind) in self.kinds.iter().enumerate() {
            let value = row.as_ref(i).unwrap_or(&Value::NULL);
            let column = TYPED_COLUMNS
                .iter()
                .filter(|c| c.content)
                .nth(i)
                .map_or("?", |c| c.name);
            let bad = |why: &str| {
                PipelineError::Internal(format!("MySQL returned {value:?} for {column}, {why}"))
            };
            match (kind, value) {
                (_, Value::NULL) => encode_value(&mut self.buf, ContentValue::Null),
                (TypedKind::Text | TypedKind::Key, Value::Bytes(b)) => {
                    encode_value(&mut self.buf, ContentValue::Text(b))
                }
                (TypedKind::Integer, v) => {
                    let n = integer(v).ok_or_else(|| bad("not an integer"))?;
                    encode_value(&mut self.buf, ContentValue::Integer(n))
                }
                (TypedKind::Boolean, v) => {
                    let n = integer(v).ok_or_else(|| bad("not a boolean"))?;
                    encode_value(&mut self.buf, ContentValue::Boolean(n != 0))
                }
                (TypedKind::Float, v) => {
                    let f = float(v).ok_or_else(|| bad("not a float"))?;
                    encode_value(&mut self.buf, ContentValue::Float(f))
                }
                (TypedKind::Decimal, Value::Bytes(b)) => {
                    let d = decimal(b, PRICE_SCALE as u32).ok_or_else(|| bad("not a decimal"))?;
                    encode_value(&mut self.buf, ContentValue::Decimal(d))
                }
                (TypedKind::Timestamp, v) => {
                    let t = micros(v).ok_or_else(|| bad("not a datetime"))?;
                    encode_value(&mut self.buf, ContentValue::Micros(t))
                }
                _ => return Err(bad("not of the column's type")),
            }
        }
        let recomputed = digest(&self.buf);
        add_to_checksum(&mut self.sum, &recomputed);
        // A stored row_hash that does not match the row's content (edited by hand, on its
        // own or with the content) makes the checksum differ too: the row is re-synced.
        let stored = match row.as_ref(self.kinds.len()) {
            Some(Value::Bytes(b)) => b.as_slice(),
            _ => &[],
        };
        if stored != recomputed.as_slice() {
            self.sum.checksum += 1;
        }
        Ok(())
    }
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::UInt(n) => i64::try_from(*n).ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Double(f) => Some(*f),
        Value::Float(f) => Some(f64::from(*f)),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A DECIMAL as text (`-1234.560000`) scaled by 10^`scale`.
fn decimal(text: &[u8], scale: u32) -> Option<i128> {
    let text = std::str::from_utf8(text).ok()?;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if fraction.len() > scale as usize || whole.is_empty() {
        return None;
    }
    let mut value: i128 = whole.parse().ok()?;
    for i in 0..scale as usize {
        let digit = fraction.as_bytes().get(i).map_or(Some(0), |c| {
            c.is_ascii_digit().then(|| i128::from(c - b'0'))
        })?;
        value = value.checked_mul(10)?.checked_add(digit)?;
    }
    Some(if negative { -value } else { value })
}

/// A DATETIME (read as a date value, or as text) in UTC microseconds.
fn micros(v: &Value) -> Option<i64> {
    let at = match v {
        Value::Date(y, mo, d, h, mi, s, us) => {
            NaiveDate::from_ymd_opt(i32::from(*y), u32::from(*mo), u32::from(*d))?
                .and_hms_micro_opt(u32::from(*h), u32::from(*mi), u32::from(*s), *us)?
        }
        Value::Bytes(b) => {
            NaiveDateTime::parse_from_str(std::str::from_utf8(b).ok()?, "%Y-%m-%d %H:%M:%S%.f")
                .ok()?
        }
        _ => return None,
    };
    Some(at.and_utc().timestamp() * 1_000_000 + i64::from(at.nanosecond() / 1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_read_back_at_the_price_scale() {
        assert_eq!(decimal(b"1234.560000", 6), Some(1_234_560_000));
        assert_eq!(decimal(b"-0.500000", 6), Some(-500_000));
        assert_eq!(decimal(b"7", 6), Some(7_000_000));
        assert_eq!(decimal(b"1.1234567", 6), None);
        assert_eq!(decimal(b"abc", 6), None);
    }

    #[test]
    fn datetimes_read_back_as_utc_microseconds() {
        let v = Value::Date(2024, 1, 2, 3, 4, 5, 6);
        assert_eq!(micros(&v), Some(1_704_164_645_000_006));
        let text = Value::Bytes(b"2024-01-02 03:04:05.000006".to_vec());
        assert_eq!(micros(&text), Some(1_704_164_645_000_006));
    }
}
