//! `meterline`: one binary, a subcommand per stage (the commands: `meterline::cli`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Everything meterline writes (ledger, spool, closes, the built-in broker's data, which
    // inherits it) is its owner's alone: files 0600, directories 0700.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // delta-rs's kernel logs every snapshot it builds at info (and an "error" while
                // a new table's first commit is read): its failures reach us as errors anyway
                .unwrap_or_else(|_| {
                    "info,rdkafka=warn,buoyant_kernel=off,deltalake_core=warn".into()
                }),
        )
        .init();
    meterline::cli::run(meterline::cli::Cli::parse()).await
}
