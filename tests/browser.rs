//! CORS and the docs page in a real browser (SPEC §8.4): Debian's headless
//! Chromium (`bash .ci/setup` installs it) against the real binary, all on
//! loopback. A page is read back with `--dump-dom`; the docs page's "try it
//! out" is clicked through the DevTools protocol over `--remote-debugging-pipe`
//! (two FIFOs, NUL-separated JSON), with no driver or crate in between.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "chromium";

/// Flags for a headless Chromium that talks to nobody but loopback: no
/// sandbox (tests run as root in CI), its own profile, no background traffic.
fn chromium_flags(profile: &Path) -> Vec<String> {
    [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-sync",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--metrics-recording-only",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// Waits for `child` at most `limit`; kills it past that.
fn wait_or_kill(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// The DOM of `url` after its scripts ran (their fetches included).
fn dump_dom(url: &str) -> String {
    let dir = temp_dir("chromium");
    let out_path = dir.join("dom.html");
    let mut child = Command::new(CHROMIUM)
        .args(chromium_flags(&dir.join("profile")))
        .args(["--virtual-time-budget=15000", "--dump-dom", url])
        .stdout(std::fs::File::create(&out_path).expect("dom file"))
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr file"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start chromium (bash .ci/setup installs it)");
    let finished = wait_or_kill(&mut child, Duration::from_secs(60));
    // The profile has seen pages holding the test key: not kept.
    let _ = std::fs::remove_dir_all(dir.join("profile"));
    assert!(finished, "chromium --dump-dom {url} took over 60 s");
    std::fs::read_to_string(&out_path).unwrap_or_default()
}

/// A static page server on its own loopback port: another origin than the
/// gateway's. Serves `html` at every path.
fn page_server(html: String) -> Backend {
    Backend::start(move |_| {
        let mut answer = Answer::json(200, &html);
        answer.headers = vec![("content-type".into(), "text/html; charset=utf-8".into())];
        answer
    })
}

/// The text of the element with this id in a dumped DOM.
fn element_text(dom: &str, id: &str) -> String {
    let open = format!("id=\"{id}\">");
    dom.split_once(&open)
        .and_then(|(_, rest)| rest.split_once('<'))
        .map(|(text, _)| text.replace("&quot;", "\"").replace("&amp;", "&"))
        .unwrap_or_else(|| panic!("no #{id} in:\n{dom}"))
}

fn echo_users() -> Backend {
    Backend::start(|r| {
        Answer::json(
            200,
            &json!({"id": 1, "name": "Ada", "path": r.target}).to_string(),
        )
    })
}

#[test]
fn a_page_on_an_allowed_origin_calls_the_gateway_through_a_preflight() {
    let backend = echo_users();
    let allowed_port = free_port();
    let allowed_origin = format!("http://127.0.0.1:{allowed_port}");
    let gw = Gateway::start(&format!(
        "{head}upstreams:\n  users: {{ peers: [\"{peer}\"] }}\nroutes:\n\
         \x20 - name: users\n    path: /users\n    methods: [GET]\n    upstream: users\n\
         \x20   cors:\n      origins: [\"{allowed_origin}\"]\n      headers: [x-api-key]\n\
         \x20     expose_headers: [x-request-id]\n      max_age: 1m\n",
        head = config_head(),
        peer = backend.addr,
    ));
    // With the key, then without: the 401 is the gateway's, and readable too.
    let html = format!(
        r#"<!DOCTYPE html><html><body><pre id="with-key">pending</pre><pre id="without-key">pending</pre>
<script>
const show = (id, text) => {{ document.getElementById(id).textContent = text; }};
const call = (id, headers) => fetch("http://{gw}/users/1", {{ headers }})
  .then(async r => show(id, "status " + r.status + " request-id " + r.headers.get("x-request-id") + " body " + await r.text()))
  .catch(e => show(id, "failed " + e.name));
call("with-key", {{ "x-api-key": "{KEY}" }}).then(() => call("without-key", {{}}));
</script></body></html>"#,
        gw = gw.addr,
    );
    let allowed = Backend::start_on(
        std::net::TcpListener::bind(("127.0.0.1", allowed_port)).expect("bind the page's port"),
        {
            let html = html.clone();
            move |_| {
                let mut answer = Answer::json(200, &html);
                answer.headers = vec![("content-type".into(), "text/html".into())];
                answer
            }
        },
    );
    let other = page_server(html);

    let dom = dump_dom(&format!("http://{}/", allowed.addr));
    let with_key = element_text(&dom, "with-key");
    assert!(with_key.starts_with("status 200 request-id "), "{with_key}");
    assert!(with_key.contains("\"name\":\"Ada\""), "{with_key}");
    assert!(
        !with_key.contains("request-id null"),
        "x-request-id is exposed: {with_key}"
    );
    let without_key = element_text(&dom, "without-key");
    assert!(
        without_key.starts_with("status 401 ") && without_key.contains("missing_api_key"),
        "{without_key}"
    );
    let log = gw.access_log();
    let seen: Vec<(String, u64)> = log
        .iter()
        .map(|l| {
            (
                l["method"].as_str().unwrap_or_default().to_string(),
                l["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen[..2],
        [("OPTIONS".to_string(), 204), ("GET".to_string(), 200)],
        "a preflight first, then the call: {log:?}"
    );
    let reached = backend.requests();
    assert_eq!(reached.len(), 1, "only the call with the key: {reached:?}");
    assert_eq!(reached[0].method, "GET");

    // The same page from an origin the route does not name: the browser's
    // preflight is refused and the script sees a network error.
    let dom = dump_dom(&format!("http://{}/", other.addr));
    assert_eq!(element_text(&dom, "with-key"), "failed TypeError", "{dom}");
    assert_eq!(element_text(&dom, "without-key"), "failed TypeError");
    assert_eq!(
        backend.requests().len(),
        1,
        "nothing more reached the upstream"
    );
    let refused = gw
        .access_log()
        .into_iter()
        .filter(|l| l["error"] == "cors_rejected")
        .count();
    assert!(refused >= 1, "the preflight was refused by the gateway");
}

/// The DevTools protocol over `--remote-debugging-pipe`.
struct DevTools {
    child: Child,
    profile: std::path::PathBuf,
    to_browser: std::fs::File,
    from_browser: BufReader<std::fs::File>,
    next_id: u64,
}

impl DevTools {
    fn start() -> DevTools {
        let dir = temp_dir("cdp");
        let (to, from) = (dir.join("to-browser"), dir.join("from-browser"));
        for fifo in [&to, &from] {
            let made = Command::new("mkfifo").arg(fifo).status();
            assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        }
        // Chromium reads the protocol from fd 3 and writes it to fd 4.
        let child = Command::new("bash")
            .arg("-c")
            .arg(r#"exec "$0" "$@" --remote-debugging-pipe 3<"$CDP_TO" 4>"$CDP_FROM""#)
            .arg(CHROMIUM)
            .args(chromium_flags(&dir.join("profile")))
            .arg("about:blank")
            .env("CDP_TO", &to)
            .env("CDP_FROM", &from)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr file"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start chromium (bash .ci/setup installs it)");
        // Opening a FIFO waits for its other end: bash opens `to` first.
        let to_browser = std::fs::OpenOptions::new()
            .write(true)
            .open(&to)
            .expect("open the pipe to chromium");
        let from_browser = BufReader::new(std::fs::File::open(&from).expect("open the pipe back"));
        DevTools {
            child,
            profile: dir.join("profile"),
            to_browser,
            from_browser,
            next_id: 1,
        }
    }

    /// Sends one command (to a page's session, if given) and returns its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .expect("write to chromium");
        loop {
            let mut raw = Vec::new();
            let n = self
                .from_browser
                .read_until(0, &mut raw)
                .expect("read from chromium");
            assert!(n > 0, "chromium closed the pipe during {method}");
            raw.pop();
            let Ok(reply) = serde_json::from_slice::<Value>(&raw) else {
                continue;
            };
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates a script in the page and returns its value (a promise's, awaited).
    fn evaluate(&mut self, session: &str, script: &str) -> Value {
        let result = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": script, "awaitPromise": true, "returnByValue": true}),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "the script failed: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }
}

impl Drop for DevTools {
    fn drop(&mut self) {
        let _ = self
            .to_browser
            .write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        if !wait_or_kill(&mut self.child, Duration::from_secs(10)) {
            eprintln!("chromium did not close: killed");
        }
        // The profile has seen the test key typed in: not kept.
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Clicks through the docs page as a person would: Authorize with the key
/// (or token) in the box of scheme `__SCHEME__`,
/// open operation `__OP__`, "Try it out", `id` 1 when it has one, Execute;
/// resolves to the live response's status, body and the URL called.
const TRY_IT_OUT: &str = r#"
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const waitFor = async (what, find) => {
    for (let i = 0; i < 300; i++) {
      const found = find();
      if (found) return found;
      await sleep(50);
    }
    const op = document.getElementById("operations-default-__OP__");
    throw new Error("not found on the docs page: " + what + "; the operation shows: " + (op ? op.innerText.slice(0, 2000) : "nothing"));
  };
  const type = (input, text) => {
    const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set;
    setter.call(input, text);
    input.dispatchEvent(new Event("input", { bubbles: true }));
  };
  const button = (scope, text) => [...scope.querySelectorAll("button")].find(b => b.textContent.trim() === text);

  (await waitFor("Authorize", () => document.querySelector(".auth-wrapper button.authorize"))).click();
  const dialog = await waitFor("the authorize dialog", () => document.querySelector(".dialog-ux .modal-ux"));
  // One box per scheme the document declares (apiKey, bearer): the one named.
  const box = await waitFor("the __SCHEME__ scheme", () =>
    [...dialog.querySelectorAll(".auth-container")].find(c => c.querySelector("h4") && c.querySelector("h4").textContent.includes("__SCHEME__")));
  type(await waitFor("the __SCHEME__ field", () => box.querySelector("input")), "__KEY__");
  (await waitFor("its Authorize", () => button(box, "Authorize"))).click();
  (await waitFor("Close", () => button(document, "Close"))).click();

  const op = await waitFor("__OP__", () => document.getElementById("operations-default-__OP__"));
  (op.querySelector("button.opblock-summary-control") || op.querySelector(".opblock-summary")).click();
  (await waitFor("Try it out", () => op.querySelector("button.try-out__btn"))).click();
  const id = op.querySelector("tr[data-param-name='id'] input");
  if (id) type(id, "1");
  // Swagger UI debounces parameter fields before it takes their value.
  // Until it took the value, Execute only says the field is required: again.
  const live = () => op.querySelector(".live-responses-table .response .response-col_status");
  for (let i = 0; i < 20 && !live(); i++) {
    (await waitFor("Execute", () => op.querySelector("button.execute"))).click();
    for (let j = 0; j < 10 && !live(); j++) await sleep(50);
  }
  const status = await waitFor("the live response", live);
  const body = op.querySelector(".live-responses-table .response-col_description pre, .live-responses-table .microlight");
  const url = op.querySelector(".request-url pre");
  const loaded = performance.getEntriesByType("resource").map(e => e.name);
  return { status: status.textContent.trim(), body: body ? body.textContent : "", url: url ? url.textContent : "", loaded };
})()
"#;

/// Routes of several shapes; `/users/{id}` has `cors` for the admin
/// listener's origin (`{admin}` is filled in by `Gateway::start`).
/// Opens the docs page at `url` in a browser and tries operation `op` out
/// (see [`TRY_IT_OUT`]).
fn try_it_out(url: &str, op: &str, key: &str) -> Value {
    try_it_out_as(url, op, "apiKey", key)
}

/// [`try_it_out`] with the credential typed into the box of `scheme`
/// (`apiKey` or `bearer`, as `/openapi.json` names them).
fn try_it_out_as(url: &str, op: &str, scheme: &str, key: &str) -> Value {
    let mut browser = DevTools::start();
    let target = browser.call(None, "Target.createTarget", json!({ "url": url }));
    let target_id = target["targetId"].as_str().expect("a target").to_string();
    let attached = browser.call(
        None,
        "Target.attachToTarget",
        json!({"targetId": target_id, "flatten": true}),
    );
    let session = attached["sessionId"]
        .as_str()
        .expect("a session")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let loaded = browser.evaluate(
            &session,
            "document.readyState === 'complete' && location.pathname === '/docs'",
        );
        if loaded == json!(true) {
            break;
        }
        assert!(Instant::now() < deadline, "the docs page did not load");
        std::thread::sleep(Duration::from_millis(100));
    }
    browser.evaluate(
        &session,
        &TRY_IT_OUT
            .replace("__KEY__", key)
            .replace("__OP__", op)
            .replace("__SCHEME__", scheme),
    )
}

fn docs_config(backend: &Backend) -> String {
    format!(
        "{head}upstreams:\n  users: {{ peers: [\"{peer}\"] }}\nroutes:\n\
         \x20 - name: users\n    path: /users\n    methods: [GET, POST]\n    upstream: users\n\
         \x20 - name: user\n    path: \"/users/{{id}}\"\n    methods: [GET, DELETE]\n    upstream: users\n\
         \x20   cors: {{ origins: [\"http://{{admin}}\"], headers: [x-api-key, authorization] }}\n\
         \x20 - {{ name: health, path: /health, exact: true, auth: none, respond: {{ status: 200, body: ok }} }}\n",
        head = config_head(),
        peer = backend.addr,
    )
}

#[test]
fn the_docs_page_renders_every_route() {
    let backend = echo_users();
    let gw = Gateway::start(&docs_config(&backend));
    let dom = dump_dom(&format!("http://{}/docs", gw.admin));
    for (path, methods) in [
        ("/users", &["get", "post"][..]),
        ("/users/{id}", &["get", "delete"][..]),
        ("/health", &["get"][..]),
    ] {
        assert!(
            dom.contains(&format!("data-path=\"{path}\"")),
            "{path} is not on the page:\n{dom}"
        );
        for method in methods {
            let route = match path {
                "/users" => "users",
                "/users/{id}" => "user",
                _ => "health",
            };
            let id = format!("id=\"operations-default-{route}_{method}\"");
            assert!(dom.contains(&id), "{method} {path}: no {id}");
        }
    }
    assert!(dom.contains("btn authorize"), "an Authorize button");
    assert!(dom.contains("Portcullis gateway"), "the document's title");
    assert!(
        !dom.contains("validator.swagger.io"),
        "no badge from another host"
    );
}

#[test]
fn try_it_out_on_the_docs_page_calls_the_public_listener_with_the_key() {
    let backend = echo_users();
    let gw = Gateway::start(&docs_config(&backend));
    let admin = gw.admin;
    let result = try_it_out(&format!("http://{admin}/docs"), "user_get", KEY);
    assert_eq!(result["status"], "200", "{result}");
    assert!(
        result["body"].as_str().is_some_and(|b| b.contains("Ada")),
        "{result}"
    );
    let public: SocketAddr = gw.addr;
    assert_eq!(
        result["url"],
        format!("http://{public}/users/1"),
        "to the public listener"
    );
    // Everything the page fetched came from the admin listener (the page,
    // its assets, the document) or the public one (the call): no other host.
    let loaded = result["loaded"].as_array().expect("resource entries");
    assert!(loaded.len() >= 4, "{loaded:?}");
    for url in loaded.iter().filter_map(Value::as_str) {
        assert!(
            url.starts_with(&format!("http://{admin}/docs/"))
                || url.starts_with(&format!("http://{public}/")),
            "fetched from elsewhere: {url}"
        );
    }
    let reached = backend.last();
    assert_eq!(reached.target, "/users/1");
    assert_eq!(
        reached.header("x-api-key"),
        None,
        "the key stays at the gateway"
    );
    let log = gw.access_log();
    assert!(
        log.iter()
            .any(|l| l["method"] == "OPTIONS" && l["status"] == 204),
        "the browser asked first (the key is not a safelisted header): {log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l["method"] == "GET" && l["status"] == 200 && l["consumer"] == "web"),
        "{log:?}"
    );
}

#[test]
fn the_demos_docs_page_tries_its_routes_out() {
    let demo = Demo::start(&temp_dir("demo-docs"));
    // The demo's key, typed into Authorize as its banner says.
    let result = try_it_out(
        &format!("http://{}/docs", demo.admin),
        "users_get",
        "pk_demo_portcullis",
    );
    assert_eq!(result["status"], "200", "{result}");
    assert!(
        result["body"]
            .as_str()
            .is_some_and(|b| b.contains("Ada Lovelace")),
        "{result}"
    );
    assert_eq!(result["url"], format!("http://{}/users", demo.listen));
}

/// Authorize with the bearer token the demo prints (SPEC §8.4: the page's
/// Authorize works for the bearer scheme too), on its `auth: any` route.
#[test]
fn the_demos_docs_page_authorizes_with_the_bearer_token() {
    let demo = Demo::start(&temp_dir("demo-docs-bearer"));
    let token = demo
        .banner("bearer token")
        .expect("the demo prints a bearer token")
        .to_string();
    // The demo's key set may still be on its way at start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let bearer = format!("Bearer {token}");
    while get(demo.listen, "/orders", &[("authorization", &bearer)]).status != 200 {
        assert!(Instant::now() < deadline, "the demo never took its token");
        std::thread::sleep(Duration::from_millis(100));
    }
    let result = try_it_out_as(
        &format!("http://{}/docs", demo.admin),
        "orders_get",
        "bearer",
        &token,
    );
    assert_eq!(result["status"], "200", "{result}");
    assert!(
        result["body"].as_str().is_some_and(|b| b.contains("item")),
        "{result}"
    );
    assert_eq!(result["url"], format!("http://{}/orders", demo.listen));
}
