//! A local Apache Kafka broker as a child process, for `meterline dev`, the end-to-end tests and
//! the benchmarks: one node in KRaft mode (broker and controller in one process), the jars that
//! `scripts/setup` fetched from Maven Central (`$METERLINE_KAFKA_HOME`, default
//! `~/.cache/meterline/kafka-4.1.1`), run by `java` (17+). A separate process so tests can kill
//! and restart it like a real broker outage; production runs a cluster instead.
//!
//! Layout of a broker directory: `server.properties`, `log4j2.xml`, `broker.log` (warnings,
//! errors and the group coordinator's joins and rebalances; 10 MB, 2 rolled files),
//! `broker.out` (the JVM's stdout/stderr) and `data/` (the log dir, formatted once: a directory
//! holding `data/meta.properties` is reused as it is, so a restart or the next `meterline dev`
//! continues from the same topics, offsets and transactions).

use std::io::{self, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};

pub const KAFKA_VERSION: &str = "4.1.1";

/// How long a start may take before it is an error (a cold JVM on a busy 2-core machine takes
/// a few seconds; log recovery after a SIGKILL adds a little).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `scripts/setup` puts the jars: `$METERLINE_KAFKA_HOME`, else
/// `~/.cache/meterline/kafka-4.1.1`.
pub fn kafka_home() -> PathBuf {
    if let Some(p) = std::env::var_os("METERLINE_KAFKA_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/meterline")
        .join(format!("kafka-{KAFKA_VERSION}"))
}

/// The jar directory, if `scripts/setup` completed there (it writes `.complete` last).
fn kafka_libs() -> anyhow::Result<PathBuf> {
    let home = kafka_home();
    let libs = home.join("libs");
    if !home.join(".complete").is_file() || !libs.is_dir() {
        bail!(
            "Apache Kafka {KAFKA_VERSION} not found in {}: run scripts/setup (it fetches the jars \
             there), or set METERLINE_KAFKA_HOME to where it put them; or point meterline at a \
             running cluster with kafka.brokers",
            home.display()
        );
    }
    Ok(libs)
}

/// `$JAVA_HOME/bin/java`, else `java` on PATH.
fn java_bin() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("JAVA_HOME").filter(|h| !h.is_empty()) {
        let p = PathBuf::from(h).join("bin/java");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("java");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("`java` not found (Apache Kafka {KAFKA_VERSION} needs Java 17+): install it (scripts/setup does on Debian) or set JAVA_HOME; or point meterline at a running cluster with kafka.brokers")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub struct KafkaBroker {
    java: PathBuf,
    libs: PathBuf,
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    child: Option<Child>,
}

impl KafkaBroker {
    /// Starts a broker with its files in `dir` (created if missing; formatted unless it holds a
    /// formatted log dir already) and waits until it answers metadata requests. Ports: the ones
    /// of the previous run in `dir` when they are free, else free ones.
    pub fn start(dir: &Path) -> anyhow::Result<KafkaBroker> {
        Self::start_on(dir, None)
    }

    /// As [`start`](Self::start), clients on `port` if it is given and free (else on the
    /// previous run's port, else a free one).
    pub fn start_on(dir: &Path, port: Option<u16>) -> anyhow::Result<KafkaBroker> {
        let libs = kafka_libs()?;
        let java = java_bin()?;
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let previous = previous_ports(&dir);
        // The first free of the candidates, else any free port other than `taken`.
        let pick = |candidates: &[Option<u16>], taken: u16| {
            candidates
                .iter()
                .flatten()
                .copied()
                .find(|&p| p != taken && port_is_free(p))
                .unwrap_or_else(|| loop {
                    let p = free_port();
                    if p != taken {
                        break p;
                    }
                })
        };
        let port = pick(&[port, previous.map(|p| p.0)], 0);
        let controller_port = pick(&[previous.map(|p| p.1)], port);
        let mut b = KafkaBroker {
            java,
            libs,
            dir,
            port,
            controller_port,
            child: None,
        };
        b.write_config()?;
        b.format_once()?;
        b.spawn()?;
        Ok(b)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's directory (config, logs, `data/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's own log (warnings and errors).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let (port, cport) = (self.port, self.controller_port);
        // One node, every internal topic with one replica; small partition counts for the
        // internal topics (the group and transaction coordinators load them on first use);
        // timed-out transactions aborted within a second; consumer session timeouts down to
        // 1 s (tests use 2 s; Kafka's default floor is 6 s); a new group's first rebalance
        // without the 3 s wait. A broker restarted after a SIGKILL cannot register until its
        // previous incarnation's session has expired (DUPLICATE_BROKER_REGISTRATION): a 3 s
        // session instead of 9 s halves that restart (13.5 s → 6-8 s measured).
        let props = format!(
            "# Written by meterline (src/broker.rs) at every start.\n\
             process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{cport}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             log.dirs={data}\n\
             num.partitions=1\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=4\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=4\n\
             transaction.abort.timed.out.transaction.cleanup.interval.ms=1000\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             group.min.session.timeout.ms=1000\n\
             broker.session.timeout.ms=3000\n\
             broker.heartbeat.interval.ms=500\n\
             log.cleaner.dedupe.buffer.size=33554432\n",
            data = escape_property(&data.to_string_lossy()),
        );
        std::fs::write(self.dir.join("server.properties"), props)?;
        let log4j = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by meterline (src/broker.rs) at every start. -->
<!-- Warnings and errors, plus the start line and the group coordinator's joins, rebalances
     and expired members (what explains a stage waiting for its partitions). -->
<Configuration status="warn">
  <Appenders>
    <RollingFile name="file" fileName="{log}" filePattern="{log}.%i" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <SizeBasedTriggeringPolicy size="10 MB"/>
      <DefaultRolloverStrategy max="2"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="kafka.server.KafkaRaftServer" level="info"/>
    <Logger name="org.apache.kafka.coordinator.group" level="info"/>
    <Root level="warn"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"#,
            log = xml_escape(&self.log_path().to_string_lossy())
        );
        std::fs::write(self.dir.join("log4j2.xml"), log4j)?;
        Ok(())
    }

    /// `java <options> -cp <libs>/* <main> <args>`, in the broker directory, its output
    /// appended to `broker.out`.
    fn java(&self, main: &str, args: &[&str]) -> anyhow::Result<Command> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.out"))?;
        let mut c = Command::new(&self.java);
        // A small heap and the serial collector suit a one-node broker on a small machine;
        // METERLINE_KAFKA_JAVA_OPTS is appended (a later -Xmx wins).
        c.args([
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
        ]);
        c.arg(format!(
            "-Dlog4j2.configurationFile={}",
            self.dir.join("log4j2.xml").display()
        ));
        if let Ok(extra) = std::env::var("METERLINE_KAFKA_JAVA_OPTS") {
            c.args(extra.split_whitespace());
        }
        c.arg("-cp")
            .arg(format!("{}/*", self.libs.display()))
            .arg(main)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out));
        Ok(c)
    }

    /// Formats the log dir unless it is formatted already (then its data is kept).
    fn format_once(&self) -> anyhow::Result<()> {
        if self.dir.join("data/meta.properties").is_file() {
            return Ok(());
        }
        let from = out_len(&self.dir);
        let status = self
            .java(
                "kafka.tools.StorageTool",
                &[
                    "format",
                    "-t",
                    &random_cluster_id(),
                    "-c",
                    "server.properties",
                ],
            )?
            .status()
            .with_context(|| format!("running {}", self.java.display()))?;
        if !status.success() {
            bail!(
                "formatting Kafka storage in {} failed ({status}):\n{}",
                self.dir.display(),
                self.output_since(from)
            );
        }
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let from = out_len(&self.dir);
        let log_from = file_len(&self.log_path());
        let mut cmd = self.java("kafka.Kafka", &["server.properties"])?;
        die_with_parent(&mut cmd);
        let child = spawn_from_long_lived_thread(cmd)
            .with_context(|| format!("starting {}", self.java.display()))?;
        self.child = Some(child);
        if let Err(e) = self.wait_ready(READY_TIMEOUT) {
            self.kill();
            let log = tail(&self.log_path(), log_from);
            bail!(
                "{e:#}\n--- {}:\n{log}\n--- {}:\n{}",
                self.log_path().display(),
                self.dir.join("broker.out").display(),
                self.output_since(from)
            );
        }
        Ok(())
    }

    /// Ready = the broker accepts connections and answers a metadata request listing itself.
    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let addr: SocketAddr = self.bootstrap().parse()?;
        let t0 = Instant::now();
        let exited = |c: &mut Option<Child>| -> anyhow::Result<()> {
            if let Some(status) = c.as_mut().map(|c| c.try_wait()).transpose()?.flatten() {
                bail!("Apache Kafka exited with {status}");
            }
            Ok(())
        };
        // First the socket (no client noise while the JVM starts)…
        loop {
            exited(&mut self.child)?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if t0.elapsed() > limit {
                bail!("Apache Kafka did not listen on {addr} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // …then the protocol.
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("client.id", "meterline-broker-ready")
            .create()?;
        loop {
            exited(&mut self.child)?;
            match c.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(md) if md.brokers().iter().any(|b| b.port() as u16 == self.port) => {
                    return Ok(())
                }
                _ if t0.elapsed() > limit => {
                    bail!("Apache Kafka on {addr} did not answer metadata within {limit:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Whether the broker process is alive (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the broker abruptly (SIGKILL), as a crash or outage would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the broker cleanly (SIGTERM: controlled shutdown, logs flushed), SIGKILL after
    /// `limit`.
    pub fn stop(&mut self, limit: Duration) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < limit {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data (after a [`kill`](Self::kill), a crash
    /// recovery).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    fn output_since(&self, from: u64) -> String {
        tail(&self.dir.join("broker.out"), from)
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The ports a previous run in `dir` used (its `server.properties`).
fn previous_ports(dir: &Path) -> Option<(u16, u16)> {
    let props = std::fs::read_to_string(dir.join("server.properties")).ok()?;
    let listeners = props.lines().find_map(|l| l.strip_prefix("listeners="))?;
    let port_of = |name: &str| -> Option<u16> {
        listeners
            .split(',')
            .find_map(|l| l.strip_prefix(name))?
            .rsplit(':')
            .next()?
            .parse()
            .ok()
    };
    Some((port_of("PLAINTEXT://")?, port_of("CONTROLLER://")?))
}

/// The broker is its own process group (a terminal's Ctrl-C reaches `meterline dev`, which
/// stops it in order) and is SIGKILLed by the kernel when its parent dies, however it dies (a
/// test binary that panics, aborts or is killed leaves no JVM behind).
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent died before the prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
            }
            let _ = parent;
            Ok(())
        });
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from one thread that lives as long as the process: PR_SET_PDEATHSIG fires when
/// the *thread* that forked the child ends, and a test's thread ends long before the test
/// binary (whose other tests share the broker) does.
fn spawn_from_long_lived_thread(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("meterline-broker-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                    // Every sender gone cannot happen (the static holds one): park forever
                    // rather than end and take the children with it.
                    loop {
                        std::thread::park();
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
        .map_err(|_| io::Error::other("broker spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("broker spawner thread gone"))?
}

/// A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's `Uuid`
/// text form; ids starting with '-' are avoided as Kafka's own generator does).
fn random_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let bytes = *uuid::Uuid::new_v4().as_bytes();
        let mut bits: u32 = 0;
        let mut n = 0;
        let mut out = String::with_capacity(22);
        for b in bytes {
            bits = (bits << 8) | b as u32;
            n += 8;
            while n >= 6 {
                n -= 6;
                out.push(ALPHABET[((bits >> n) & 63) as usize] as char);
            }
        }
        if n > 0 {
            out.push(ALPHABET[((bits << (6 - n)) & 63) as usize] as char);
        }
        if !out.starts_with('-') {
            return out;
        }
    }
}

fn escape_property(v: &str) -> String {
    v.replace('\\', "\\\\")
}

fn xml_escape(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn out_len(dir: &Path) -> u64 {
    file_len(&dir.join("broker.out"))
}

/// The last 40 lines written to `p` since byte `from`.
fn tail(p: &Path, from: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafka_uuids() {
        for _ in 0..100 {
            let id = random_cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'));
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }

    #[test]
    fn ports_of_a_previous_run_are_read_back() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("server.properties"),
            "node.id=1\nlisten=x\nlisteners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:40001\n",
        )
        .unwrap();
        assert_eq!(previous_ports(d.path()), Some((9092, 40001)));
    }
}
