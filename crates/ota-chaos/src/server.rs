//! A MariaDB server of the harness's own (its own data dir, port and socket), so it can be
//! killed and restarted mid-export without touching the server other work shares.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start (with crash recovery) may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PrivateServer {
    mariadbd: PathBuf,
    datadir: PathBuf,
    port: u16,
    child: Option<Child>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0} was not found; a private MariaDB server needs the MariaDB server package")]
    Missing(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        context: context.to_string(),
        source,
    }
}

/// The first of `names` found in `PATH`, `/usr/sbin` or `/usr/bin`.
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .collect::<Vec<_>>();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

impl PrivateServer {
    /// Initialises a data dir under `dir` and starts a server on a free loopback port.
    pub fn start(dir: &Path) -> Result<Self, ServerError> {
        let mariadbd =
            find(&["mariadbd", "mysqld"]).ok_or(ServerError::Missing("mariadbd".into()))?;
        let install = find(&["mariadb-install-db", "mysql_install_db"])
            .ok_or(ServerError::Missing("mariadb-install-db".into()))?;
        let datadir = dir.join("mariadb");
        std::fs::create_dir_all(&datadir).map_err(io("creating the data dir"))?;
        let out = Command::new(install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .args(["--user=root", "--auth-root-authentication-method=normal"])
            .args(["--skip-test-db", "--skip-name-resolve"])
            .output()
            .map_err(io("running mariadb-install-db"))?;
        if !out.status.success() {
            return Err(ServerError::Failed(format!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        let mut server = PrivateServer {
            mariadbd,
            datadir,
            port,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `mysql://root@127.0.0.1:<port>`, over TCP (the harness's proxies and URLs need it).
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}?prefer_socket=false", self.port)
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        let log = std::fs::File::create(self.datadir.join("server.log"))
            .map_err(io("creating the server log"))?;
        let child = Command::new(&self.mariadbd)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.datadir.display()))
            .arg(format!(
                "--socket={}",
                self.datadir.join("mysqld.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.datadir.join("mysqld.pid").display()
            ))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
            ])
            .args(["--skip-log-bin", "--innodb-buffer-pool-size=128M"])
            .args(["--local-infile=1", "--max-allowed-packet=64M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io("starting mariadbd"))?;
        self.child = Some(child);
        self.wait_until_up()
    }

    fn wait_until_up(&mut self) -> Result<(), ServerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().map_err(io("waiting on mariadbd"))?
            {
                return Err(ServerError::Failed(format!(
                    "mariadbd exited {status} while starting; see {}",
                    self.datadir.join("server.log").display()
                )));
            }
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(ServerError::Failed(format!(
            "mariadbd did not answer within {START_TIMEOUT:?}; see {}",
            self.datadir.join("server.log").display()
        )))
    }

    /// Whether the server completes a MySQL handshake (its greeting packet arrives).
    fn answers(&self) -> bool {
        use std::io::Read;
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut header = [0u8; 5];
        // A greeting's payload starts with protocol version 10; an error packet with 0xff.
        stream.read_exact(&mut header).is_ok() && header[4] == 10
    }

    /// Kills the server (SIGKILL: a crash, InnoDB recovers at the next start) and starts
    /// it again.
    pub fn crash_and_restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.spawn()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}
