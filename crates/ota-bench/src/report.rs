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
    /// CPU seconds of the contender itself, each repetition.
    pub cpu_seconds: Vec<f64>,
    /// CPU seconds of the local database server meanwhile, each repetition (empty: not
    /// measured).
    pub server_cpu_seconds: Vec<f64>,
}

/// One measurement of a step or loader.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rows: u64,
    pub seconds: f64,
    pub peak_rss_mb: Option<f64>,
    pub cpu_seconds: f64,
    pub server_cpu_seconds: Option<f64>,
}

impl Sample {
    pub fn of_step(run: &crate::child::StepRun, rows: u64) -> Self {
        Sample {
            rows,
            seconds: run.seconds,
            peak_rss_mb: Some(run.peak_rss_mb),
            cpu_seconds: run.cpu_seconds,
            server_cpu_seconds: run.server_cpu_seconds,
        }
    }
}

/// Adds a sample to its line (by name), or starts the line.
pub fn push(lines: &mut Vec<Line>, name: &str, sample: Sample) {
    let line = match lines.iter().position(|l| l.name == name) {
        Some(i) => &mut lines[i],
        None => {
            lines.push(Line {
                name: name.to_string(),
                rows: 0,
                seconds: Vec::new(),
                peak_rss_mb: None,
                cpu_seconds: Vec::new(),
                server_cpu_seconds: Vec::new(),
            });
            let last = lines.len() - 1;
            &mut lines[last]
        }
    };
    line.rows = sample.rows;
    line.seconds.push(sample.seconds);
    line.peak_rss_mb = match (line.peak_rss_mb, sample.peak_rss_mb) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    line.cpu_seconds.push(sample.cpu_seconds);
    if let Some(server) = sample.server_cpu_seconds {
        line.server_cpu_seconds.push(server);
    }
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
        "{:<34} {:>11} {:>9} {:>12} {:>10} {:>7} {:>9}   runs (s)",
        "", "rows", "median s", "rows/s", "peak MiB", "cpu s", "server s"
    );
    for line in lines {
        let rss = line
            .peak_rss_mb
            .map_or_else(|| "-".to_string(), |m| format!("{m:.0}"));
        let runs: Vec<String> = line.seconds.iter().map(|s| format!("{s:.2}")).collect();
        let server = if line.server_cpu_seconds.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", median(&line.server_cpu_seconds))
        };
        println!(
            "{:<34} {:>11} {:>9.2} {:>12.0} {:>10} {:>7.1} {:>9}   {}",
            line.name,
            line.rows,
            line.median_seconds(),
            line.rows_per_second(),
            rss,
            median(&line.cpu_seconds),
            server,
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
