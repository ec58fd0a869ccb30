//! `ota-gen`: a deterministic generator of realistic, messy case data.
//!
//! Every event is a pure function of (seed, day, slot), so a later day can re-deliver
//! an earlier day's event (with one field corrected) without keeping anything in memory.
//! Daily files hold: funnels of pages within sessions, exact duplicates within the file,
//! re-deliveries of the previous day's events with a corrected `payment_status`, late
//! events of the two previous days, and a few rows without a request_id.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{Days, NaiveDate};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel};
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use ota_core::contract::SOURCE_COLUMNS;
use ota_core::error::{PipelineError, Result};
use ota_lake::daily_file_name;

/// Rows generated per Arrow batch (bounds memory whatever the total).
const GEN_BATCH_ROWS: usize = 32_768;
const DAY_NS: i64 = 86_400_000_000_000;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    pub start: NaiveDate,
    pub days: u32,
    pub rows_per_day: u64,
    pub suffix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenOutcome {
    pub files: Vec<String>,
    pub rows: u64,
}

/// SplitMix64: tiny, fast and stable across versions (the output must not change when
/// a dependency does).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn new(parts: &[u64]) -> Self {
        Rng(parts.iter().fold(0x5EED, |acc, p| mix(acc ^ mix(*p))))
    }
    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

const PAGES: [&str; 5] = [
    "search",
    "hotel_details",
    "room_selection",
    "payment",
    "confirmation",
];
const DEVICES: [&str; 4] = ["mobile", "desktop", "tablet", "Mobile "];
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
    "OTA-App/5.2 (\"beta\"; tab\there)",
];
const HOTELS: [&str; 10] = [
    "Grand Hotel Europa",
    "Hôtel Le Méridien Étoile",
    "東京ベイホテル",
    "Casa \"Azul\" Boutique",
    "O'Brien's Inn",
    "Tab\tSeparated Suites",
    "Line\nBreak Lodge",
    "Back\\slash Résidence",
    "Palm 🌴 Beach Resort 🏨",
    "Zürich Seeblick",
];
const QUERIES: [&str; 8] = [
    "paris 2 adults",
    "hotels near \"Central Park\"",
    "berlin\tmitte",
    "bali 🌴 villa",
    "C:\\trips\\rome",
    "tokyo\nshinjuku",
    "münchen oktoberfest",
    "",
];
const COUNTRIES: [&str; 6] = ["DE", "US", "GB", "FR", "JP", "es"];
const SOURCES: [&str; 5] = ["google", "facebook", "newsletter", "direct", "tiktok"];
const STATUSES: [&str; 3] = ["pending", "failed", "success"];

/// One generated source row (all text but the timestamp, as in the case data).
#[derive(Debug, Clone)]
struct EventRow {
    fields: [Option<String>; 27],
}

fn price_text(rng: &mut Rng, currency: &str, amount_cents: u64) -> Option<String> {
    let units = amount_cents / 100;
    let cents = amount_cents % 100;
    let thousands = |sep: char| {
        let s = units.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(sep);
            }
            out.push(c);
        }
        out
    };
    Some(match rng.below(20) {
        0 => return None,
        1 => "n/a".into(),
        2 => format!("{units},{}", cents / 10), // "1234,5"
        _ => match currency {
            "EUR" => format!("€{},{cents:02}", thousands('.')),
            "GBP" => format!("£{}.{cents:02}", thousands(',')),
            "JPY" => format!("¥{}", thousands(',')),
            _ => format!("${}.{cents:02}", thousands(',')),
        },
    })
}

fn messy_int(rng: &mut Rng, v: u64) -> Option<String> {
    match rng.below(20) {
        0 => None,
        1 => Some("unknown".into()),
        2..=6 => Some(format!("{v}.0")),
        _ => Some(v.to_string()),
    }
}

/// The event in `slot` of `day`'s file. Slots of one session are consecutive pages.
fn event(seed: u64, day: NaiveDate, session: u64, page: usize, late_by_days: u64) -> EventRow {
    let day_num = day.to_epoch_days() as u64;
    let mut s = Rng::new(&[seed, day_num, session, late_by_days]);
    let session_hex = format!("{:016x}", s.next());
    let funnel_hex = format!("{:012x}", s.next() >> 16);
    let user = 1 + s.below(50_000);
    let device = s.pick(&DEVICES);
    let agent = s.pick(&AGENTS);
    let ip = format!(
        "{}.{}.{}.{}",
        1 + s.below(223),
        s.below(256),
        s.below(256),
        1 + s.below(254)
    );
    let country = s.pick(&COUNTRIES);
    let utm = s.pick(&SOURCES);
    let query = s.pick(&QUERIES);
    let hotel = s.below(HOTELS.len() as u64);
    let currency = ["EUR", "USD", "GBP", "JPY"][s.below(4) as usize];
    let guests = 1 + s.below(4);
    let nights = 1 + s.below(10);
    let night_cents = 4_000 + s.below(60_000);
    let subscriber = s.chance(300).then(|| 10_000 + s.below(90_000));
    let email_perm = s.pick(&[
        "yes", "no", "Yes", "NO", "true", "false", "1", "0", "", "maybe",
    ]);
    let phone_perm = s.pick(&["yes", "no", "TRUE", " no ", "1", "0"]);
    // Sessions start within the day, early enough for five pages to stay in it.
    let base_day = day.checked_sub_days(Days::new(late_by_days)).unwrap_or(day);
    let day_start_ns = base_day.to_epoch_days() as i64 * DAY_NS;
    let start_us = s.below(82_800_000_000) as i64; // within 23 h
    let mut p = Rng::new(&[seed, day_num, session, late_by_days, page as u64 + 1]);
    let offset_us: i64 = (0..page)
        .map(|_| 30_000_000 + p.below(240_000_000) as i64)
        .sum::<i64>()
        + page as i64;
    let ts_ns = day_start_ns + (start_us + offset_us) * 1_000;
    let request = format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        p.next() >> 32,
        p.below(1 << 16),
        p.below(1 << 12),
        p.below(1 << 12),
        p.next() >> 16
    );
    let page_name = PAGES[page];
    let booked = page >= 3;
    let mut fields: [Option<String>; 27] = Default::default();
    let mut set = |name: &str, v: Option<String>| {
        if let Some(i) = SOURCE_COLUMNS.iter().position(|c| c.name == name) {
            fields[i] = v;
        }
    };
    set("request_id", Some(request));
    set("funnel_id", Some(format!("fnl-{funnel_hex}")));
    set("session_id", Some(format!("ses-{session_hex}")));
    set("user_id", messy_int(&mut p, user));
    set("user_agent", Some(agent.into()));
    set("device_type", Some(device.into()));
    set("ip_address", Some(ip));
    set("timestamp", Some(ts_ns.to_string()));
    set("page_name", Some(page_name.into()));
    set("subscriber_id", subscriber.map(|v| v.to_string()));
    set("has_email_contact_permission", Some(email_perm.into()));
    set("has_phone_contact_permission", Some(phone_perm.into()));
    set(
        "hotel_price",
        if page >= 1 {
            price_text(&mut p, currency, night_cents * nights)
        } else {
            None
        },
    );
    set("hotel_id", (page >= 1).then(|| (1_000 + hotel).to_string()));
    set("currency", Some(currency.into()));
    set("country", Some(country.into()));
    set("utm_source", Some(utm.into()));
    set("search_query", Some(query.into()));
    set("num_guests", messy_int(&mut p, guests));
    set("destination_id", messy_int(&mut p, 100 + hotel % 7));
    set(
        "hotel_name",
        (page >= 1).then(|| HOTELS[hotel as usize].to_string()),
    );
    set(
        "hotel_rating",
        (page >= 1).then(|| format!("{:.1}", 2.5 + (hotel % 6) as f64 * 0.5)),
    );
    set(
        "selected_room_id",
        (page >= 2).then(|| (hotel * 100 + p.below(20)).to_string()),
    );
    set("nights", messy_int(&mut p, nights));
    set(
        "price_per_night",
        (page >= 1).then(|| format!("{}.{:02}", night_cents / 100, night_cents % 100)),
    );
    set(
        "payment_status",
        booked.then(|| STATUSES[p.below(2) as usize].to_string()),
    );
    set(
        "confirmation_number",
        (page == 4).then(|| format!("CNF-{:010}", p.below(10_000_000_000))),
    );
    EventRow { fields }
}

/// Pages per session: 1 to 5 (a funnel that may drop off).
fn session_depth(seed: u64, day: NaiveDate, session: u64) -> usize {
    1 + (mix(seed ^ mix(day.to_epoch_days() as u64) ^ mix(session.wrapping_mul(31))) % 5) as usize
}

/// Generates the rows of one day's file, in file order, batch by batch.
struct DayRows {
    seed: u64,
    day: NaiveDate,
    total: u64,
    emitted: u64,
    session: u64,
    page: usize,
    late_session: u64,
    last: Option<EventRow>,
    rng: Rng,
}

impl DayRows {
    fn new(seed: u64, day: NaiveDate, total: u64) -> Self {
        DayRows {
            seed,
            day,
            total,
            emitted: 0,
            session: 0,
            page: 0,
            late_session: 1 << 40,
            last: None,
            rng: Rng::new(&[seed, day.to_epoch_days() as u64, 7]),
        }
    }

    fn next_row(&mut self) -> EventRow {
        self.emitted += 1;
        let roll = self.rng.below(1000);
        let row = if roll < 15 && self.last.is_some() {
            // An exact duplicate of the previous row.
            self.last
                .clone()
                .unwrap_or_else(|| event(self.seed, self.day, 0, 0, 0))
        } else if roll < 30 && self.day.to_epoch_days() > 0 {
            // Re-delivery of an event of the previous day, with payment_status corrected.
            let prev = self.day.checked_sub_days(Days::new(1)).unwrap_or(self.day);
            let session = self.rng.below((self.total / 3).max(1));
            let page = session_depth(self.seed, prev, session).min(5) - 1;
            let mut e = event(self.seed, prev, session, page, 0);
            if let Some(i) = SOURCE_COLUMNS
                .iter()
                .position(|c| c.name == "payment_status")
            {
                e.fields[i] = Some("success".into());
            }
            if let Some(i) = SOURCE_COLUMNS
                .iter()
                .position(|c| c.name == "confirmation_number")
            {
                e.fields[i] = Some(format!("CNF-FIX-{session:08}"));
            }
            e
        } else if roll < 50 {
            // A late event: happened one or two days before the file's day.
            self.late_session += 1;
            event(
                self.seed,
                self.day,
                self.late_session,
                0,
                1 + self.rng.below(2),
            )
        } else {
            let e = event(self.seed, self.day, self.session, self.page, 0);
            self.page += 1;
            if self.page >= session_depth(self.seed, self.day, self.session) {
                self.session += 1;
                self.page = 0;
            }
            e
        };
        let mut row = row;
        if self.rng.chance(5) {
            // No request_id: unkeyable, must be rejected.
            row.fields[0] = if self.rng.chance(500) {
                None
            } else {
                Some(String::new())
            };
        }
        self.last = Some(row.clone());
        row
    }

    fn next_batch(&mut self, schema: &SchemaRef) -> Result<Option<RecordBatch>> {
        let n = (self.total - self.emitted).min(GEN_BATCH_ROWS as u64) as usize;
        if n == 0 {
            return Ok(None);
        }
        let mut text: Vec<StringBuilder> = (0..27)
            .map(|_| StringBuilder::with_capacity(n, n * 24))
            .collect();
        let mut ts = Int64Builder::with_capacity(n);
        let ts_index = SOURCE_COLUMNS
            .iter()
            .position(|c| c.name == "timestamp")
            .unwrap_or(7);
        for _ in 0..n {
            let row = self.next_row();
            for (i, v) in row.fields.into_iter().enumerate() {
                if i == ts_index {
                    ts.append_option(v.and_then(|t| t.parse::<i64>().ok()));
                } else {
                    text[i].append_option(v);
                }
            }
        }
        let columns: Vec<ArrayRef> = text
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                if i == ts_index {
                    Arc::new(ts.finish()) as ArrayRef
                } else {
                    Arc::new(b.finish()) as ArrayRef
                }
            })
            .collect();
        RecordBatch::try_new(schema.clone(), columns)
            .map(Some)
            .map_err(|e| PipelineError::arrow("generating rows", e))
    }
}

/// The case data's schema: strings, with `timestamp` as int64 nanoseconds.
pub fn case_schema() -> SchemaRef {
    Arc::new(Schema::new(
        SOURCE_COLUMNS
            .iter()
            .map(|c| {
                let t = if c.name == "timestamp" {
                    DataType::Int64
                } else {
                    DataType::Utf8
                };
                Field::new(c.name, t, true)
            })
            .collect::<Vec<_>>(),
    ))
}

fn writer(path: &Path, compression: Compression) -> Result<ArrowWriter<File>> {
    let f = File::create(path).map_err(|e| PipelineError::io(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    ArrowWriter::try_new(f, case_schema(), Some(props)).map_err(|e| parquet_error(path, e))
}

fn day_of(config: &GenConfig, i: u32) -> Result<NaiveDate> {
    config
        .start
        .checked_add_days(Days::new(u64::from(i)))
        .ok_or_else(|| PipelineError::Config("generated days run past the calendar".into()))
}

fn parquet_error(path: &Path, source: parquet::errors::ParquetError) -> PipelineError {
    PipelineError::Parquet {
        uri: path.display().to_string(),
        source,
    }
}

/// Generates one day's rows into a writer, batch by batch; returns the row count.
fn write_day(
    w: &mut ArrowWriter<File>,
    config: &GenConfig,
    day: NaiveDate,
    path: &Path,
) -> Result<u64> {
    let schema = case_schema();
    let mut rows = 0;
    let mut day_rows = DayRows::new(config.seed, day, config.rows_per_day);
    while let Some(batch) = day_rows.next_batch(&schema)? {
        rows += batch.num_rows() as u64;
        w.write(&batch).map_err(|e| parquet_error(path, e))?;
    }
    Ok(rows)
}

/// Writes one daily file per day into `out`. Each file's modification time (its
/// `ingested_at`) is set to one hour after its day ends, as if it landed the next morning.
pub fn generate_daily_files(config: &GenConfig, out: &Path) -> Result<GenOutcome> {
    std::fs::create_dir_all(out).map_err(|e| PipelineError::io(out, e))?;
    let mut files = Vec::new();
    let mut rows = 0;
    for i in 0..config.days {
        let day = day_of(config, i)?;
        let path: PathBuf = out.join(daily_file_name(day, &config.suffix));
        let tmp = out.join(format!(".{}.gen", daily_file_name(day, &config.suffix)));
        let mut w = writer(&tmp, Compression::SNAPPY)?;
        rows += write_day(&mut w, config, day, &path)?;
        w.close().map_err(|e| parquet_error(&path, e))?;
        let landed = day
            .checked_add_days(Days::new(1))
            .unwrap_or(day)
            .and_hms_opt(1, 0, 0)
            .unwrap_or_default()
            .and_utc();
        let f = File::options()
            .write(true)
            .open(&tmp)
            .map_err(|e| PipelineError::io(&tmp, e))?;
        f.set_modified(landed.into())
            .map_err(|e| PipelineError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| PipelineError::io(&path, e))?;
        files.push(path.display().to_string());
    }
    Ok(GenOutcome { files, rows })
}

/// Writes all days into one case-data file (gzip-compressed pages, like
/// `case_data.parquet.gzip`).
pub fn generate_single_file(config: &GenConfig, path: &Path) -> Result<GenOutcome> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
    }
    let gzip = Compression::GZIP(GzipLevel::default());
    let mut w = writer(path, gzip)?;
    let mut rows = 0;
    for i in 0..config.days {
        rows += write_day(&mut w, config, day_of(config, i)?, path)?;
    }
    w.close().map_err(|e| parquet_error(path, e))?;
    Ok(GenOutcome {
        files: vec![path.display().to_string()],
        rows,
    })
}
