//! The `meterline` binary's library: configuration loading, the local broker launcher used by
//! `meterline dev` and the end-to-end tests, the dev runner and benchmarks.

pub mod admin_cli;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dev;
pub mod loadgen;
pub mod progress;
pub mod rebuild;
