//! Start-up on an address another process holds: exit non-zero at once with one
//! clear line, never a banner or a live process without its listener.

mod common;

use common::*;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary to its end (killed after `limit`): its output and how long it ran.
fn run_to_exit(args: &[&str], limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portcullis");
    while started.elapsed() < limit {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let took = started.elapsed();
    (child.wait_with_output().expect("output"), took)
}

#[test]
fn a_listen_address_in_use_stops_the_gateway_at_once_with_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = temp_dir("port-in-use");
    let config = dir.join("gateway.yaml");
    let text = one_route_config(&[addr], "", "")
        .replace("{listen}", &addr.to_string())
        .replace("{admin}", &format!("127.0.0.1:{}", free_port()));
    std::fs::write(&config, text).expect("write config");
    let path = config.to_string_lossy().into_owned();
    let (out, took) = run_to_exit(&["-c", &path], Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "exit status {:?}: {stderr}",
        out.status
    );
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    assert!(
        stderr.contains(&format!("{addr}: address already in use")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_demo_on_a_busy_port_says_so_and_prints_no_banner() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let admin = format!("127.0.0.1:{}", free_port());
    let listen = addr.to_string();
    let (out, took) = run_to_exit(
        &["demo", "--listen", &listen, "--admin", &admin],
        Duration::from_secs(15),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "exit status {:?}: {stderr}",
        out.status
    );
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    assert!(stderr.contains("address already in use"), "{stderr}");
    assert!(
        !stdout.contains("Portcullis demo"),
        "a banner for a port it does not own: {stdout}"
    );
}
