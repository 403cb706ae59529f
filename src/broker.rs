//! A local tansu broker as a child process, for `meterline dev`, tests and benchmarks. A
//! separate process (not the embedded library) so tests can kill and restart it like a real
//! broker outage; production uses any Kafka-compatible cluster instead.
//!
//! The binary is `meterline-broker` (`scripts/broker`): tansu 0.6.0 embedded, plus the EndTxn
//! route the released tansu binary lacks, without which no Kafka transaction can commit.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where the broker keeps its data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Fast, lost on restart (throughput benchmarks).
    Memory,
    /// Durable SQLite file (restart and durability tests, `meterline dev`).
    Sqlite(PathBuf),
}

pub struct TansuBroker {
    bin: PathBuf,
    storage: Storage,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

const BROKER_BIN: &str = "meterline-broker";

/// The broker binary: `$TANSU_BROKER_BIN`, else `meterline-broker` on PATH, else where
/// `scripts/setup` installs it (`$TANSU_ROOT/bin`, default `$HOME/.local/tansu/bin`).
pub fn tansu_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("TANSU_BROKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(BROKER_BIN);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let root = std::env::var_os("TANSU_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/tansu")));
    if let Some(p) = root
        .map(|r| r.join("bin").join(BROKER_BIN))
        .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    bail!("{BROKER_BIN} not found: run scripts/setup (or `cargo install --locked --path scripts/broker`), or set TANSU_BROKER_BIN")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl TansuBroker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start(storage: Storage, log_dir: &Path) -> anyhow::Result<TansuBroker> {
        let mut b = TansuBroker {
            bin: tansu_bin()?,
            storage,
            port: free_port(),
            log: log_dir.join("tansu.log"),
            child: None,
        };
        b.spawn()?;
        Ok(b)
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // tansu resolves a sqlite path against its working directory (even an absolute one),
        // so it runs in the database's directory with the bare file name.
        let (engine, cwd) = match &self.storage {
            Storage::Memory => ("memory://tansu/".to_string(), std::env::current_dir()?),
            Storage::Sqlite(p) => {
                let dir = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf();
                std::fs::create_dir_all(&dir)?;
                let name = p
                    .file_name()
                    .context("sqlite path needs a file name")?
                    .to_string_lossy()
                    .into_owned();
                (format!("sqlite://{name}"), dir)
            }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args([
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &engine,
            ])
            .current_dir(cwd)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let addr: SocketAddr = self.bootstrap().parse()?;
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("tansu exited with {status}; see {}", self.log.display());
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("tansu did not listen on {addr} within {limit:?}")
    }

    /// Kills the broker abruptly (SIGKILL), as a crash or outage would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
