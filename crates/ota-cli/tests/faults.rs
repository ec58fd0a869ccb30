//! The step binaries under faults and hostile settings, against the real MySQL/MariaDB
//! server: credentials never printed, a server that stops answering or a lock held by
//! another session fails the export within its timeout, and a re-run afterwards leaves
//! MySQL exactly equal to the warehouse.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Env, Run, server_query};
use mysql_async::prelude::Queryable;

const PASSWORD: &str = "Kn0wn-Pa55w0rd-7c1";
/// A password holding every character URLs reserve in the part where it sits.
const RESERVED_PASSWORD: &str = "Kn0wn?Pa55#w0rd/7c1@x:y";

/// A MySQL user with a password, allowed to use one database; dropped at the end.
struct PasswordUser {
    name: String,
}

impl PasswordUser {
    fn new(env: &Env) -> Self {
        Self::with_password(env, "pw", PASSWORD)
    }

    fn with_password(env: &Env, tag: &str, password: &str) -> Self {
        let name = format!("ota_{tag}_{}", std::process::id());
        for host in ["%", "localhost"] {
            server_query(&format!(
                "CREATE USER IF NOT EXISTS '{name}'@'{host}' IDENTIFIED BY '{password}'"
            ));
            server_query(&format!(
                "GRANT ALL PRIVILEGES ON `{}`.* TO '{name}'@'{host}'",
                env.db
            ));
        }
        PasswordUser { name }
    }

    fn url(&self, env: &Env, password: &str) -> String {
        format!(
            "mysql://{}:{password}@{}/{}",
            self.name,
            common::server_address(),
            env.db
        )
    }
}

impl Drop for PasswordUser {
    fn drop(&mut self) {
        for host in ["%", "localhost"] {
            server_query(&format!("DROP USER IF EXISTS '{}'@'{host}'", self.name));
        }
    }
}

fn run_with_url(env: &Env, step: &str, url: &str, args: &[&str]) -> Run {
    std::process::Command::new(common::bin(step))
        .args(args)
        .env("OTA_LAKE_URL", env.lake_url())
        .env("OTA_WAREHOUSE_URL", env.warehouse_url())
        .env("OTA_MYSQL_URL", url)
        .env("RUST_LOG", "debug")
        .env_remove("OTA_REFERENCE_DATE")
        .output()
        .expect("run binary")
        .into()
}

fn assert_never_printed(run: &Run, secret: &str, what: &str) {
    for (stream, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(
            !text.contains(secret),
            "{what}: the password is in {stream}:\n{text}"
        );
    }
}

#[test]
fn no_step_ever_prints_the_mysql_password() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 300);
    let user = PasswordUser::new(&env);
    let window = ["--start-date", "2024-01-01", "--end-date", "2024-01-02"];
    let good = user.url(&env, PASSWORD);
    for step in ["stage-files", "load-raw", "dedup", "export-mysql"] {
        let run = run_with_url(&env, step, &good, &window).ok();
        assert_never_printed(&run, PASSWORD, step);
    }
    let run = run_with_url(&env, "export-mysql", &good, &["--reconcile"]).ok();
    assert_never_printed(&run, PASSWORD, "reconcile");
    assert_eq!(run.summary()["status"], "ok");
    let help = run_with_url(&env, "export-mysql", &good, &["--help"]).ok();
    assert_never_printed(&help, PASSWORD, "--help");

    let host_db = format!("{}/{}", common::server_address(), env.db);
    let malformed = [
        // No scheme, a bad port, an unknown parameter, a bad TLS mode, a wrong password.
        format!("{}:{PASSWORD}@{host_db}", user.name),
        format!(
            "mysql://{}:{PASSWORD}@127.0.0.1:99999/{}",
            user.name, env.db
        ),
        format!(
            "mysql://{}:{PASSWORD}@{host_db}?bogus={PASSWORD}",
            user.name
        ),
        format!(
            "mysql://{}:{PASSWORD}@{host_db}?ssl-mode=sometimes",
            user.name
        ),
        format!("mysql://{}:{PASSWORD}x@{host_db}", user.name),
        format!(
            "mysql://{}:{PASSWORD}@{host_db}?ssl-mode=verify-ca&ssl-ca=/none",
            user.name
        ),
    ];
    for url in &malformed {
        let run = run_with_url(&env, "export-mysql", url, &window);
        assert_ne!(run.code, 0, "{url} should fail");
        assert_never_printed(&run, PASSWORD, url);
        assert!(
            run.stderr.contains("error:") && run.stderr.contains("***"),
            "{url}: the error should name the masked URL:\n{}",
            run.stderr
        );
    }

    // A password with characters URLs reserve: unencoded, the URL is refused (exit 2)
    // without a fragment of it printed; percent-encoded, it connects.
    let reserved = PasswordUser::with_password(&env, "rsv", RESERVED_PASSWORD);
    let raw = format!("mysql://{}:{RESERVED_PASSWORD}@{host_db}", reserved.name);
    let run = run_with_url(&env, "export-mysql", &raw, &window);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("percent-encoded"), "{}", run.stderr);
    for fragment in RESERVED_PASSWORD
        .split(['?', '#', '/', '@', ':'])
        .filter(|f| f.len() >= 4)
    {
        assert_never_printed(&run, fragment, "a password with reserved characters");
    }
    let encoded: String = RESERVED_PASSWORD
        .chars()
        .map(|c| match c {
            '?' | '#' | '/' | '@' | ':' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect();
    let url = format!("mysql://{}:{encoded}@{host_db}", reserved.name);
    let run = run_with_url(&env, "export-mysql", &url, &window).ok();
    assert_never_printed(&run, &encoded, "the encoded password");
    assert_never_printed(&run, RESERVED_PASSWORD, "the decoded password");
}

/// A loopback TCP proxy to the MySQL server that stops forwarding, without closing
/// anything, once the client has sent `stall_after` bytes; `cut` then closes every
/// connection, as a network that comes back would.
struct StallingProxy {
    port: u16,
    stalled: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    streams: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl StallingProxy {
    fn start(stall_after: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let stalled = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let streams = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, c, n, all) = (
            stalled.clone(),
            closed.clone(),
            sent.clone(),
            streams.clone(),
        );
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if c.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(server) = TcpStream::connect(common::server_address()) else {
                    break;
                };
                let mut held = all.lock().expect("streams");
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        held.push(clone);
                    }
                }
                drop(held);
                let pump = |mut from: TcpStream, mut to: TcpStream, count: bool| {
                    let (s, c, n) = (s.clone(), c.clone(), n.clone());
                    thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(read) = from.read(&mut buf) {
                            if read == 0 {
                                let _ = to.shutdown(Shutdown::Write);
                                break;
                            }
                            if count
                                && n.fetch_add(read as u64, Ordering::SeqCst) + read as u64
                                    > stall_after
                            {
                                s.store(true, Ordering::SeqCst);
                            }
                            // Stalled: hold the bytes, keep the sockets open.
                            while s.load(Ordering::SeqCst) && !c.load(Ordering::SeqCst) {
                                thread::sleep(Duration::from_millis(20));
                            }
                            if c.load(Ordering::SeqCst) || to.write_all(&buf[..read]).is_err() {
                                break;
                            }
                        }
                    });
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    break;
                };
                pump(client, s2, true);
                pump(server, c2, false);
            }
        });
        StallingProxy {
            port,
            stalled,
            closed,
            streams,
        }
    }

    fn cut(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for stream in self.streams.lock().expect("streams").iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wakes the accept loop so it sees `closed`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Polls until the server has let go of every session of this database (a cut client's
/// session ends once the server reads the closed socket).
fn wait_for_sessions_to_end(env: &Env) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let busy = server_query(&format!(
            "SELECT CAST(COUNT(*) AS CHAR) FROM information_schema.PROCESSLIST WHERE DB = '{}'",
            env.db
        ));
        if busy.first().map(String::as_str) == Some("0") {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!("sessions of {} did not end", env.db);
}

fn reconcile_is_clean(env: &Env) {
    let run = env.run("export-mysql", &["--reconcile"]);
    assert_eq!(run.code, 0, "reconcile found drift:\n{}", run.stdout);
    assert_eq!(run.summary()["status"], "ok");
}

/// Three days loaded and deduplicated, then export-mysql through a proxy that stalls
/// after ~300 KB (inside the third or so 200-row batch), never switching to the unix
/// socket, with a 3 s MySQL timeout. Returns the proxy (still holding both sockets), the
/// export's run and how long it took.
fn export_until_the_network_stalls(env: &Env) -> (StallingProxy, Run, Duration) {
    env.generate("2024-01-01", 3, 400);
    let window = ["--start-date", "2024-01-01", "--end-date", "2024-01-03"];
    for step in ["stage-files", "load-raw", "dedup"] {
        env.run(step, &window).ok();
    }
    let proxy = StallingProxy::start(300_000);
    let url = format!(
        "mysql://root@127.0.0.1:{}/{}?prefer_socket=false",
        proxy.port, env.db
    );
    let started = Instant::now();
    let run = run_with_url(
        env,
        "export-mysql",
        &url,
        &["--batch-size", "200", "--mysql-timeout", "3"],
    );
    assert!(
        proxy.stalled.load(Ordering::SeqCst),
        "the proxy never stalled"
    );
    (proxy, run, started.elapsed())
}

#[test]
fn a_connection_that_stops_answering_mid_batch_fails_within_the_timeout() {
    let env = Env::new();
    let (proxy, run, took) = export_until_the_network_stalls(&env);
    assert_eq!(run.code, 1, "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("within 3 s"),
        "the error should say what timed out:\n{}",
        run.stderr
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let committed = env.offset();

    // The network comes back: the server drops the half-sent batch with its session.
    proxy.cut();
    wait_for_sessions_to_end(&env);
    let count_before = env.count();
    env.run("export-mysql", &[]).ok();
    assert!(env.count() > count_before);
    if let (Some(before), Some(after)) = (committed, env.offset()) {
        assert!(
            after >= before,
            "the offset moved back: {before:?} -> {after:?}"
        );
    }
    reconcile_is_clean(&env);
}

#[test]
fn a_session_whose_client_went_quiet_frees_the_export_lock_within_the_timeout() {
    let env = Env::new();
    // The first export's client goes quiet mid-export and never says goodbye: the
    // proxy holds its bytes and keeps both sockets open, as a half-open connection does.
    let (proxy, first, _) = export_until_the_network_stalls(&env);
    assert_eq!(first.code, 1, "{}", first.stderr);
    // A second export, straight to the server, gets the lock once the server has let go
    // of the quiet session: within its limits, not the server's defaults (30 s mid-
    // statement, 8 hours idle).
    let started = Instant::now();
    let second = env.run(
        "export-mysql",
        &["--lock-timeout", "120", "--mysql-timeout", "3"],
    );
    let waited = started.elapsed();
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        waited < Duration::from_secs(20),
        "waited {waited:?} for the lock"
    );
    drop(proxy);
    reconcile_is_clean(&env);
}

/// Another MySQL session holding a lock (taken by `take`, given back by `release`) until
/// [`SessionLock::release`].
struct SessionLock {
    release_tx: std::sync::mpsc::Sender<()>,
    holder: thread::JoinHandle<()>,
}

impl SessionLock {
    fn hold(url: &str, take: &'static [&'static str], release: &'static str) -> Self {
        let url = url.to_string();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let opts = mysql_async::Opts::from_url(&url).expect("url");
                let mut conn = mysql_async::Conn::new(opts).await.expect("connect");
                for statement in take {
                    conn.query_drop(*statement).await.expect("take the lock");
                }
                locked_tx.send(()).expect("signal");
                let _ = release_rx.recv();
                conn.query_drop(release).await.expect("release the lock");
                let _ = conn.disconnect().await;
            });
        });
        locked_rx.recv().expect("lock taken");
        SessionLock { release_tx, holder }
    }

    fn release(self) {
        self.release_tx.send(()).expect("release");
        self.holder.join().expect("lock holder");
    }
}

#[test]
fn a_table_locked_by_another_session_fails_the_export_within_the_timeout() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 300);
    env.pipeline(
        &["--start-date", "2024-01-01", "--end-date", "2024-01-02"],
        &[],
    );
    env.generate("2024-01-03", 1, 300);
    let window = ["--start-date", "2024-01-03", "--end-date", "2024-01-03"];
    for step in ["stage-files", "load-raw", "dedup"] {
        env.run(step, &window).ok();
    }
    let offset = env.offset();
    let lock = SessionLock::hold(
        &env.mysql_url,
        &["LOCK TABLES ota_events WRITE"],
        "UNLOCK TABLES",
    );
    let started = Instant::now();
    let run = {
        let mut cmd = std::process::Command::new(common::bin("export-mysql"));
        cmd.args(["--mysql-timeout", "2"])
            .env("OTA_WAREHOUSE_URL", env.warehouse_url())
            .env("OTA_MYSQL_URL", &env.mysql_url);
        Run::from(cmd.output().expect("export"))
    };
    let took = started.elapsed();
    lock.release();
    assert_eq!(run.code, 1, "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("Lock wait timeout") || run.stderr.contains("within 2 s"),
        "{}",
        run.stderr
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(env.offset(), offset, "nothing was committed");

    env.run("export-mysql", &[]).ok();
    reconcile_is_clean(&env);
}

/// A throw-away MariaDB/MySQL server of this test's own, on a free loopback port, with a
/// certificate signed by a CA of the test's own (or with no TLS at all).
struct ScratchServer {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

fn sh(program: &str, args: &[&str], dir: &std::path::Path) {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`, `<name>.key`) and, when `server`, a certificate it signed for
/// localhost and 127.0.0.1 (`server.pem`, `server.key`).
fn make_ca(dir: &std::path::Path, name: &str, server: bool) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    let subject = format!("/CN={name}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject,
    ]);
    sh("openssl", &args, dir);
    if server {
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        sh("openssl", &args, dir);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext.cnf");
        sh(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                &pem,
                "-CAkey",
                &key,
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
            dir,
        );
    }
}

impl ScratchServer {
    fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("server dir");
        let data = dir.path().join("data");
        sh(
            "mariadb-install-db",
            &[
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ],
            dir.path(),
        );
        make_ca(dir.path(), "ota-test-ca", true);
        make_ca(dir.path(), "other-ca", false);
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", data.display()),
            format!("--socket={}", path("sock")),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--user=root".into(),
            "--skip-log-bin".into(),
            "--innodb-buffer-pool-size=16M".into(),
            format!("--log-error={}", path("error.log")),
            format!("--pid-file={}", path("pid")),
        ];
        if tls {
            args.push(format!("--ssl-ca={}", path("ota-test-ca.pem")));
            args.push(format!("--ssl-cert={}", path("server.pem")));
            args.push(format!("--ssl-key={}", path("server.key")));
        }
        let child = std::process::Command::new("/usr/sbin/mariadbd")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let server = ScratchServer { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the scratch server did not start: {}",
                std::fs::read_to_string(server.dir.path().join("error.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn url(&self, db: &str, query: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}?{query}", self.port)
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn export_to(env: &Env, url: &str, args: &[&str]) -> Run {
    let mut cmd = std::process::Command::new(common::bin("export-mysql"));
    cmd.args(args)
        .env("OTA_WAREHOUSE_URL", env.warehouse_url())
        .env("OTA_MYSQL_URL", url)
        .env("RUST_LOG", "info");
    Run::from(cmd.output().expect("export-mysql"))
}

#[test]
fn tls_modes_against_a_server_with_a_self_signed_ca_and_one_without_tls() {
    let env = Env::new();
    env.generate("2024-01-01", 1, 200);
    let window = ["--start-date", "2024-01-01", "--end-date", "2024-01-01"];
    for step in ["stage-files", "load-raw", "dedup"] {
        env.run(step, &window).ok();
    }
    let server = ScratchServer::start(true);
    let ca = server.file("ota-test-ca.pem");
    let other = server.file("other-ca.pem");

    // required: encrypted, certificate not checked.
    let run = export_to(&env, &server.url("ota_tls", "ssl-mode=required"), &[]).ok();
    assert!(
        run.stderr.contains("encrypted with TLS") && run.stderr.contains("cipher="),
        "{}",
        run.stderr
    );
    assert_eq!(run.summary()["status"], "ok");
    // verify-ca and verify-identity with the test's CA.
    for mode in ["verify-ca", "verify-identity"] {
        let url = server.url("ota_tls", &format!("ssl-mode={mode}&ssl-ca={ca}"));
        let run = export_to(&env, &url, &["--reconcile"]).ok();
        assert!(
            run.stderr.contains("encrypted with TLS"),
            "{mode}: {}",
            run.stderr
        );
    }
    // A certificate the named CA did not sign is refused.
    let url = server.url("ota_tls", &format!("ssl-mode=verify-ca&ssl-ca={other}"));
    let run = export_to(&env, &url, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );
    drop(server);

    // A server without TLS: required is a clear configuration error, preferred goes plain.
    let plain = ScratchServer::start(false);
    let run = export_to(&env, &plain.url("ota_tls", "ssl-mode=required"), &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("offers no TLS"), "{}", run.stderr);
    let run = export_to(&env, &plain.url("ota_tls", "ssl-mode=preferred"), &[]).ok();
    assert!(run.stderr.contains("not encrypted"), "{}", run.stderr);
    assert_eq!(run.summary()["status"], "ok");
}

#[test]
fn a_shrunk_redelivery_is_refused_unless_allowed() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 400);
    let window = ["--start-date", "2024-01-01", "--end-date", "2024-01-02"];
    env.pipeline(&window, &[]);
    let before = env.table_checksum();
    let day1 = env.file("2024-01-01");
    let original = common::read_parquet(&day1);

    // A valid file with no rows, then one with a fifth of them.
    let empty = vec![original[0].slice(0, 0)];
    let fifth: Vec<_> = original
        .iter()
        .map(|b| b.slice(0, b.num_rows() / 5))
        .collect();
    for shrunk in [&empty, &fifth] {
        common::replace_file(&day1, shrunk);
        env.run("stage-files", &window).ok();
        let run = env.run("load-raw", &window);
        assert_eq!(run.code, 3, "{}", run.stderr);
        assert_eq!(
            common::quarantined(&run),
            vec![("20240101_OTA.parquet".to_string(), "shrunk".to_string())]
        );
        assert!(run.stderr.contains("--allow-shrink"), "{}", run.stderr);
        env.run("dedup", &window).ok();
        env.run("export-mysql", &window).ok();
        assert_eq!(env.table_checksum(), before, "nothing changed downstream");
    }
    // A looser limit lets the fifth through: its rows are the day's rows now.
    let looser = env.run(
        "load-raw",
        &[&window[..], &["--max-shrink-pct", "90"]].concat(),
    );
    assert_eq!(looser.code, 0, "{}", looser.stderr);
    assert!(common::quarantined(&looser).is_empty());
    common::replace_file(&day1, &empty);
    env.run("stage-files", &window).ok();
    assert_eq!(env.run("load-raw", &window).code, 3);
    env.run("load-raw", &[&window[..], &["--allow-shrink"]].concat())
        .ok();
    env.run("dedup", &window).ok();
    env.run("export-mysql", &window).ok();
    let left: u64 =
        env.query::<u64>("SELECT COUNT(*) FROM ota_events WHERE source_day = '2024-01-01'")[0];
    assert_eq!(left, 0, "the allowed empty version emptied its day");
    reconcile_is_clean(&env);
}

#[test]
fn a_corrupt_file_is_quarantined_the_others_load_and_its_next_version_loads() {
    let env = Env::new();
    env.generate("2024-01-01", 3, 300);
    let day2 = env.file("2024-01-02");
    let good = std::fs::read(&day2).expect("read");
    std::fs::write(&day2, &good[..good.len() / 2]).expect("truncate");
    let window = ["--start-date", "2024-01-01", "--end-date", "2024-01-03"];
    env.run("stage-files", &window).ok();
    let load = env.run("load-raw", &window);
    assert_eq!(load.code, 3, "{}", load.stderr);
    let summary = load.summary();
    assert_eq!(summary["status"], "partial");
    assert_eq!(summary["files_loaded"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        common::quarantined(&load),
        vec![("20240102_OTA.parquet".to_string(), "unreadable".to_string())]
    );
    assert!(
        summary["files_quarantined"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Parquet")),
        "{summary}"
    );
    env.run("dedup", &window).ok();
    env.run("export-mysql", &window).ok();
    let days =
        env.query::<String>("SELECT DISTINCT CAST(source_day AS CHAR) FROM ota_events ORDER BY 1");
    assert_eq!(days, ["2024-01-01", "2024-01-03"]);

    // The same version stays quarantined, reported again, not loaded.
    env.run("stage-files", &window).ok();
    let again = env.run("load-raw", &window);
    assert_eq!(again.code, 3, "{}", again.stderr);
    assert_eq!(again.summary()["files_loaded"], serde_json::json!([]));
    assert_eq!(common::quarantined(&again).len(), 1);

    // A good version lands: it loads and leaves quarantine.
    replace_file_bytes(&day2, &good);
    env.run("stage-files", &window).ok();
    let fixed = env.run("load-raw", &window).ok();
    assert!(common::quarantined(&fixed).is_empty());
    env.run("dedup", &window).ok();
    env.run("export-mysql", &window).ok();
    let days =
        env.query::<String>("SELECT DISTINCT CAST(source_day AS CHAR) FROM ota_events ORDER BY 1");
    assert_eq!(days, ["2024-01-01", "2024-01-02", "2024-01-03"]);
    reconcile_is_clean(&env);
    let rerun = env.run("load-raw", &window).ok();
    assert!(common::quarantined(&rerun).is_empty());
}

fn replace_file_bytes(path: &std::path::Path, bytes: &[u8]) {
    thread::sleep(Duration::from_millis(20));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[test]
fn epoch_timestamps_in_seconds_or_milliseconds_land_on_their_day_not_in_1970() {
    let env = Env::new();
    env.generate("2024-01-01", 3, 300);
    let ms = env.file("2024-01-02");
    let batches = common::with_timestamps(
        common::read_parquet(&ms),
        common::nanos_divided_by(1_000_000),
    );
    common::replace_file(&ms, &batches);
    let s = env.file("2024-01-03");
    let batches = common::with_timestamps(
        common::read_parquet(&s),
        common::nanos_divided_by(1_000_000_000),
    );
    common::replace_file(&s, &batches);
    let summaries = env.pipeline(
        &["--start-date", "2024-01-01", "--end-date", "2024-01-03"],
        &[],
    );
    let dates = summaries[1]["affected_dates"].to_string();
    assert!(!dates.contains("1970"), "{dates}");
    let per_day = env.query::<(String, u64)>(
        "SELECT CAST(source_day AS CHAR), COUNT(*) FROM ota_events \
         WHERE event_date < '2000-01-01' OR event_date > '2030-01-01' GROUP BY source_day",
    );
    assert!(
        per_day.is_empty(),
        "rows outside any plausible day: {per_day:?}"
    );
    for day in ["2024-01-02", "2024-01-03"] {
        let on_day: u64 = env.query::<u64>(&format!(
            "SELECT COUNT(*) FROM ota_events WHERE source_day = '{day}' AND event_date = '{day}'"
        ))[0];
        assert!(on_day > 100, "{day}: {on_day} rows on their own day");
    }
    reconcile_is_clean(&env);
}

/// A text column as raw bytes (Parquet BYTE_ARRAY without the UTF-8 annotation), with
/// the first value of the first batch made invalid UTF-8 when `corrupt`.
fn as_bytes(corrupt: bool) -> impl Fn(&arrow::array::ArrayRef) -> arrow::array::ArrayRef {
    use arrow::array::{AsArray, BinaryArray};
    let first = std::sync::atomic::AtomicBool::new(corrupt);
    move |column| {
        let text = column.as_string::<i32>();
        let values: Vec<Option<Vec<u8>>> = text
            .iter()
            .map(|v| {
                v.map(|v| {
                    let mut bytes = v.as_bytes().to_vec();
                    if first.swap(false, Ordering::SeqCst) {
                        bytes.push(0xff);
                    }
                    bytes
                })
            })
            .collect();
        Arc::new(BinaryArray::from_iter(values))
    }
}

#[test]
fn a_key_value_that_is_not_utf8_rejects_its_row_not_the_file() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 300);
    let window = ["--start-date", "2024-01-01", "--end-date", "2024-01-02"];
    let file = env.file("2024-01-02");
    let original = common::read_parquet(&file);
    for step in ["stage-files", "load-raw"] {
        env.run(step, &window).ok();
    }
    let load = |batches: Vec<arrow::array::RecordBatch>| {
        common::replace_file(
            &file,
            &common::with_column(batches, "request_id", as_bytes(false)),
        );
        env.run("stage-files", &window).ok();
        env.run("load-raw", &window).ok().summary()
    };
    // request_id as bytes, all valid: the day loads as it did as text.
    let clean = load(original.clone());
    // One request_id is not UTF-8: that row alone is rejected, the file loads.
    common::replace_file(
        &file,
        &common::with_column(original, "request_id", as_bytes(true)),
    );
    env.run("stage-files", &window).ok();
    let corrupt = env.run("load-raw", &window).ok().summary();
    assert_eq!(corrupt["status"], "ok", "{corrupt}");
    let count = |s: &serde_json::Value, what: &str| s["counts"][what].as_u64().unwrap_or(0);
    assert_eq!(
        count(&corrupt, "rejected"),
        count(&clean, "rejected") + 1,
        "{clean}\n{corrupt}"
    );
    assert_eq!(
        count(&corrupt, "rows_written"),
        count(&clean, "rows_written") - 1,
        "{clean}\n{corrupt}"
    );
    env.run("dedup", &window).ok();
    env.run("export-mysql", &[]).ok();
    reconcile_is_clean(&env);
}

#[test]
fn a_year_9999_row_does_not_stretch_a_historic_load_over_millennia() {
    use arrow::array::{AsArray, TimestampMicrosecondArray};
    use arrow::datatypes::Int64Type;
    let env = Env::new();
    let case_data = env.dir.path().join("case_data.parquet");
    std::process::Command::new(common::bin("ota-gen"))
        .args([
            "--seed",
            "3",
            "--start",
            "2024-03-01",
            "--days",
            "2",
            "--rows-per-day",
            "200",
        ])
        .arg("--single")
        .arg(&case_data)
        .output()
        .map(Run::from)
        .expect("ota-gen")
        .ok();
    // Microsecond TIMESTAMPs; one row dated 9999-12-31.
    const YEAR_9999_US: i64 = 253_402_214_400_000_000;
    let mut batches = common::with_timestamps(common::read_parquet(&case_data), |column| {
        let ns = column.as_primitive::<Int64Type>();
        Arc::new(
            ns.iter()
                .map(|v| v.map(|v| v / 1_000))
                .collect::<TimestampMicrosecondArray>(),
        )
    });
    batches[0] = common::with_timestamps(vec![batches[0].clone()], |column| {
        let us = column.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        Arc::new(
            us.iter()
                .enumerate()
                .map(|(i, v)| if i == 0 { Some(YEAR_9999_US) } else { v })
                .collect::<TimestampMicrosecondArray>(),
        )
    })
    .remove(0);
    common::write_parquet(&case_data, &batches);

    let from = format!("--from={}", case_data.display());
    let stage = env.run("stage-files", &[from.as_str()]).ok().summary();
    let bound = |b: &str| stage["window"][b].as_str().unwrap_or_default().to_string();
    assert!(
        bound("start").as_str() > "2024-02-01" && bound("end").as_str() < "2024-03-05",
        "the window spans only the file's real days: {stage}"
    );
    assert_eq!(
        stage["days_outside_window"],
        serde_json::json!(["9999-12-31"])
    );
    assert!(
        env.file("9999-12-31").exists(),
        "the stray row is kept in its daily file"
    );
    for step in ["load-raw", "dedup", "export-mysql"] {
        env.run(step, &[]).ok();
    }
    reconcile_is_clean(&env);
}

#[test]
fn a_resync_cut_short_between_its_upserts_and_deletes_keeps_nothing_of_itself() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 300);
    let window = ["--start-date", "2024-01-01", "--end-date", "2024-01-02"];
    env.pipeline(&window, &[]);
    // Drift on 2024-01-01: rows missing, rows changed by hand, and one stale row the
    // warehouse never held.
    env.query::<u64>(
        "DELETE FROM ota_events WHERE event_date = '2024-01-01' ORDER BY event_key LIMIT 5",
    );
    env.query::<u64>(
        "UPDATE ota_events SET page_name = 'tampered', row_hash = UNHEX(MD5('x')) \
         WHERE event_date = '2024-01-01' ORDER BY event_key DESC LIMIT 3",
    );
    env.query::<u64>(
        "INSERT INTO ota_events (event_key, event_date, row_hash, changed_at) \
         VALUES (UNHEX(MD5('stale')), '2024-01-01', UNHEX(MD5('stale')), NOW(6))",
    );
    let tampered = env.table_checksum();

    // Another session holds the stale row: the re-sync's upserts go through, its delete
    // waits for the lock and gives up after --mysql-timeout.
    let lock = SessionLock::hold(
        &env.mysql_url,
        &[
            "START TRANSACTION",
            "SELECT * FROM ota_events WHERE event_date = '2024-01-01' \
             AND event_key = UNHEX(MD5('stale')) FOR UPDATE",
        ],
        "ROLLBACK",
    );
    let day = ["--start-date", "2024-01-01", "--end-date", "2024-01-01"];
    let run = env.run(
        "export-mysql",
        &[&day[..], &["--mysql-timeout", "2"]].concat(),
    );
    lock.release();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("re-syncing"), "{}", run.stderr);
    assert_eq!(
        env.table_checksum(),
        tampered,
        "the cut re-sync kept none of its upserts"
    );

    let summary = env.run("export-mysql", &day).ok().summary();
    assert_eq!(summary["resynced_dates"], serde_json::json!(["2024-01-01"]));
    reconcile_is_clean(&env);
}

#[test]
fn the_mysql_url_can_come_from_a_file_and_never_shows() {
    let env = Env::new();
    env.generate("2024-01-01", 1, 100);
    let window = ["--start-date", "2024-01-01", "--end-date", "2024-01-01"];
    for step in ["stage-files", "load-raw", "dedup"] {
        env.run(step, &window).ok();
    }
    let user = PasswordUser::new(&env);
    let secret = env.dir.path().join("mysql-url");
    std::fs::write(&secret, format!("{}\n", user.url(&env, PASSWORD))).expect("write");
    let export = |file: &std::path::Path| -> Run {
        std::process::Command::new(common::bin("export-mysql"))
            .args(window)
            .env("OTA_LAKE_URL", env.lake_url())
            .env("OTA_WAREHOUSE_URL", env.warehouse_url())
            .env("OTA_MYSQL_URL_FILE", file)
            .env_remove("OTA_MYSQL_URL")
            .output()
            .expect("run export-mysql")
            .into()
    };
    let run = export(&secret).ok();
    assert_never_printed(&run, PASSWORD, "export from a URL file");
    assert!(env.count() > 50);
    let missing = export(&env.dir.path().join("none"));
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("secret file"), "{}", missing.stderr);
}
