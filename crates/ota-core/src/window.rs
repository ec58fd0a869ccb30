//! The date window a run works on: `start_date..=end_date`, inclusive, in UTC.

use chrono::{Days, NaiveDate, Utc};
use serde::Serialize;

use crate::error::{PipelineError, Result};

/// Days covered when no date is given (ending on the reference date).
pub const DEFAULT_WINDOW_DAYS: u64 = 3;

/// An inclusive range of UTC calendar days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DateWindow {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl DateWindow {
    pub fn new(start: NaiveDate, end: NaiveDate) -> Result<Self> {
        if end < start {
            return Err(PipelineError::Window(format!(
                "end date {end} is before start date {start}"
            )));
        }
        Ok(DateWindow { start, end })
    }

    /// Resolves the window from the optional flags (docs/design.md, "The date window"):
    /// none given -> the 3 days ending on `reference`; only start -> start..=reference;
    /// only end -> end-2..=end.
    pub fn resolve(
        start: Option<&str>,
        end: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Self> {
        let start = start.map(|s| parse_date("start date", s)).transpose()?;
        let end = end.map(|s| parse_date("end date", s)).transpose()?;
        let reference = match reference {
            Some(r) => parse_date("reference date", r)?,
            None => Utc::now().date_naive(),
        };
        let back = |d: NaiveDate| {
            d.checked_sub_days(Days::new(DEFAULT_WINDOW_DAYS - 1))
                .ok_or_else(|| PipelineError::Window(format!("date {d} is out of range")))
        };
        match (start, end) {
            (Some(s), Some(e)) => DateWindow::new(s, e),
            (Some(s), None) => DateWindow::new(s, reference),
            (None, Some(e)) => DateWindow::new(back(e)?, e),
            (None, None) => DateWindow::new(back(reference)?, reference),
        }
    }

    /// Every day of the window, in order.
    pub fn days(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.start.iter_days().take_while(move |d| d <= &self.end)
    }

    pub fn contains(&self, day: NaiveDate) -> bool {
        self.start <= day && day <= self.end
    }

    pub fn len_days(&self) -> i64 {
        (self.end - self.start).num_days() + 1
    }
}

impl std::fmt::Display for DateWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// How a step's window was given, which decides what the step may assume of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSource {
    /// A start or end date was named: a backfill of exactly those days.
    Named,
    /// Only the reference date was given (a scheduled run's data interval).
    Reference,
    /// Nothing was given: the days ending today.
    Today,
}

/// The window a step was asked to work on, resolved once, and how it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedWindow {
    pub window: DateWindow,
    pub source: WindowSource,
}

impl RequestedWindow {
    /// Resolves the optional dates as [`DateWindow::resolve`] does; `None` is not given.
    pub fn resolve(
        start: Option<&str>,
        end: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Self> {
        let window = DateWindow::resolve(start, end, reference)?;
        let source = if start.is_some() || end.is_some() {
            WindowSource::Named
        } else if reference.is_some() {
            WindowSource::Reference
        } else {
            WindowSource::Today
        };
        Ok(RequestedWindow { window, source })
    }

    /// Whether the user named the days (a backfill, for export-mysql).
    pub fn is_named(&self) -> bool {
        self.source == WindowSource::Named
    }

    /// Whether the run said which days it means, by dates or a reference date, rather
    /// than falling back to today.
    pub fn is_pinned(&self) -> bool {
        self.source != WindowSource::Today
    }
}

/// Parses a strict `YYYY-MM-DD` date.
pub fn parse_date(what: &str, text: &str) -> Result<NaiveDate> {
    let ok_shape = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let parsed = ok_shape
        .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten();
    parsed.ok_or_else(|| {
        PipelineError::Window(format!("{what} {text:?} is not a valid YYYY-MM-DD date"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn resolves_every_combination() {
        let r = Some("2024-03-10");
        let w = DateWindow::resolve(None, None, r).unwrap();
        assert_eq!((w.start, w.end), (d("2024-03-08"), d("2024-03-10")));
        let w = DateWindow::resolve(Some("2024-03-01"), None, r).unwrap();
        assert_eq!((w.start, w.end), (d("2024-03-01"), d("2024-03-10")));
        let w = DateWindow::resolve(None, Some("2024-03-01"), r).unwrap();
        assert_eq!((w.start, w.end), (d("2024-02-28"), d("2024-03-01")));
        let w = DateWindow::resolve(Some("2024-02-28"), Some("2024-03-01"), r).unwrap();
        assert_eq!(w.days().count(), 3);
        assert_eq!(w.len_days(), 3);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "2024-3-01",
            "2024-02-30",
            "20240301",
            "yesterday",
            "2024-03-01 ",
        ] {
            let err = DateWindow::resolve(Some(bad), None, Some("2024-03-10")).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
        let err = DateWindow::resolve(Some("2024-03-05"), Some("2024-03-01"), None).unwrap_err();
        assert!(err.to_string().contains("before start"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn a_requested_window_knows_how_it_was_given() {
        let r = Some("2024-03-10");
        let named = RequestedWindow::resolve(None, Some("2024-03-01"), r).unwrap();
        assert!(named.is_named() && named.is_pinned());
        assert_eq!(named.window.start, d("2024-02-28"));
        let scheduled = RequestedWindow::resolve(None, None, r).unwrap();
        assert_eq!(scheduled.source, WindowSource::Reference);
        assert!(!scheduled.is_named() && scheduled.is_pinned());
        let before = Utc::now().date_naive();
        let today = RequestedWindow::resolve(None, None, None).unwrap();
        let after = Utc::now().date_naive();
        assert!(!today.is_pinned());
        assert!([before, after].contains(&today.window.end), "{today:?}");
    }
}
