//! Zero-downtime binary upgrade, black-box: a new process started with
//! `--upgrade` takes the listening sockets over from the old one (SIGQUIT)
//! while a client keeps connecting; no connection is refused, no request lost.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn upgrade_hands_the_listeners_over_without_refusing_a_connection() {
    let backend = Backend::echo();
    let config = one_route_config(&[backend.addr], "", "")
        .replace("shutdown_grace: 5s", "shutdown_grace: 1s");
    let mut old = Gateway::start(&config);
    let addr = old.addr;

    // A client that opens a new connection for every request, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (stop, failures) = (stop.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) {
                let raw = format!(
                    "GET /work HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {KEY}\r\nconnection: close\r\n\r\n"
                );
                match send_raw(addr, raw.as_bytes()) {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("status {}", r.status)),
                    Err(e) => failures.lock().expect("lock").push(e.to_string()),
                }
                sent += 1;
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    let new_dir = temp_dir("upgrade");
    let mut new = Command::new(BIN)
        .arg("-c")
        .arg(&old.config_path)
        .arg("--upgrade")
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(new_dir.join("stdout.log")).expect("stdout"))
        .stderr(std::fs::File::create(new_dir.join("stderr.log")).expect("stderr"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start the new binary");
    // The new process waits on the hand-over socket; the old one sends on SIGQUIT.
    std::thread::sleep(Duration::from_millis(500));
    old.signal("-QUIT");

    let deadline = Instant::now() + Duration::from_secs(15);
    let new_pid = new.id();
    let mut handed_over = false;
    while !handed_over && Instant::now() < deadline {
        let ready = send_raw(
            old.admin,
            b"GET /readyz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
        .is_ok_and(|r| r.status == 200 && r.json()["pid"] == new_pid);
        handed_over = ready;
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(handed_over, "the new process never answered /readyz");
    let exited = old.wait_exit(Duration::from_secs(10));
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(0),
        "the old process drains and exits 0"
    );
    // Keep sending to the new process alone for a moment.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let sent = client.join().expect("client");

    let stderr = std::fs::read_to_string(new_dir.join("stderr.log")).unwrap_or_default();
    let _ = new.kill();
    let _ = new.wait();
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}\n{stderr}",
        failures.len()
    );
    assert!(sent > 20, "the client kept sending ({sent})");
    let new_served = send_raw(
        addr,
        format!("GET /work HTTP/1.1\r\nhost: a\r\nx-api-key: {KEY}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(new_served.is_err(), "nothing listens once both are gone");
}
