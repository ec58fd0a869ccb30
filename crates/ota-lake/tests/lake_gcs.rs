//! The GCS lake against fake-gcs-server (run by `scripts/with-emulators.sh`, which sets
//! OTA_GCS_ENDPOINT inside a network namespace with no way out). A download cut off
//! halfway (through a faulty proxy) is tried again.

mod faulty_http;

use std::path::Path;

use chrono::NaiveDate;
use ota_core::DateWindow;
use ota_lake::gcp::{BlockingRuntime, Credentials};
use ota_lake::gcs::client::GcsClient;
use ota_lake::gcs::{GcsLake, GcsSettings};
use ota_lake::{Lake, PutOutcome};

/// GCS reached as the emulators' environment says (scripts/with-emulators.sh).
fn settings() -> GcsSettings {
    GcsSettings::from_lookup(|var| std::env::var(var).ok()).expect("the emulators' settings")
}

fn endpoint() -> String {
    std::env::var("OTA_GCS_ENDPOINT")
        .expect("OTA_GCS_ENDPOINT (run under scripts/with-emulators.sh)")
}

/// A fresh bucket on the emulator.
fn bucket(name: &str) -> String {
    let rt = BlockingRuntime::new().unwrap();
    let url = format!("{}/storage/v1/b", endpoint());
    rt.block_on(async {
        let response = reqwest::Client::new()
            .post(&url)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success() || response.status().as_u16() == 409,
            "creating bucket {name}: {}",
            response.status()
        );
    });
    name.to_string()
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// Deterministic, incompressible-looking content of `len` bytes.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
#[ignore = "needs the GCS emulator: scripts/with-emulators.sh"]
fn uploads_skip_identical_objects_and_resume_big_ones() {
    let b = bucket("ota-put");
    let lake = GcsLake::open(&format!("gs://{b}/daily"), &settings()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    write(&small, &content(1000, 1));
    assert_eq!(
        lake.put_file("20240101_OTA.parquet", &small).unwrap(),
        PutOutcome::Written
    );
    assert_eq!(
        lake.put_file("20240101_OTA.parquet", &small).unwrap(),
        PutOutcome::Unchanged
    );
    write(&small, &content(1000, 2));
    assert_eq!(
        lake.put_file("20240101_OTA.parquet", &small).unwrap(),
        PutOutcome::Written
    );

    // Over the simple-upload limit: the resumable protocol, several chunks.
    let big = dir.path().join("big");
    let big_bytes = content(40 << 20, 3);
    write(&big, &big_bytes);
    assert_eq!(
        lake.put_file("20240102_OTA.parquet", &big).unwrap(),
        PutOutcome::Written
    );
    assert_eq!(
        lake.put_file("20240102_OTA.parquet", &big).unwrap(),
        PutOutcome::Unchanged
    );
    let files = lake
        .list_daily_files(
            &DateWindow::new(day("2024-01-01"), day("2024-01-02")).unwrap(),
            "OTA",
            &mut |_| Ok(Default::default()),
        )
        .unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[1].uri, format!("gs://{b}/daily/20240102_OTA.parquet"));
    assert_eq!(files[1].size, big_bytes.len() as u64);
    assert_eq!(
        files[1].checksum,
        format!("{:08x}", crc32c::crc32c(&big_bytes))
    );
    let copy = lake.local_copy(&files[1]).unwrap();
    assert_eq!(std::fs::read(copy.path()).unwrap(), big_bytes);
    let copy_path = copy.path().to_path_buf();
    drop(copy);
    assert!(
        !copy_path.exists(),
        "the downloaded copy is removed when dropped"
    );
}

#[test]
#[ignore = "needs the GCS emulator: scripts/with-emulators.sh"]
fn lists_exactly_the_windows_daily_files_across_months_and_pages() {
    let b = bucket("ota-list");
    let lake = GcsLake::open(&format!("gs://{b}/events"), &settings()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    let names = [
        "20240130_OTA.parquet",
        "20240131_OTA.parquet",
        "20240201_OTA.parquet",
        "20240202_OTA.parquet",   // outside the window
        "20240131_OTHER.parquet", // another suffix
        "20240131_OTA.parquet.tmp",
        "nested/20240131_OTA.parquet",
        "2024013_OTA.parquet",
    ];
    for (i, n) in names.iter().enumerate() {
        write(&f, &content(100 + i, i as u64));
        lake.put_file(n, &f).unwrap();
    }
    // Many objects in the month, so the listing takes several pages.
    for i in 0..30 {
        write(&f, &content(10, 100 + i));
        lake.put_file(&format!("20240115_noise{i}.parquet"), &f)
            .unwrap();
    }
    let window = DateWindow::new(day("2024-01-31"), day("2024-02-01")).unwrap();
    let files = lake
        .list_daily_files(&window, "OTA", &mut |_| Ok(Default::default()))
        .unwrap();
    let uris: Vec<&str> = files.iter().map(|f| f.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            format!("gs://{b}/events/20240131_OTA.parquet"),
            format!("gs://{b}/events/20240201_OTA.parquet")
        ]
    );
    let now = chrono::Utc::now().timestamp_micros();
    for file in &files {
        assert!(!file.generation.is_empty());
        assert!(
            (now - file.ingested_at).abs() < 300_000_000,
            "ingested_at is the object's creation time"
        );
        let version = lake.version_of(&file.uri).unwrap().unwrap();
        assert_eq!(
            (version.size, version.generation.clone()),
            (file.size, file.generation.clone())
        );
    }
    assert_eq!(
        lake.version_of(&format!("gs://{b}/events/20240229_OTA.parquet"))
            .unwrap(),
        None
    );

    // The client follows page tokens (2 objects per page here).
    let rt = BlockingRuntime::new().unwrap();
    let client = GcsClient::new(reqwest::Client::new(), &endpoint(), Credentials::Emulator)
        .with_page_size(2);
    let listed = rt.block_on(client.list(&b, "events/202401")).unwrap();
    assert_eq!(
        listed.len(),
        2 + 3 + 30,
        "every January object under the prefix"
    );
}

#[test]
#[ignore = "needs the GCS emulator: scripts/with-emulators.sh"]
fn a_file_replaced_after_listing_is_not_read_as_the_listed_version() {
    let b = bucket("ota-replace");
    let lake = GcsLake::open(&format!("gs://{b}"), &settings()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    write(&f, b"first version");
    lake.put_file("20240301_OTA.parquet", &f).unwrap();
    let window = DateWindow::new(day("2024-03-01"), day("2024-03-01")).unwrap();
    let listed = lake
        .list_daily_files(&window, "OTA", &mut |_| Ok(Default::default()))
        .unwrap()
        .remove(0);
    write(&f, b"second version, longer");
    lake.put_file("20240301_OTA.parquet", &f).unwrap();
    let now = lake.version_of(&listed.uri).unwrap().unwrap();
    assert_ne!(now.generation, listed.generation);
    let err = lake.local_copy(&listed).unwrap_err().to_string();
    assert!(err.contains("20240301_OTA.parquet"), "{err}");
}

#[test]
#[ignore = "needs the GCS emulator: scripts/with-emulators.sh"]
fn a_missing_bucket_is_a_clear_error() {
    let lake = GcsLake::open("gs://no-such-bucket-here/x", &settings()).unwrap();
    let window = DateWindow::new(day("2024-03-01"), day("2024-03-01")).unwrap();
    let err = lake
        .list_daily_files(&window, "OTA", &mut |_| Ok(Default::default()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gs://no-such-bucket-here/x/202403"), "{err}");
    assert!(err.contains("404"), "{err}");
}

#[test]
#[ignore = "needs the GCS emulator: scripts/with-emulators.sh"]
fn a_download_cut_off_halfway_is_tried_again() {
    use std::sync::atomic::Ordering;

    let b = bucket("ota-cut");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    let bytes = content(3 << 20, 7);
    write(&f, &bytes);
    let lake = GcsLake::open(&format!("gs://{b}"), &settings()).unwrap();
    lake.put_file("20240301_OTA.parquet", &f).unwrap();

    // The first download of the object's content is cut off halfway.
    let proxy = faulty_http::FaultyHttpProxy::start(&endpoint(), |method, path, faulted| {
        if method == "GET" && path.contains("alt=media") && faulted == 0 {
            faulty_http::Fault::CutBodyHalfway
        } else {
            faulty_http::Fault::Pass
        }
    });
    let http = ota_lake::gcp::http_client().unwrap();
    let client = GcsClient::new(http, &proxy.endpoint, Credentials::Emulator);
    let rt = BlockingRuntime::new().unwrap();
    let dest = dir.path().join("copy");
    rt.block_on(async {
        let meta = client
            .get(&b, "20240301_OTA.parquet")
            .await
            .unwrap()
            .expect("the object");
        client.download(&meta, &b, &dest).await.unwrap();
    });
    assert_eq!(proxy.faulted.load(Ordering::SeqCst), 1);
    let media_gets = proxy
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains("alt=media"))
        .count();
    assert_eq!(media_gets, 2, "one cut off, one whole");
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}
