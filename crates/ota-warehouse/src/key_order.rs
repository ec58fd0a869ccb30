//! Puts a large stream of change rows into event-key order in bounded memory: an external
//! distribution sort. Rows are spread over buckets by the leading bits of their key and
//! spilled to one anonymous temporary file (Arrow IPC, in `$TMPDIR`); then each bucket is
//! read back, sorted and handed on, bucket after bucket. Event keys are MD5 digests, so
//! the buckets are about equally full.
//!
//! A warehouse sorts a small selection itself; a large one it would otherwise sort whole
//! (memory) or slice by key range and scan once per slice (time quadratic in its size).
//! Between the two, a large selection is read in a few [`KeySlice`]s, each through its own
//! buckets: the first rows can go out after one slice instead of the whole selection, at
//! the price of one more scan per slice, so the number of slices stays small.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom};

use arrow::array::RecordBatch;
use arrow::compute::interleave_record_batch;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;

use crate::binary_at;
use ota_core::error::{PipelineError, Result};

/// Rows gathered from the source before they are spread over the buckets and spilled
/// (a key slice fills only its own buckets, so pieces stay a few hundred rows long).
const SPILL_BATCH_ROWS: usize = 16_384;
/// At most 2^12 buckets (a run of a billion rows still sorts ~250 k rows at a time).
const MAX_BUCKET_BITS: u32 = 12;

fn arrow_err(context: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> PipelineError {
    move |e| PipelineError::arrow(context, e)
}

fn spill_err(e: std::io::Error) -> PipelineError {
    PipelineError::io("the sort's spill file in the temp dir (TMPDIR)", e)
}

/// The bucket of a key: its first 16 bits (zero-padded), top `bits` of them. Monotone in
/// the keys' byte order, so buckets in order hold keys in order.
fn bucket_of(key: &[u8], bits: u32) -> usize {
    let hi = key.first().copied().unwrap_or(0);
    let lo = key.get(1).copied().unwrap_or(0);
    usize::from(u16::from_be_bytes([hi, lo]) >> (16 - bits))
}

/// Keys are MD5 digests: 16 bytes.
const KEY_BYTES: usize = 16;

/// A range of event keys, `lo <= key < hi`, bounded by 2-byte prefixes; the last slice's
/// `hi` is above every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlice {
    pub lo: Vec<u8>,
    pub hi: Vec<u8>,
}

/// `count` (a power of two, at most 2^16) slices of equal key range that together hold
/// every key of up to 16 bytes, in key order.
fn equal_key_slices(count: u32) -> Vec<KeySlice> {
    let width = (1u32 << 16) / count.max(1);
    (0..count.max(1))
        .map(|s| {
            let prefix = |n: u32| u16::try_from(n).map(|p| p.to_be_bytes().to_vec());
            KeySlice {
                lo: if s == 0 {
                    Vec::new()
                } else {
                    prefix(s * width).unwrap_or_default()
                },
                hi: prefix((s + 1) * width).unwrap_or_else(|_| vec![0xff; KEY_BYTES + 1]),
            }
        })
        .collect()
}

/// The key slices to read `rows` rows in: about `rows_per_slice` each, a power of two of
/// them, at most `max_slices` (rounded down to a power of two). Where there are several,
/// the first is cut in two, a quarter and three quarters of its range: nothing can be sent
/// before the first slice has been read, and the next one is read while it is sent.
pub fn key_slices(rows: u64, rows_per_slice: u64, max_slices: u32) -> Vec<KeySlice> {
    let wanted = rows.div_ceil(rows_per_slice.max(1)).max(1);
    let cap = 1u32 << (31 - max_slices.max(1).leading_zeros());
    let count = u32::try_from(wanted.min(1 << 16).next_power_of_two())
        .unwrap_or(1 << 16)
        .min(cap);
    let mut slices = equal_key_slices(count);
    let quarter = (1u32 << 16) / count / 4;
    if count > 1
        && quarter > 0
        && let Ok(cut) = u16::try_from(quarter)
    {
        let cut = cut.to_be_bytes().to_vec();
        let first = KeySlice {
            lo: Vec::new(),
            hi: cut.clone(),
        };
        slices[0].lo = cut;
        slices.insert(0, first);
    }
    slices
}

/// The key of every row of a batch, in row order.
fn row_keys<'b>(batch: &'b RecordBatch, name: &str) -> Result<Vec<&'b [u8]>> {
    let keys = batch
        .column_by_name(name)
        .ok_or_else(|| PipelineError::Internal(format!("change rows have no {name} column")))?;
    (0..batch.num_rows())
        .map(|row| {
            binary_at(keys.as_ref(), row)
                .ok_or_else(|| PipelineError::Internal(format!("change row {row} has no {name}")))
        })
        .collect()
}

/// Buckets spilled so far, and the rows waiting to be spilled.
pub struct KeyBuckets {
    key_column: String,
    bits: u32,
    waiting: Vec<RecordBatch>,
    waiting_rows: usize,
    writer: Option<FileWriter<BufWriter<File>>>,
    /// For each bucket, the indices of its batches in the spill file.
    blocks: Vec<Vec<usize>>,
    spilled_batches: usize,
}

impl KeyBuckets {
    /// Enough buckets that each holds about `rows_per_bucket` of `expected_rows`.
    pub fn new(key_column: &str, expected_rows: u64, rows_per_bucket: u64) -> Self {
        let buckets = expected_rows.div_ceil(rows_per_bucket.max(1)).max(2);
        let bits = buckets
            .next_power_of_two()
            .trailing_zeros()
            .clamp(1, MAX_BUCKET_BITS);
        KeyBuckets {
            key_column: key_column.to_string(),
            bits,
            waiting: Vec::new(),
            waiting_rows: 0,
            writer: None,
            blocks: vec![Vec::new(); 1 << bits],
            spilled_batches: 0,
        }
    }

    #[cfg(test)]
    fn buckets(&self) -> usize {
        self.blocks.len()
    }

    /// Takes rows in any order.
    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.waiting_rows += batch.num_rows();
        self.waiting.push(batch);
        if self.waiting_rows >= SPILL_BATCH_ROWS {
            self.spill()?;
        }
        Ok(())
    }

    /// Writes the waiting rows to the spill file, grouped by bucket: one reordering copy,
    /// then one IPC batch per bucket present.
    fn spill(&mut self) -> Result<()> {
        let Some(schema) = self.waiting.first().map(RecordBatch::schema) else {
            return Ok(());
        };
        // A counting sort of (chunk, row) by bucket, then one copy in that order.
        let mut counts = vec![0usize; self.blocks.len() + 1];
        let mut bucket_of_row = Vec::with_capacity(self.waiting_rows);
        for (c, chunk) in self.waiting.iter().enumerate() {
            for (row, key) in row_keys(chunk, &self.key_column)?.into_iter().enumerate() {
                let b = bucket_of(key, self.bits);
                counts[b + 1] += 1;
                bucket_of_row.push((b, c, row));
            }
        }
        for b in 1..counts.len() {
            counts[b] += counts[b - 1];
        }
        let starts = counts.clone();
        let mut order = vec![(0, 0); bucket_of_row.len()];
        for &(b, c, row) in &bucket_of_row {
            order[counts[b]] = (c, row);
            counts[b] += 1;
        }
        drop(bucket_of_row);
        let chunks: Vec<&RecordBatch> = self.waiting.iter().collect();
        let grouped = interleave_record_batch(&chunks, &order)
            .map_err(arrow_err("grouping change rows by key bucket"))?;
        drop((chunks, order));
        self.waiting.clear();
        self.waiting_rows = 0;
        if self.writer.is_none() {
            let file = tempfile::tempfile().map_err(spill_err)?;
            let writer = FileWriter::try_new(BufWriter::with_capacity(1 << 20, file), &schema)
                .map_err(arrow_err("starting the key-order spill file"))?;
            self.writer = Some(writer);
        }
        let writer = self.writer.as_mut().ok_or_else(|| {
            PipelineError::Internal("the key-order spill file is not open".into())
        })?;
        for (b, blocks) in self.blocks.iter_mut().enumerate() {
            let (start, end) = (starts[b], starts[b + 1]);
            if end > start {
                writer
                    .write(&grouped.slice(start, end - start))
                    .map_err(arrow_err("spilling change rows"))?;
                blocks.push(self.spilled_batches);
                self.spilled_batches += 1;
            }
        }
        Ok(())
    }

    /// Hands every row on in key order, one sorted bucket at a time; stops early when
    /// `emit` returns false (and returns false).
    pub fn drain(mut self, emit: &mut dyn FnMut(RecordBatch) -> Result<bool>) -> Result<bool> {
        self.spill()?;
        let Some(mut writer) = self.writer.take() else {
            return Ok(true);
        };
        writer
            .finish()
            .map_err(arrow_err("finishing the key-order spill file"))?;
        let mut file = writer
            .into_inner()
            .map_err(arrow_err("finishing the key-order spill file"))?
            .into_inner()
            .map_err(|e| spill_err(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(spill_err)?;
        let mut reader = FileReader::try_new(BufReader::with_capacity(1 << 20, file), None)
            .map_err(arrow_err("reading the key-order spill file"))?;
        for blocks in &self.blocks {
            if blocks.is_empty() {
                continue;
            }
            let mut parts = Vec::with_capacity(blocks.len());
            for &index in blocks {
                reader
                    .set_index(index)
                    .map_err(arrow_err("reading the key-order spill file"))?;
                let part = reader
                    .next()
                    .transpose()
                    .map_err(arrow_err("reading the key-order spill file"))?
                    .ok_or_else(|| {
                        PipelineError::Internal("the key-order spill file ended early".into())
                    })?;
                parts.push(part);
            }
            // Sort (part, row) by key, then one copy in that order.
            let mut rows: Vec<(&[u8], usize, usize)> = Vec::new();
            for (p, part) in parts.iter().enumerate() {
                let keys = row_keys(part, &self.key_column)?;
                rows.extend(keys.into_iter().enumerate().map(|(row, key)| (key, p, row)));
            }
            rows.sort_unstable();
            let order: Vec<(usize, usize)> = rows.into_iter().map(|(_, p, row)| (p, row)).collect();
            let refs: Vec<&RecordBatch> = parts.iter().collect();
            let sorted = interleave_record_batch(&refs, &order)
                .map_err(arrow_err("sorting a key bucket"))?;
            drop(refs);
            drop(parts);
            if !emit(sorted)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, BinaryArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use md5::Digest;

    use super::*;

    fn batch_of(ids: std::ops::Range<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("event_key", DataType::Binary, false),
        ]));
        let keys: Vec<Vec<u8>> = ids
            .clone()
            .map(|i| md5::Md5::digest(i.to_le_bytes()).to_vec())
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(ids)),
                Arc::new(BinaryArray::from_iter_values(keys.iter())),
            ],
        )
        .unwrap()
    }

    fn drained(buckets: KeyBuckets) -> Vec<(Vec<u8>, i64)> {
        let mut out = Vec::new();
        buckets
            .drain(&mut |b| {
                let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
                let keys = b.column(1).as_binary::<i32>();
                for row in 0..b.num_rows() {
                    out.push((keys.value(row).to_vec(), ids.value(row)));
                }
                Ok(true)
            })
            .unwrap();
        out
    }

    #[test]
    fn every_row_comes_back_once_in_key_order() {
        let mut buckets = KeyBuckets::new("event_key", 100_000, 1_000);
        assert_eq!(buckets.buckets(), 128);
        // Uneven pieces, crossing the spill size.
        let mut start = 0;
        for len in [1, 2_047, 40_000, 0, 7, 57_945] {
            buckets.push(batch_of(start..start + len)).unwrap();
            start += len;
        }
        let out = drained(buckets);
        let mut want: Vec<(Vec<u8>, i64)> = batch_of(0..start)
            .column(1)
            .as_binary::<i32>()
            .iter()
            .zip(0..)
            .map(|(k, i)| (k.unwrap().to_vec(), i))
            .collect();
        want.sort();
        assert_eq!(out.len(), 100_000);
        assert_eq!(out, want);
    }

    fn in_slice(slice: &KeySlice, key: &[u8]) -> bool {
        slice.lo.as_slice() <= key && key < slice.hi.as_slice()
    }

    #[test]
    fn key_slices_hold_every_key_once_in_order() {
        assert_eq!(key_slices(0, 100, 8).len(), 1);
        assert_eq!(key_slices(100, 100, 8).len(), 1);
        // Two halves, the first cut into a quarter and three quarters of its range.
        assert_eq!(key_slices(101, 100, 8).len(), 3);
        assert_eq!(key_slices(101, 100, 8)[0].hi, vec![0x20, 0]);
        assert_eq!(key_slices(2_900_000, 250_000, 16).len(), 17);
        assert_eq!(key_slices(10_000_000, 250_000, 16).len(), 17);
        assert_eq!(key_slices(10_000_000, 1, 12).len(), 9);
        // Too narrow to cut: 2^16 slices of one prefix each.
        assert_eq!(key_slices(u64::MAX, 1, u32::MAX).len(), 1 << 16);
        let edges: [[u8; 16]; 5] = [
            [0; 16],
            [0x0f; 16],
            [0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0x7f; 16],
            [0xff; 16],
        ];
        let layouts = [1, 2, 4, 16, 1 << 16]
            .map(|count| (count as usize, equal_key_slices(count)))
            .into_iter()
            .chain([1, 2, 4, 8, 1 << 14].map(|max| {
                let slices = key_slices(u64::MAX, 1, max);
                (if max == 1 { 1 } else { max as usize + 1 }, slices)
            }));
        for (count, slices) in layouts {
            assert_eq!(slices.len(), count);
            assert!(
                slices
                    .windows(2)
                    .all(|w| w[0].hi == w[1].lo && w[0].lo < w[1].lo)
            );
            let keys = (0..2_000u32)
                .map(|i| md5::Md5::digest(i.to_le_bytes()).to_vec())
                .chain(edges.iter().map(|k| k.to_vec()));
            for key in keys {
                let holding: Vec<usize> = (0..slices.len())
                    .filter(|&s| in_slice(&slices[s], &key))
                    .collect();
                assert_eq!(holding.len(), 1, "{count} slices, key {key:02x?}");
            }
        }
        let halves = equal_key_slices(2);
        assert!(in_slice(&halves[0], &[0x7f; 16]) && in_slice(&halves[1], &[0x80; 16]));
    }

    #[test]
    fn buckets_are_monotone_in_key_order() {
        let keys: [&[u8]; 6] = [&[], &[0], &[0, 0, 1], &[0x7f, 0xff], &[0x80], &[0xff; 16]];
        for bits in 1..=MAX_BUCKET_BITS {
            let of: Vec<usize> = keys.iter().map(|k| bucket_of(k, bits)).collect();
            assert!(of.windows(2).all(|w| w[0] <= w[1]), "bits {bits}: {of:?}");
            assert_eq!(of[5], (1 << bits) - 1);
        }
    }

    #[test]
    fn an_early_stop_and_an_empty_input() {
        assert!(drained(KeyBuckets::new("event_key", 10, 1)).is_empty());
        let mut buckets = KeyBuckets::new("event_key", 1_000, 100);
        buckets.push(batch_of(0..1_000)).unwrap();
        let mut seen = 0;
        let finished = buckets
            .drain(&mut |b| {
                seen += b.num_rows();
                Ok(false)
            })
            .unwrap();
        assert!(!finished);
        assert!(seen > 0 && seen < 1_000);
    }
}
