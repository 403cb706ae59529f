//! A real S3-protocol server for the tests: moto's server mode (PyPI `moto[server]` 5.1.18,
//! pinned with every dependency in `tests/fixtures/delta_reader/constraints.txt`, installed by
//! `scripts/setup-python` into the deltalake reader's venv `$METERLINE_DELTA_PY_HOME`), one
//! child process per [`S3Server`], on a free port of 127.0.0.1, killed on drop.
//!
//! Why moto: it is pure PyPI (no Docker, no JVM, no Go toolchain, nothing beyond the venv the
//! Delta tests already need), and it speaks the S3 REST protocol with SigV4 requests, path-style
//! buckets and the conditional `PutObject` with `If-None-Match: *` (412 `PreconditionFailed`
//! when the key exists). delta-rs commits a table version on S3 with exactly that request
//! (object_store's `PutMode::Create` of the next `_delta_log/NNN.json`; `AlreadyExists` is
//! its "version already exists" conflict), so a stand-in without it cannot test the ledger.
//!
//! One caveat, measured: plain `python -m moto.server` handles each request on its own thread
//! and checks `If-None-Match: *` (get the key, then store it) without a lock, so two concurrent
//! creates of one key can both succeed (8 parallel curl PUTs per round: two got 200 in 2 of
//! 210 rounds). Real S3 is atomic there and delta-rs's conflict detection depends on it. The
//! server therefore runs through `scripts/moto_server.py`: `moto.server`'s own `main` with one
//! lock around each WSGI call, so requests are served one at a time (0 of 150 rounds with two
//! winners). `tests/s3_server.rs` checks 8 concurrent creates through object_store, but it is
//! no detector of that race: against plain moto it passed 600 rounds (the window is a few
//! Python statements); what makes the creates atomic is the lock, by construction.
//!
//! The alternative considered, s3s-fs (Rust, the `s3s` project's file-system S3 server): its
//! PutObject honours `If-None-Match: *` since s3s 0.12 (s3s-project/s3s#433; the docs.rs
//! search found no page on it, this is from the repository's source), but as a check
//! (`path.exists()`) before writing a temp file that is then renamed over the key, so it has
//! the same race under concurrent creates, and it would be one more crate tree to build.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long moto may take to answer its first request (it imports in about a second; a
/// loaded 2-core machine running a build next to it is much slower).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// moto accepts any credentials; object_store signs every request, so it needs some.
const DUMMY_KEY: &str = "meterline";
const REGION: &str = "us-east-1";

/// A moto S3 server (child process), killed on drop. Its log (`moto.log`: every request
/// moto served, and its errors) is in a temp dir removed with it.
pub struct S3Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The deltalake reader's venv, which also holds moto (scripts/setup-python).
fn delta_python() -> PathBuf {
    let home = std::env::var("METERLINE_DELTA_PY_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.cache/meterline/py-delta",
            std::env::var("HOME").unwrap()
        )
    });
    PathBuf::from(home).join("bin/python")
}

impl S3Server {
    /// Starts moto on a free port and waits (up to [`START_TIMEOUT`]) until it lists buckets.
    /// Fails with the tail of its log if it exits first or does not answer in time.
    pub fn start() -> anyhow::Result<S3Server> {
        let python = delta_python();
        if !python.exists() {
            bail!(
                "{} missing: scripts/setup-python installs moto[server] (with the deltalake reader)",
                python.display()
            );
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto_server.py");
        // A port taken between our probe and moto's bind makes moto exit: try another.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&python, script) {
                Ok(server) => return Ok(server),
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn start_once(python: &Path, script: &str) -> anyhow::Result<S3Server> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding a probe port")?
            .local_addr()?
            .port();
        let dir = tempfile::Builder::new()
            .prefix("meterline-s3-")
            .tempdir()
            .context("temp dir for moto")?;
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).context("moto.log")?;
        let mut cmd = Command::new(python);
        cmd.arg(script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = spawn_dying_with_process(cmd)
            .with_context(|| format!("spawning {} {script}", python.display()))?;
        // From here on, an early return drops the server, which kills the child.
        let mut server = S3Server {
            child,
            port,
            log,
            _dir: dir,
        };
        let t0 = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "moto exited ({status}) before answering on port {port}; log tail:\n{}",
                    server.log_tail()
                );
            }
            // Ready: ListBuckets answered by moto itself (not whatever else may hold the port).
            if let Ok((200, body)) = server.request("GET", "/") {
                if body.contains("ListAllMyBucketsResult") {
                    return Ok(server);
                }
            }
            if t0.elapsed() > START_TIMEOUT {
                bail!(
                    "moto did not answer on port {port} within {START_TIMEOUT:?}; log tail:\n{}",
                    server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log (every request it served, and its tracebacks).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Creates bucket `name` (3 to 63 characters: lowercase letters, digits, `-`, `.`) and
    /// returns its URL, `s3://<name>`. moto takes the CreateBucket unsigned.
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<String> {
        let (status, body) = self
            .request("PUT", &format!("/{name}"))
            .with_context(|| format!("PUT /{name} to moto"))?;
        if status != 200 {
            bail!("creating bucket {name:?}: HTTP {status}: {body}");
        }
        Ok(format!("s3://{name}"))
    }

    /// object_store's options for this server (`AmazonS3ConfigKey` names, as delta-rs and
    /// `AmazonS3Builder::with_config` take them): endpoint, region, dummy credentials, plain
    /// HTTP. Buckets are addressed path-style (object_store's default with an endpoint).
    pub fn storage_options(&self) -> BTreeMap<String, String> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_region", REGION.to_string()),
            ("aws_access_key_id", DUMMY_KEY.to_string()),
            ("aws_secret_access_key", DUMMY_KEY.to_string()),
            ("aws_allow_http", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The same as environment variables, for child processes (meterline's stages) and the
    /// Python deltalake reader (object_store's `from_env` reads these names).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", DUMMY_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", DUMMY_KEY.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// One unsigned HTTP/1.1 request without a body: (status, body).
    fn request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        conn.set_write_timeout(Some(Duration::from_secs(30)))?;
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not an HTTP response: {head:?}"),
                )
            })?;
        Ok((status, body.to_string()))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` so that it is killed with the test process even when no destructor runs (an
/// aborted or SIGKILLed test binary): PR_SET_PDEATHSIG, from one thread that lives as long as
/// the process (the signal fires when the *thread* that forked the child ends, and a test's
/// thread may end before a server shared through a static is dropped).
fn spawn_dying_with_process(mut cmd: Command) -> std::io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("s3-server-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .expect("spawner thread");
            Mutex::new(tx)
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?
}
