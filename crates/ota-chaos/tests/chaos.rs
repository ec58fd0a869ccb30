//! A short run of the fault harness (the `make chaos` table with a few tries of each
//! fault): every fault strikes, and after each the pipeline recovers with nothing lost
//! or duplicated. Uses the step binaries of this workspace's target dir (built by the
//! workspace's test run) and the MySQL/MariaDB server at OTA_TEST_MYSQL_URL.

use std::path::PathBuf;
use std::time::Duration;

use ota_chaos::{ChaosConfig, run, table};

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

#[test]
fn every_fault_strikes_and_the_pipeline_recovers_without_loss_or_duplicates() {
    let config = ChaosConfig {
        bin_dir: bin_dir(),
        server_url: std::env::var("OTA_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into()),
        seed: 11,
        kills_per_step: 2,
        overlaps_per_step: 1,
        cuts: 1,
        days: 2,
        rows_per_day: 400,
        budget: Duration::from_secs(300),
    };
    let outcomes = run(&config).expect("the harness runs");
    let printed = table(&outcomes);
    assert_eq!(outcomes.len(), 10, "{printed}");
    for o in &outcomes {
        assert!(o.tries > 0, "{} never struck:\n{printed}", o.fault);
        assert!(o.clean(), "{}: {:?}\n{printed}", o.fault, o.problems);
    }
}
