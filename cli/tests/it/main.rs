//! End-to-end tests of the `fathom` binary: one integration binary, modules
//! by topic. Each test runs the real executable against a temporary data
//! directory.

mod crash;
mod log;
mod sandbox;
mod score;
mod web;

use std::path::Path;
use std::process::{Command, Output};

/// The `fathom` binary under test.
pub fn fathom(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fathom"));
    cmd.arg("--data").arg(data);
    cmd.env_remove("FATHOM_DATA");
    cmd
}

/// Runs `fathom --data DATA ARGS…` to completion.
pub fn run(data: &Path, args: &[&str]) -> Output {
    fathom(data).args(args).output().expect("fathom runs")
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
