//! Progress of a long step in its log: rows done of the total, rows per second and the
//! time left, at a steady period (`--progress-secs` / `OTA_PROGRESS_SECS`, seconds,
//! default 10; 0 turns it off). The step's summary, the last line of stdout, is not
//! touched: progress goes to the log.

use std::time::{Duration, Instant};

/// The period when none is set.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);

/// What one progress line says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressLine {
    pub done: u64,
    pub total: Option<u64>,
    pub rows_per_sec: f64,
    /// Time left at the rate so far, when the total is known and rows have been done.
    pub eta: Option<Duration>,
}

impl ProgressLine {
    /// Done as a share of the total, in percent.
    pub fn percent(&self) -> Option<f64> {
        self.total
            .filter(|t| *t > 0)
            .map(|t| 100.0 * self.done.min(t) as f64 / t as f64)
    }
}

/// Counts rows through a step and logs where it stands once per period.
#[derive(Debug)]
pub struct Progress {
    step: &'static str,
    what: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    period: Option<Duration>,
    next_at: Instant,
}

impl Progress {
    /// Progress logged every `period` (`None`: never).
    pub fn with_period(
        step: &'static str,
        what: &'static str,
        total: Option<u64>,
        period: Option<Duration>,
    ) -> Self {
        let started = Instant::now();
        Progress {
            step,
            what,
            total,
            done: 0,
            started,
            period,
            next_at: started + period.unwrap_or_default(),
        }
    }

    /// A better estimate of the total (as more of the input becomes known).
    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
    }

    /// Counts `rows` more, and logs a line if the period has passed.
    pub fn advance(&mut self, rows: u64) {
        self.done += rows;
        let Some(period) = self.period else {
            return;
        };
        let now = Instant::now();
        if now >= self.next_at {
            self.log(&self.line_at(now), false);
            self.next_at = now + period;
        }
    }

    pub fn done(&self) -> u64 {
        self.done
    }

    /// Logs the closing line (when progress is logged at all).
    pub fn finish(&self) {
        if self.period.is_some() {
            self.log(&self.line_at(Instant::now()), true);
        }
    }

    /// Where the step stands at `now`.
    pub fn line_at(&self, now: Instant) -> ProgressLine {
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        let rows_per_sec = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let eta = match self.total {
            Some(total) if rows_per_sec > 0.0 => Some(Duration::from_secs_f64(
                total.saturating_sub(self.done) as f64 / rows_per_sec,
            )),
            _ => None,
        };
        ProgressLine {
            done: self.done,
            total: self.total,
            rows_per_sec,
            eta,
        }
    }

    fn log(&self, line: &ProgressLine, finished: bool) {
        let of_total = match (line.total, line.percent()) {
            (Some(t), Some(p)) => format!(" of {t} ({p:.1}%)"),
            (Some(t), None) => format!(" of {t}"),
            _ => String::new(),
        };
        let eta = line
            .eta
            .filter(|_| !finished)
            .map_or_else(String::new, |e| format!(", ETA {}s", e.as_secs()));
        tracing::info!(
            step = self.step,
            done = line.done,
            total = line.total,
            rows_per_sec = line.rows_per_sec.round() as u64,
            eta_secs = line.eta.map(|e| e.as_secs()),
            "{}: {} {}{of_total}, {:.0} rows/s{eta}",
            if finished { "done" } else { "progress" },
            line.done,
            self.what,
            line.rows_per_sec,
        );
    }
}

/// The period a setting names in seconds (`None`: not set), `None` for never (0); the
/// default when unset or unreadable (with a warning: a log setting never fails a step).
pub fn period_of(setting: Option<&str>) -> Option<Duration> {
    let secs = setting.map(|v| {
        v.trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
    });
    match secs {
        Some(Some(period)) if period.is_zero() => None,
        Some(Some(period)) => Some(period),
        Some(None) => {
            tracing::warn!(
                setting = setting.unwrap_or_default(),
                "--progress-secs is not a number of seconds; logging progress every 10 s"
            );
            Some(DEFAULT_PERIOD)
        }
        None => Some(DEFAULT_PERIOD),
    }
}

/// The total rows of a set of files while only some have been opened: the rows of those
/// opened, plus the bytes not yet opened at the rows per byte seen so far.
pub fn estimated_total(rows_opened: u64, bytes_opened: u64, bytes_unopened: u64) -> u64 {
    if bytes_opened == 0 {
        return rows_opened;
    }
    let per_byte = rows_opened as f64 / bytes_opened as f64;
    rows_opened + (bytes_unopened as f64 * per_byte).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_setting_reads_seconds_zero_as_never_and_garbage_as_the_default() {
        assert_eq!(period_of(None), Some(DEFAULT_PERIOD));
        assert_eq!(period_of(Some(" 2.5 ")), Some(Duration::from_millis(2500)));
        assert_eq!(period_of(Some("0")), None);
        // A log setting never fails a step: an unreadable one keeps the default.
        assert_eq!(period_of(Some("ten")), Some(DEFAULT_PERIOD));
        assert_eq!(period_of(Some("-1")), Some(DEFAULT_PERIOD));
    }

    #[test]
    fn a_line_gives_the_rate_the_share_and_the_time_left() {
        let mut p = Progress::with_period("load-raw", "rows", Some(1_000), None);
        p.advance(250);
        let line = p.line_at(p.started + Duration::from_secs(5));
        assert_eq!(line.done, 250);
        assert_eq!(line.rows_per_sec, 50.0);
        assert_eq!(line.percent(), Some(25.0));
        assert_eq!(line.eta, Some(Duration::from_secs(15)));
    }

    #[test]
    fn without_a_total_there_is_no_share_and_no_eta() {
        let mut p = Progress::with_period("export-mysql", "rows", None, None);
        p.advance(10);
        let line = p.line_at(p.started + Duration::from_secs(2));
        assert_eq!(line.rows_per_sec, 5.0);
        assert_eq!((line.percent(), line.eta), (None, None));
    }

    #[test]
    fn a_total_estimated_from_the_files_opened_so_far() {
        assert_eq!(estimated_total(1_000, 10_000, 30_000), 4_000);
        assert_eq!(estimated_total(1_000, 0, 30_000), 1_000);
        assert_eq!(estimated_total(0, 10_000, 30_000), 0);
    }

    #[test]
    fn done_past_the_estimate_reads_as_complete() {
        let mut p = Progress::with_period("load-raw", "rows", Some(100), None);
        p.advance(120);
        let line = p.line_at(p.started + Duration::from_secs(1));
        assert_eq!(line.percent(), Some(100.0));
        assert_eq!(line.eta, Some(Duration::ZERO));
    }
}
