//! End-to-end tests of the `fathom` binary: one integration binary, modules
//! by topic. Each test runs the real executable against a temporary data
//! directory.

mod browser;
mod crash;
mod eval;
mod log;
mod model;
mod replay;
mod sandbox;
mod scale;
mod score;
mod snapshot;
mod train;
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

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `fathom sandbox serve` on free loopback ports and returns the
/// child (kill it when done) and the search API's `host:port`.
pub fn spawn_sandbox(data: &Path, seed: &str, entities: &str) -> (std::process::Child, String) {
    spawn_server(
        data,
        &[
            "sandbox",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--seed",
            seed,
            "--entities",
            entities,
        ],
        "listening on http://",
    )
}

/// Starts a `fathom` server command and returns it with what its first
/// line names after `prefix` (up to a space or `;`).
pub fn spawn_server(data: &Path, args: &[&str], prefix: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = fathom(data)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fathom starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let named = line
        .trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches(';')
        .to_string();
    (child, named)
}

/// A minimal HTTP/1.1 GET over loopback, returning the body (a 200 is
/// required).
pub(crate) fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// A `fathom log load` that appends to the log of `data` until killed,
/// printing an `ack FIRST LAST` line per durable batch.
pub(crate) fn spawn_writer(
    data: &std::path::Path,
) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    let mut writer = fathom(data)
        .args([
            "--snapshot-every",
            "off",
            "log",
            "load",
            "--events",
            "0",
            "--print-acks",
            "--no-verify",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the writer starts");
    let acks = std::io::BufReader::new(writer.stdout.take().unwrap());
    (writer, acks)
}

/// A `fathom log load` that holds the log of `data` and keeps appending
/// until killed, started and past its first acknowledged batch (so its
/// read endpoint answers).
pub(crate) fn hold_log(data: &std::path::Path) -> std::process::Child {
    use std::io::BufRead;
    let (writer, mut acks) = spawn_writer(data);
    let mut line = String::new();
    acks.read_line(&mut line).unwrap();
    assert!(line.starts_with("ack"), "the writer acknowledged nothing: {line:?}");
    // Keep reading its acknowledgements so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut acks, &mut std::io::sink()));
    writer
}
