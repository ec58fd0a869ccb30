//! Medians and the printed table.

use serde::Serialize;

/// The median of some timings (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// One line of the table: a step or a loader, over its repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub name: String,
    pub rows: u64,
    /// Seconds of each repetition.
    pub seconds: Vec<f64>,
    /// Peak RSS in MiB (max over repetitions); None where not measured (in-process).
    pub peak_rss_mb: Option<f64>,
}

impl Line {
    pub fn median_seconds(&self) -> f64 {
        median(&self.seconds)
    }

    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.median_seconds()
    }
}

pub fn print_table(title: &str, lines: &[Line]) {
    println!("\n{title}");
    println!(
        "{:<34} {:>11} {:>9} {:>12} {:>10}   runs (s)",
        "", "rows", "median s", "rows/s", "peak MiB"
    );
    for line in lines {
        let rss = line
            .peak_rss_mb
            .map_or_else(|| "-".to_string(), |m| format!("{m:.0}"));
        let runs: Vec<String> = line.seconds.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "{:<34} {:>11} {:>9.2} {:>12.0} {:>10}   {}",
            line.name,
            line.rows,
            line.median_seconds(),
            line.rows_per_second(),
            rss,
            runs.join(" ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
