//! Encodes Arrow change batches for MySQL: the `LOAD DATA` text stream (tab-separated,
//! backslash-escaped, `\N` for NULL, binary as raw escaped bytes, read by the server with
//! `CHARACTER SET binary`, so nothing is converted) and bound values for the INSERT path.
//!
//! Columns are downcast once per batch ([`RowEncoder::new`]); a row is then written with
//! no allocation and no dynamic dispatch: integers by `itoa`, floats by `ryu`, dates and
//! datetimes by hand, text copied whole unless a word-at-a-time scan finds a byte to escape.

use arrow::array::{
    Array, AsArray, BinaryArray, BinaryViewArray, BooleanArray, Date32Array, Decimal128Array,
    FixedSizeBinaryArray, Float64Array, GenericStringArray, Int64Array, LargeBinaryArray,
    RecordBatch, StringViewArray, TimestampMicrosecondArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, TimeUnit};
use mysql_async::Value;

use ota_core::error::{PipelineError, Result};

fn unsupported(name: &str, dt: &DataType) -> PipelineError {
    PipelineError::Internal(format!(
        "column {name} of type {dt} cannot be exported to MySQL"
    ))
}

/// One column of a batch, downcast to its concrete array.
enum Field<'a> {
    Utf8(&'a GenericStringArray<i32>),
    LargeUtf8(&'a GenericStringArray<i64>),
    Utf8View(&'a StringViewArray),
    Binary(&'a BinaryArray),
    LargeBinary(&'a LargeBinaryArray),
    BinaryView(&'a BinaryViewArray),
    FixedBinary(&'a FixedSizeBinaryArray),
    Int64(&'a Int64Array),
    Float64(&'a Float64Array),
    Boolean(&'a BooleanArray),
    Date32(&'a Date32Array),
    Decimal(&'a Decimal128Array, u32),
    Timestamp(&'a TimestampMicrosecondArray),
}

impl<'a> Field<'a> {
    fn of(name: &str, array: &'a dyn Array) -> Result<Self> {
        Ok(match array.data_type() {
            DataType::Utf8 => Field::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Field::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => Field::Utf8View(array.as_string_view()),
            DataType::Binary => Field::Binary(array.as_binary()),
            DataType::LargeBinary => Field::LargeBinary(array.as_binary()),
            DataType::BinaryView => Field::BinaryView(array.as_binary_view()),
            DataType::FixedSizeBinary(_) => Field::FixedBinary(array.as_fixed_size_binary()),
            DataType::Int64 => Field::Int64(array.as_primitive()),
            DataType::Float64 => Field::Float64(array.as_primitive()),
            DataType::Boolean => Field::Boolean(array.as_boolean()),
            DataType::Date32 => Field::Date32(array.as_primitive()),
            DataType::Decimal128(_, scale) => {
                Field::Decimal(array.as_primitive(), (*scale).max(0) as u32)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => Field::Timestamp(array.as_primitive()),
            other => return Err(unsupported(name, other)),
        })
    }

    /// Writes a non-null value as LOAD DATA text.
    fn write_text(&self, row: usize, out: &mut Vec<u8>) {
        match self {
            Field::Utf8(a) => escape_into(out, a.value(row).as_bytes()),
            Field::LargeUtf8(a) => escape_into(out, a.value(row).as_bytes()),
            Field::Utf8View(a) => escape_into(out, a.value(row).as_bytes()),
            Field::Binary(a) => escape_into(out, a.value(row)),
            Field::LargeBinary(a) => escape_into(out, a.value(row)),
            Field::BinaryView(a) => escape_into(out, a.value(row)),
            Field::FixedBinary(a) => escape_into(out, a.value(row)),
            Field::Int64(a) => {
                out.extend_from_slice(itoa::Buffer::new().format(a.value(row)).as_bytes())
            }
            Field::Float64(a) => write_float(out, a.value(row)),
            Field::Boolean(a) => out.push(if a.value(row) { b'1' } else { b'0' }),
            Field::Date32(a) => write_date(out, i64::from(a.value(row))),
            Field::Decimal(a, scale) => write_decimal(out, a.value(row), *scale),
            Field::Timestamp(a) => write_datetime(out, a.value(row)),
        }
    }

    /// The value as a bound parameter.
    fn value(&self, row: usize) -> Value {
        match self {
            Field::Utf8(a) => Value::Bytes(a.value(row).as_bytes().to_vec()),
            Field::LargeUtf8(a) => Value::Bytes(a.value(row).as_bytes().to_vec()),
            Field::Utf8View(a) => Value::Bytes(a.value(row).as_bytes().to_vec()),
            Field::Binary(a) => Value::Bytes(a.value(row).to_vec()),
            Field::LargeBinary(a) => Value::Bytes(a.value(row).to_vec()),
            Field::BinaryView(a) => Value::Bytes(a.value(row).to_vec()),
            Field::FixedBinary(a) => Value::Bytes(a.value(row).to_vec()),
            Field::Int64(a) => Value::Int(a.value(row)),
            Field::Float64(a) => Some(a.value(row))
                .filter(|v| v.is_finite())
                .map_or(Value::NULL, Value::Double),
            Field::Boolean(a) => Value::Int(i64::from(a.value(row))),
            other => {
                let mut text = Vec::with_capacity(26);
                other.write_text(row, &mut text);
                Value::Bytes(text)
            }
        }
    }
}

/// A column to encode: its values and where its nulls are.
struct Column<'a> {
    field: Field<'a>,
    nulls: Option<&'a NullBuffer>,
}

impl Column<'_> {
    fn is_null(&self, row: usize) -> bool {
        self.nulls.is_some_and(|n| n.is_null(row))
    }
}

/// Writes the chosen columns of a batch's rows, in the given order.
pub struct RowEncoder<'a> {
    fields: Vec<Column<'a>>,
}

impl<'a> RowEncoder<'a> {
    /// `columns`: indices into the batch, in the order the statement names them.
    pub fn new(batch: &'a RecordBatch, columns: &[usize]) -> Result<Self> {
        let schema = batch.schema_ref();
        let fields = columns
            .iter()
            .map(|&i| {
                let column = batch.columns().get(i).ok_or_else(|| {
                    PipelineError::Internal(format!("a change batch has no column {i}"))
                })?;
                Ok(Column {
                    field: Field::of(schema.field(i).name(), column.as_ref())?,
                    nulls: column.nulls(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RowEncoder { fields })
    }

    /// Appends one row as a LOAD DATA line.
    pub fn write_line(&self, row: usize, out: &mut Vec<u8>) {
        for (i, column) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            if column.is_null(row) {
                out.extend_from_slice(b"\\N");
            } else {
                column.field.write_text(row, out);
            }
        }
        out.push(b'\n');
    }

    /// Appends one row's values as bound parameters.
    pub fn push_values(&self, row: usize, out: &mut Vec<Value>) {
        for column in &self.fields {
            out.push(if column.is_null(row) {
                Value::NULL
            } else {
                column.field.value(row)
            });
        }
    }

    pub fn columns(&self) -> usize {
        self.fields.len()
    }
}

/// Whether any byte of `bytes` may need a LOAD DATA escape: a backslash or a byte below
/// 0x0E (NUL, tab, newline and carriage return are; the few others below 0x0E are false
/// alarms the exact pass copies as they are). Eight bytes at a time: for a word `x`,
/// `(x - n·0x0101..) & !x & 0x8080..` is non-zero exactly when some byte of `x` is below `n`.
fn may_need_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_ne_bytes(w);
        if below(x, 0x0E) | below(x ^ BACKSLASHES, 1) != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x0E || b == b'\\')
}

/// Writes a text field with LOAD DATA escapes.
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    if !may_need_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            0 => b"\\0",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn write_float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        // MySQL has no infinities or NaN: such a value is not a number it can hold.
        out.extend_from_slice(b"\\N");
    }
}

fn push_digits(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut v = value;
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// (year, month, day) of days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn write_date(out: &mut Vec<u8>, days: i64) {
    let (year, month, day) = civil_from_days(days);
    if (0..=9999).contains(&year) {
        push_digits(out, year as u32, 4);
    } else {
        // Outside what MySQL's DATE holds: written as is, so the server rejects it.
        out.extend_from_slice(itoa::Buffer::new().format(year).as_bytes());
    }
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
}

fn write_datetime(out: &mut Vec<u8>, micros: i64) {
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    write_date(out, micros.div_euclid(MICROS_PER_DAY));
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let secs = (in_day / 1_000_000) as u32;
    out.push(b' ');
    push_digits(out, secs / 3600, 2);
    out.push(b':');
    push_digits(out, secs / 60 % 60, 2);
    out.push(b':');
    push_digits(out, secs % 60, 2);
    out.push(b'.');
    push_digits(out, (in_day % 1_000_000) as u32, 6);
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` of UTC microseconds.
pub fn datetime_text(micros: i64) -> String {
    let mut out = Vec::with_capacity(26);
    write_datetime(&mut out, micros);
    String::from_utf8(out).unwrap_or_default()
}

fn write_decimal(out: &mut Vec<u8>, value: i128, scale: u32) {
    let abs = value.unsigned_abs();
    if value < 0 {
        out.push(b'-');
    }
    let div = 10u128.pow(scale.min(38));
    out.extend_from_slice(itoa::Buffer::new().format(abs / div).as_bytes());
    if scale > 0 {
        out.push(b'.');
        let mut digits = itoa::Buffer::new();
        let frac = digits.format(abs % div).as_bytes();
        out.extend(std::iter::repeat_n(
            b'0',
            (scale as usize).saturating_sub(frac.len()),
        ));
        out.extend_from_slice(frac);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, BinaryArray, StringArray};
    use arrow::datatypes::{Field as ArrowField, Schema};

    use super::*;

    #[test]
    fn escapes_every_special_byte() {
        let mut out = Vec::new();
        escape_into(&mut out, "a\tb\nc\\d\re\0f 😀\"'".as_bytes());
        assert_eq!(out, "a\\tb\\nc\\\\d\\re\\0f 😀\"'".as_bytes());
    }

    /// The escapes byte by byte, as the reference for the word-at-a-time scan.
    fn escaped_slowly(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                0 => out.extend_from_slice(b"\\0"),
                _ => out.push(b),
            }
        }
        out
    }

    #[test]
    fn the_word_scan_escapes_any_byte_at_any_position() {
        for len in 0..40 {
            let plain = vec![b'a'; len];
            assert!(!may_need_escape(&plain), "len {len}");
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut text = plain.clone();
                    text[pos] = b;
                    let mut out = Vec::new();
                    escape_into(&mut out, &text);
                    assert_eq!(out, escaped_slowly(&text), "byte {b} at {pos} of {len}");
                    if matches!(b, 0 | b'\t' | b'\n' | b'\r' | b'\\') {
                        assert!(may_need_escape(&text), "byte {b} at {pos} of {len}");
                    }
                }
            }
        }
        // Only bytes below 0x0E and the backslash send text down the exact pass.
        for b in (0x0E..=255u8).filter(|&b| b != b'\\') {
            assert!(!may_need_escape(&[b; 19]), "byte {b}");
        }
    }

    #[test]
    fn decimals_and_datetimes() {
        let mut out = Vec::new();
        write_decimal(&mut out, -1_234_560_000, 6);
        out.push(b' ');
        write_decimal(&mut out, 5, 6);
        out.push(b' ');
        write_decimal(&mut out, 42, 0);
        assert_eq!(String::from_utf8(out).unwrap(), "-1234.560000 0.000005 42");
        assert_eq!(
            datetime_text(1_704_067_200_000_001),
            "2024-01-01 00:00:00.000001"
        );
    }

    #[test]
    fn datetimes_match_chrono_across_eras() {
        // Every 7919 minutes from 1000-01-01 to 9999-12-31, plus edges and negatives.
        let first = -30_610_224_000_000_000i64;
        let last = 253_402_300_799_999_999i64;
        let step = 7_919 * 60_000_000 + 123_457;
        let mut at = first;
        while at <= last {
            let want = chrono::DateTime::from_timestamp_micros(at)
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S%.6f")
                .to_string();
            assert_eq!(datetime_text(at), want, "at {at}");
            at += step;
        }
        assert_eq!(datetime_text(last), "9999-12-31 23:59:59.999999");
        assert_eq!(datetime_text(-1), "1969-12-31 23:59:59.999999");
    }

    #[test]
    fn lines_follow_the_chosen_columns_and_escape_binary() {
        let schema = Arc::new(Schema::new(vec![
            ArrowField::new("k", DataType::Binary, false),
            ArrowField::new("t", DataType::Utf8, true),
            ArrowField::new("f", DataType::Float64, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(BinaryArray::from(vec![&[0u8, 9, 10, 92, 255][..], b"ab"])),
            Arc::new(StringArray::from(vec![Some("x\ty"), None])),
            Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN)])),
        ];
        let batch = RecordBatch::try_new(schema, columns).unwrap();
        let encoder = RowEncoder::new(&batch, &[2, 0, 1]).unwrap();
        let mut out = Vec::new();
        encoder.write_line(0, &mut out);
        encoder.write_line(1, &mut out);
        assert_eq!(
            out,
            b"1.5\t\\0\\t\\n\\\\\xff\tx\\ty\n\\N\tab\t\\N\n".to_vec()
        );
        let mut values = Vec::new();
        encoder.push_values(1, &mut values);
        assert_eq!(
            values,
            vec![Value::NULL, Value::Bytes(b"ab".to_vec()), Value::NULL]
        );
        assert!(RowEncoder::new(&batch, &[3]).is_err());
    }
}
