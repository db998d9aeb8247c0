//! The README's quick start, run as written: every `curl` line of its command
//! block against `portcullis demo` (on free ports instead of 8000, 8001 and
//! 9100), each answer's status checked against the one its comment names.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// The `curl` lines of the quick start's `sh` block, each with the status its
/// comment (on the line, or the comment line after it) names, if any.
fn quickstart_commands() -> Vec<(String, Option<u16>)> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## Quick start")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("a quick start with an sh block");
    let lines: Vec<&str> = section.lines().collect();
    let status_in = |comment: &str| {
        comment
            .split(|c: char| !c.is_ascii_digit())
            .find(|w| w.len() == 3)
            .and_then(|w| w.parse::<u16>().ok())
    };
    let mut commands = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with("curl ") {
            continue;
        }
        let (command, comment) = match line.split_once(" #") {
            Some((c, comment)) => (c.trim().to_string(), Some(comment)),
            None => (line.trim().to_string(), None),
        };
        let next_comment = lines.get(i + 1).and_then(|l| l.strip_prefix('#'));
        let expected = comment
            .and_then(status_in)
            .or_else(|| next_comment.and_then(status_in));
        commands.push((command, expected));
    }
    commands
}

#[test]
fn the_readme_quick_start_works_as_written() {
    let commands = quickstart_commands();
    assert!(commands.len() >= 7, "{commands:?}");
    let demo = Demo::start(&temp_dir("quickstart"));
    let (listen, admin) = (demo.listen.to_string(), demo.admin.to_string());
    let users = demo
        .banner("user service")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|url| url.strip_prefix("http://"))
        .expect("the user service's address is printed")
        .to_string();
    for (command, expected) in commands {
        let run = command
            .replace("localhost:8000", &listen)
            .replace("localhost:8001", &users)
            .replace("localhost:9100", &admin);
        let out = Command::new("bash")
            .args(["-c", &run])
            .output()
            .expect("run the command");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{command}: {:?}\n{stdout}",
            out.status
        );
        if let Some(status) = expected {
            let line = stdout.lines().next().unwrap_or_default();
            if line.starts_with("HTTP/") {
                assert!(
                    line.contains(&format!(" {status}")),
                    "{command}: expected {status}, got {line}"
                );
            }
        }
    }
}

#[test]
fn the_demo_prints_a_bearer_token_and_a_curl_line_that_works() {
    let demo = Demo::start(&temp_dir("demo-token"));
    let listen = demo.listen;
    let token = demo
        .banner("bearer token")
        .expect("the token is printed")
        .to_string();
    assert_eq!(token.split('.').count(), 3, "a JWS compact token");
    let curl = demo
        .printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl ") && l.contains("authorization: Bearer"))
        .expect("a curl line with the token")
        .split(" # ")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(curl.contains(&token));
    // The demo's JWKS may still be on its way at start: a few tries.
    let mut last = String::new();
    for _ in 0..50 {
        let out = Command::new("bash")
            .args(["-c", &curl])
            .output()
            .expect("run curl");
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if last.starts_with("HTTP/1.1 200") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(last.starts_with("HTTP/1.1 200"), "{last}");
    assert!(last.contains("\"user_id\":1"), "{last}");
    let without = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{listen}/orders?user_id=1"))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&without.stdout), "401");
}
