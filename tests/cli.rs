//! The binary as a newcomer runs it: no broker needed for these commands.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

fn meterline() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meterline"));
    c.env_remove("METERLINE_CONFIG");
    c
}

#[test]
fn hash_token_reads_standard_input() {
    let mut child = meterline()
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret-token\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        meterline_runtime::auth::hash_token("s3cret-token")
    );
}

#[test]
fn config_file_from_meterline_config_and_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!("[aggregate]\ndata_dir = {:?}\n", data.to_str().unwrap()),
    )
    .unwrap();
    // METERLINE_CONFIG names the file (it used to be read as a config key and refused), and a
    // program variable such as METERLINE_KAFKA_HOME is not a config key either.
    let out = meterline()
        .env("METERLINE_CONFIG", &cfg)
        .env("METERLINE_KAFKA_HOME", dir.path())
        .args(["compact", "--date", "2026-01-01"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // what meterline creates is its owner's alone
    let usage = data.join("usage");
    let mode = std::fs::metadata(&usage).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", usage.display());
    // a misspelt variable is refused, naming it
    let out = meterline()
        .env("METERLINE_CONFIG", &cfg)
        .env("METERLINE_AGGREGATE_DATA_DIR", "/tmp/x")
        .args(["compact", "--date", "2026-01-01"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("METERLINE_AGGREGATE_DATA_DIR"));
}

/// An unreachable broker is named with the setting that chose it, at the first contact.
#[test]
fn an_unreachable_broker_is_named_with_its_setting() {
    let mut child = meterline()
        .arg("enrich")
        .env("METERLINE_KAFKA__BROKERS", "127.0.0.1:1")
        .env("METERLINE_ENRICH__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn,librdkafka=off,rdkafka=off")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = child.stdout.take().unwrap(); // the log goes to stdout
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(logs).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let want = "cannot reach Kafka at 127.0.0.1:1 (set by kafka.brokers in the config file or \
                METERLINE_KAFKA__BROKERS";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut found = None;
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        if l.contains(want) || l.starts_with("Error") {
            found = Some(l);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        found.as_deref().is_some_and(|l| l.contains(want)),
        "{found:?}"
    );
}
