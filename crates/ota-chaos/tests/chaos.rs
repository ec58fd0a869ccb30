//! A short run of the fault harness (the `make chaos` table with a few tries of each
//! fault): every fault strikes, and after each the pipeline recovers with nothing lost
//! or duplicated. Uses the step binaries of this workspace's target dir (built by the
//! workspace's test run) and the MySQL/MariaDB server at OTA_TEST_MYSQL_URL; the server
//! crash needs the MariaDB server binaries (the harness starts a server of its own), the
//! full disk needs root (it mounts a tmpfs).

use std::path::PathBuf;
use std::time::Duration;

use ota_chaos::reference::Difference;
use ota_chaos::{ChaosConfig, Emulators, FaultOutcome, World, run, table};

/// target/<profile>: the test runs from target/<profile>/deps.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf();
    for bin in [
        "stage-files",
        "load-raw",
        "dedup",
        "export-mysql",
        "ota-gen",
    ] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: build the binaries first (cargo build -p ota-cli --bins)",
            dir.join(bin).display()
        );
    }
    dir
}

fn short_run(emulators: Option<Emulators>) -> ChaosConfig {
    ChaosConfig {
        bin_dir: bin_dir(),
        server_url: std::env::var("OTA_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into()),
        seed: 11,
        kills_per_step: 2,
        overlaps_per_step: 1,
        cuts: 1,
        restarts: 1,
        disk_fulls: 1,
        days: 2,
        rows_per_day: 400,
        budget: Duration::from_secs(300),
        emulators,
    }
}

fn assert_every_fault_struck_and_recovered(outcomes: &[FaultOutcome], faults: usize) {
    let printed = table(outcomes);
    assert_eq!(outcomes.len(), faults, "{printed}");
    for o in outcomes {
        assert_eq!(o.skipped, None, "{} was skipped:\n{printed}", o.fault);
        assert!(o.tries > 0, "{} never struck:\n{printed}", o.fault);
        assert!(o.clean(), "{}: {:?}\n{printed}", o.fault, o.problems);
    }
}

#[test]
#[ignore = "needs the GCS and BigQuery emulators: scripts/with-emulators.sh"]
fn on_bigquery_every_fault_strikes_and_the_pipeline_recovers() {
    let env = |var: &str| {
        std::env::var(var)
            .unwrap_or_else(|_| panic!("{var} is not set: run under scripts/with-emulators.sh"))
    };
    let config = ChaosConfig {
        kills_per_step: 1,
        ..short_run(Some(Emulators {
            gcs_endpoint: env("OTA_GCS_ENDPOINT"),
            bq_endpoint: env("OTA_BQ_ENDPOINT"),
            project: "ota-test".into(),
        }))
    };
    let outcomes = run(&config).expect("the harness runs");
    // kill -9 and two at once for each step, and the hostile catalogue.
    assert_every_fault_struck_and_recovered(&outcomes, 9);
}

#[test]
fn every_fault_strikes_and_the_pipeline_recovers_without_loss_or_duplicates() {
    let outcomes = run(&short_run(None)).expect("the harness runs");
    assert_every_fault_struck_and_recovered(&outcomes, 12);
}

/// The witness against a serving table spoilt by hand: every row lost, changed, added or
/// served twice is counted, though `row_hash` and the primary key are left as they were.
#[test]
fn the_witness_counts_rows_lost_changed_added_and_served_twice() {
    let mut world = World::new(&short_run(None), "witness").expect("a world");
    world.prepare().expect("the window runs");
    assert!(world.difference().expect("compared").none());
    world
        .in_db(
            "UPDATE ota_events SET hotel_name = CONCAT(hotel_name, '!') \
             WHERE hotel_name IS NOT NULL ORDER BY event_date, event_key LIMIT 1; \
             DELETE FROM ota_events ORDER BY event_date DESC, event_key LIMIT 2; \
             CREATE TEMPORARY TABLE spoilt AS SELECT * FROM ota_events \
               ORDER BY event_date, event_key LIMIT 2 OFFSET 10; \
             UPDATE spoilt SET event_key = UNHEX(MD5(event_key)); \
             UPDATE spoilt SET request_id = 'not in the lake' ORDER BY event_key LIMIT 1; \
             INSERT INTO ota_events SELECT * FROM spoilt",
        )
        .expect("spoiling the table");
    assert_eq!(
        world.difference().expect("compared"),
        Difference {
            missing: 2,
            different: 1,
            extra: 1,
            duplicated: 1
        }
    );
}
