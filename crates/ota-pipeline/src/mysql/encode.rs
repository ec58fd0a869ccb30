//! Encodes Arrow change batches for MySQL: the `LOAD DATA` text stream (tab-separated,
//! backslash-escaped, `\N` for NULL, binary as hex) and bound values for the INSERT
//! fallback. No per-field String is allocated.

use std::io::Write;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float64Type, Int64Type, TimeUnit,
    TimestampMicrosecondType,
};
use mysql_async::Value;

use crate::error::{PipelineError, Result};
use crate::typing::date_of_epoch_day;
use crate::warehouse::binary_at;

fn unsupported(dt: &DataType) -> PipelineError {
    PipelineError::Config(format!("column type {dt} cannot be exported to MySQL"))
}

/// Writes a text field with LOAD DATA escapes.
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
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

fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` of UTC microseconds.
pub fn datetime_text(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
        .unwrap_or_default()
}

fn write_datetime(out: &mut Vec<u8>, micros: i64) {
    if let Some(t) = chrono::DateTime::from_timestamp_micros(micros) {
        let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f"));
    }
}

fn write_decimal(out: &mut Vec<u8>, value: i128, scale: i8) {
    let scale = scale.max(0) as u32;
    let div = 10i128.pow(scale);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    let _ = write!(out, "{sign}{}", abs / div as u128);
    if scale > 0 {
        let _ = write!(
            out,
            ".{:0width$}",
            abs % div as u128,
            width = scale as usize
        );
    }
}

/// Appends the rows of a batch to a LOAD DATA stream.
pub fn encode_tsv(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
    for col in batch.columns() {
        check_supported(col.data_type())?;
    }
    for row in 0..batch.num_rows() {
        for (i, col) in batch.columns().iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            if col.is_null(row) {
                out.extend_from_slice(b"\\N");
                continue;
            }
            match col.data_type() {
                DataType::Utf8 => escape_into(out, col.as_string::<i32>().value(row).as_bytes()),
                DataType::LargeUtf8 => {
                    escape_into(out, col.as_string::<i64>().value(row).as_bytes())
                }
                DataType::Utf8View => escape_into(out, col.as_string_view().value(row).as_bytes()),
                DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::FixedSizeBinary(_) => {
                    hex_into(out, binary_at(col.as_ref(), row).unwrap_or_default())
                }
                DataType::Int64 => {
                    let _ = write!(out, "{}", col.as_primitive::<Int64Type>().value(row));
                }
                DataType::Float64 => {
                    let _ = write!(out, "{}", col.as_primitive::<Float64Type>().value(row));
                }
                DataType::Boolean => out.push(if col.as_boolean().value(row) {
                    b'1'
                } else {
                    b'0'
                }),
                DataType::Date32 => {
                    let d = date_of_epoch_day(col.as_primitive::<Date32Type>().value(row));
                    let _ = write!(out, "{}", d.format("%Y-%m-%d"));
                }
                DataType::Decimal128(_, scale) => {
                    write_decimal(out, col.as_primitive::<Decimal128Type>().value(row), *scale)
                }
                DataType::Timestamp(TimeUnit::Microsecond, _) => write_datetime(
                    out,
                    col.as_primitive::<TimestampMicrosecondType>().value(row),
                ),
                other => return Err(unsupported(other)),
            }
        }
        out.push(b'\n');
    }
    Ok(())
}

fn check_supported(dt: &DataType) -> Result<()> {
    match dt {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_)
        | DataType::Int64
        | DataType::Float64
        | DataType::Boolean
        | DataType::Date32
        | DataType::Decimal128(_, _)
        | DataType::Timestamp(TimeUnit::Microsecond, _) => Ok(()),
        other => Err(unsupported(other)),
    }
}

/// The values of one row, for the multi-row INSERT fallback.
pub fn row_values(batch: &RecordBatch, row: usize, out: &mut Vec<Value>) -> Result<()> {
    for col in batch.columns() {
        if col.is_null(row) {
            out.push(Value::NULL);
            continue;
        }
        let v = match col.data_type() {
            DataType::Utf8 => Value::Bytes(col.as_string::<i32>().value(row).as_bytes().to_vec()),
            DataType::LargeUtf8 => {
                Value::Bytes(col.as_string::<i64>().value(row).as_bytes().to_vec())
            }
            DataType::Utf8View => Value::Bytes(col.as_string_view().value(row).as_bytes().to_vec()),
            DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_) => {
                Value::Bytes(binary_at(col.as_ref(), row).unwrap_or_default().to_vec())
            }
            DataType::Int64 => Value::Int(col.as_primitive::<Int64Type>().value(row)),
            DataType::Float64 => Value::Double(col.as_primitive::<Float64Type>().value(row)),
            DataType::Boolean => Value::Int(i64::from(col.as_boolean().value(row))),
            DataType::Date32 => Value::Bytes(
                date_of_epoch_day(col.as_primitive::<Date32Type>().value(row))
                    .format("%Y-%m-%d")
                    .to_string()
                    .into_bytes(),
            ),
            DataType::Decimal128(_, scale) => {
                let mut b = Vec::new();
                write_decimal(
                    &mut b,
                    col.as_primitive::<Decimal128Type>().value(row),
                    *scale,
                );
                Value::Bytes(b)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => Value::Bytes(
                datetime_text(col.as_primitive::<TimestampMicrosecondType>().value(row))
                    .into_bytes(),
            ),
            other => return Err(unsupported(other)),
        };
        out.push(v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_special_byte() {
        let mut out = Vec::new();
        escape_into(&mut out, "a\tb\nc\\d\re\0f 😀\"'".as_bytes());
        assert_eq!(out, "a\\tb\\nc\\\\d\\re\\0f 😀\"'".as_bytes());
    }

    #[test]
    fn decimals_and_datetimes() {
        let mut out = Vec::new();
        write_decimal(&mut out, -1_234_560_000, 6);
        out.push(b' ');
        write_decimal(&mut out, 5, 6);
        assert_eq!(String::from_utf8(out).unwrap(), "-1234.560000 0.000005");
        assert_eq!(
            datetime_text(1_704_067_200_000_001),
            "2024-01-01 00:00:00.000001"
        );
    }
}
