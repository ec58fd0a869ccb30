//! The fault harness behind `make chaos`: runs the step binaries on the embedded default
//! against a real MySQL/MariaDB server and hurts them — `kill -9` at random points,
//! two runs of a step at once, the MySQL connection cut mid-export, hostile input. After
//! each fault the window is run again; then `export-mysql --reconcile` must find no drift,
//! MySQL must serve no event twice, and the export offset must never have moved back.
//! At the end the serving table is compared, row by row and column by column, with the
//! independent reference (`docs/reference.sql`) over the final lake: expected rows missing
//! or different are lost, rows the lake does not call for are extra.

pub mod disk;
pub mod proxy;
pub mod reference;
pub mod server;
pub mod world;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use world::{HarnessError, World};

/// What `make chaos` runs.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Folder of the step binaries and ota-gen.
    pub bin_dir: std::path::PathBuf,
    /// Server URL without a database (`mysql://root@127.0.0.1:3306`); the harness makes
    /// and drops databases of its own.
    pub server_url: String,
    /// Seeds every random choice: the same seed tries the same points.
    pub seed: u64,
    /// `kill -9` tries per step.
    pub kills_per_step: u32,
    /// Overlapping-run tries per step.
    pub overlaps_per_step: u32,
    /// Connection cuts during export-mysql.
    pub cuts: u32,
    /// MySQL server crashes (and restarts) during export-mysql, on a server of the
    /// harness's own.
    pub restarts: u32,
    /// Runs of the window on a disk that fills up under the DuckDB file and spill dir.
    pub disk_fulls: u32,
    /// Days and rows per day of the generated lake.
    pub days: u32,
    pub rows_per_day: u64,
    /// The time trying faults may take, shared among them (checks after each still run).
    pub budget: Duration,
    /// Runs the steps on a gs:// lake and a BigQuery warehouse on these emulators
    /// instead of the embedded default, against the same reference. The MySQL connection
    /// cut, the server crash, the disk-full faults and the operator actions of the
    /// hostile catalogue are embedded-only.
    pub emulators: Option<Emulators>,
}

/// Where the GCS and BigQuery emulators answer (scripts/with-emulators.sh).
#[derive(Debug, Clone)]
pub struct Emulators {
    pub gcs_endpoint: String,
    pub bq_endpoint: String,
    pub project: String,
}

/// One row of the harness's table.
#[derive(Debug, Clone, Serialize)]
pub struct FaultOutcome {
    pub fault: String,
    pub tries: u32,
    /// Tries after which the re-run and `--reconcile` were clean.
    pub recovered: u32,
    /// Rows of the reference missing or different in MySQL at the end.
    pub lost_rows: u64,
    /// Rows MySQL serves at the end whose event the reference does not have.
    pub extra_rows: u64,
    /// Events MySQL serves more than once at the end (under two keys or dates).
    pub duplicated_rows: u64,
    /// Problems seen (a failed re-run, drift, an offset that moved back).
    pub problems: Vec<String>,
    /// Why the fault could not be tried here (no MariaDB server binary, no right to
    /// mount a tmpfs).
    pub skipped: Option<String>,
}

impl FaultOutcome {
    pub fn clean(&self) -> bool {
        self.recovered == self.tries
            && self.lost_rows == 0
            && self.extra_rows == 0
            && self.duplicated_rows == 0
            && self.problems.is_empty()
    }
}

/// A small seeded generator (xorshift64*): the harness needs reproducible choices only.
#[derive(Debug, Clone)]
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn roll(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration in [0, max).
    pub fn within(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros().max(1) as u64;
        Duration::from_micros(self.roll() % micros)
    }
}

/// The time faults may take, shared out in proportion to the tries each plans: a fault
/// may start tries until its share, counted from the start of the run, has passed, so a
/// fault done early leaves its time to the next ones and none is starved by those before.
struct Budget {
    started: Instant,
    total: Duration,
    /// Planned tries of each fault, in run order.
    weights: Vec<u32>,
    current: usize,
}

impl Budget {
    fn new(total: Duration, weights: Vec<u32>) -> Self {
        Budget {
            started: Instant::now(),
            total,
            weights,
            current: 0,
        }
    }

    fn next_fault(&mut self) {
        self.current += 1;
    }

    /// Whether the current fault may start another try: its first always (every fault in
    /// the table struck at least once), the next ones while its share lasts.
    fn open(&self, tries: u32) -> bool {
        if tries == 0 {
            return true;
        }
        let all: u32 = self.weights.iter().sum();
        let through: u32 = self.weights.iter().take(self.current).sum();
        let share = if all == 0 {
            1.0
        } else {
            f64::from(through) / f64::from(all)
        };
        self.started.elapsed() < self.total.mul_f64(share)
    }
}

/// Tries a fault until it struck `planned` times, while its share of the budget lasts;
/// `attempt(i, outcome)` makes draw `i` and says whether the fault struck and whether the
/// pipeline recovered. A draw that did not strike (a kill point past the step's end) is
/// drawn again, at most four draws per planned try.
fn try_fault(
    outcome: &mut FaultOutcome,
    planned: u32,
    budget: &Budget,
    mut attempt: impl FnMut(u32, &mut FaultOutcome) -> Result<(bool, bool), HarnessError>,
) -> Result<(), HarnessError> {
    let mut i = 0;
    while outcome.tries < planned && i < 4 * planned && budget.open(outcome.tries) {
        let (struck, clean) = attempt(i, outcome)?;
        outcome.count(struck, clean);
        i += 1;
    }
    Ok(())
}

/// The most free space a disk-full try leaves: less than one changed day's load writes.
const DISK_FULL_HEADROOM: u64 = 3 << 20;

/// The writing steps, in pipeline order.
pub const STEPS: [&str; 4] = ["stage-files", "load-raw", "dedup", "export-mysql"];

/// Runs every fault of `config` and returns the table's rows.
pub fn run(config: &ChaosConfig) -> Result<Vec<FaultOutcome>, HarnessError> {
    let mut dice = Dice::new(config.seed);
    let mut outcomes = Vec::new();
    let mut weights = vec![config.kills_per_step; STEPS.len()];
    weights.extend([config.overlaps_per_step; STEPS.len()]);
    if config.emulators.is_none() {
        weights.extend([config.cuts, config.restarts, config.disk_fulls]);
    }
    let hostile: Vec<_> = world::HOSTILE_INPUTS
        .into_iter()
        .filter(|h| config.emulators.is_none() || !h.is_operator_action())
        .collect();
    weights.push(hostile.len() as u32);
    let mut budget = Budget::new(config.budget, weights);

    for step in STEPS {
        budget.next_fault();
        let mut world = World::new(config, &format!("kill_{}", step.replace('-', "_")))?;
        let mut outcome = FaultOutcome::new(format!("kill -9 {step}"));
        world.prepare()?;
        let took = world.timed_run_until(step)?;
        // A try counts when the step was killed while running; a point past its end is
        // drawn again.
        try_fault(
            &mut outcome,
            config.kills_per_step,
            &budget,
            |i, outcome| {
                world.change_one_day(i)?;
                world.run_before(step)?;
                let after = dice.within(took.mul_f64(1.1) + Duration::from_millis(10));
                let killed = world.kill_after(step, after)?;
                Ok((killed, world.recover_from(step, outcome)?))
            },
        )?;
        world.finish(&mut outcome)?;
        outcomes.push(outcome);
    }

    for step in STEPS {
        budget.next_fault();
        let mut world = World::new(config, &format!("overlap_{}", step.replace('-', "_")))?;
        let mut outcome = FaultOutcome::new(format!("two {step} at once"));
        world.prepare()?;
        try_fault(
            &mut outcome,
            config.overlaps_per_step,
            &budget,
            |i, outcome| {
                world.change_one_day(i)?;
                world.run_before(step)?;
                let before = outcome.problems.len();
                world.overlap(step, outcome)?;
                let clean = world.recover(outcome)? && outcome.problems.len() == before;
                Ok((true, clean))
            },
        )?;
        world.finish(&mut outcome)?;
        outcomes.push(outcome);
    }

    // The MySQL faults below and the disk under DuckDB do not depend on the warehouse:
    // they are tried on the embedded default only.
    if config.emulators.is_none() {
        budget.next_fault();
        let mut world = World::new(config, "cut")?;
        let mut outcome = FaultOutcome::new("MySQL connection cut mid-export".into());
        world.prepare()?;
        try_fault(&mut outcome, config.cuts, &budget, |i, outcome| {
            world.change_one_day(i)?;
            world.run_before("export-mysql")?;
            let after_bytes = 2_000 + dice.roll() % 200_000;
            let cut = world.export_through_cut(after_bytes)?;
            Ok((cut, world.recover_from("export-mysql", outcome)?))
        })?;
        world.finish(&mut outcome)?;
        outcomes.push(outcome);
    }

    if config.emulators.is_none() {
        budget.next_fault();
        let mut outcome = FaultOutcome::new("MySQL server crashed and restarted mid-export".into());
        let mut world = World::new(config, "restart")?;
        match world.use_private_server() {
            Ok(()) => {
                world.prepare()?;
                let took = world.timed_run_until("export-mysql")?;
                try_fault(&mut outcome, config.restarts, &budget, |i, outcome| {
                    world.change_one_day(i)?;
                    world.run_before("export-mysql")?;
                    let after = dice.within(took.mul_f64(1.1) + Duration::from_millis(10));
                    let struck = world.export_through_restart(after)?;
                    Ok((struck, world.recover_from("export-mysql", outcome)?))
                })?;
                world.finish(&mut outcome)?;
            }
            Err(e) => outcome.skipped = Some(e.to_string()),
        }
        outcomes.push(outcome);
    }

    if config.emulators.is_none() {
        budget.next_fault();
        let mut outcome = FaultOutcome::new("disk full under the DuckDB file and spill dir".into());
        let mut world = World::new(config, "disk_full")?;
        match world.use_small_disk() {
            Ok(()) => {
                world.prepare()?;
                try_fault(&mut outcome, config.disk_fulls, &budget, |i, outcome| {
                    world.change_one_day(i)?;
                    // A try that found room enough strikes nothing; each next one leaves
                    // less room, and the last none, so the fault strikes at least once.
                    let last = i + 1 >= 4 * config.disk_fulls;
                    let headroom = if last {
                        0
                    } else {
                        dice.roll() % (DISK_FULL_HEADROOM >> i.min(16))
                    };
                    let struck = world.run_on_full_disk(headroom, outcome)?;
                    Ok((struck, world.recover(outcome)?))
                })?;
                world.finish(&mut outcome)?;
            }
            Err(e) => outcome.skipped = Some(e.to_string()),
        }
        outcomes.push(outcome);
    }

    {
        let mut world = World::new(config, "hostile")?;
        let mut outcome = FaultOutcome::new("hostile input catalogue".into());
        world.prepare()?;
        for (i, hostile) in hostile.into_iter().enumerate() {
            let clean = world.try_hostile(hostile, i as u32, &mut outcome)?;
            outcome.count(true, clean);
        }
        world.finish(&mut outcome)?;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

impl FaultOutcome {
    /// Counts a try (when the fault really struck) and whether it recovered.
    fn count(&mut self, struck: bool, clean: bool) {
        if struck {
            self.tries += 1;
            self.recovered += u32::from(clean);
        }
    }

    fn new(fault: String) -> Self {
        FaultOutcome {
            fault,
            tries: 0,
            recovered: 0,
            lost_rows: 0,
            extra_rows: 0,
            duplicated_rows: 0,
            problems: Vec::new(),
            skipped: None,
        }
    }
}

/// The table `make chaos` prints (Markdown, as in docs/operations.md).
pub fn table(outcomes: &[FaultOutcome]) -> String {
    let mut out = String::from(
        "| fault | tries | recovered | lost rows | extra rows | duplicated events |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        match &o.skipped {
            Some(why) => out.push_str(&format!("| {} | skipped: {why} | | | | |\n", o.fault)),
            None => out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                o.fault, o.tries, o.recovered, o.lost_rows, o.extra_rows, o.duplicated_rows
            )),
        }
    }
    out
}
