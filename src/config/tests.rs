use crate::config::{load_str, ConfigError};

fn env(name: &str) -> Option<String> {
    match name {
        "SECRET" => Some("s3cr3t\nvalue".to_string()),
        "KEY" => Some("topsecretkey".to_string()),
        _ => None,
    }
}

fn show(src: &str) {
    match load_str(src, "gateway.yaml", &env) {
        Ok(c) => match crate::gateway::Gateway::compile(&c, "gateway.yaml") {
            Ok(_) => println!("OK"),
            Err(e) => println!("COMPILE:\n{e}"),
        },
        Err(e) => println!("LOAD:\n{e}"),
    }
    let _: Option<ConfigError> = None;
}

#[test]
fn probe() {
    let cases = [
"listen:\n  - addr: 127.0.0.1:8000\nconsumers:\n  - name: web\n    keys: supersecretkey\nroutes: []\n",
"listen:\n  - addr: 127.0.0.1:8000\nupstreams:\n  u:\n    peers: [\"127.0.0.1:8001\"]\nroutes:\n  - name: \"${KEY}\"\n    path: /a\n    upstream: \"${KEY}\"\n  - name: \"${KEY}\"\n    path: /b\n    upstream: u\n",
"listen:\n  - addr: 127.0.0.1:8000\nshutdown_grace: 5 parsecs\nroutes:\n  - name: a\n    path: /a\n    upstream: nope\n",
"listen:\n  - addr: 127.0.0.1:8000\nconsumers:\n  - name: web\n    key_hashes: [\"sha256:+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0+0\"]\nroutes: []\n",
"listen:\n  - addr: 127.0.0.1:8000\nupstreams:\n  u:\n    peers: [\"127.0.0.1:8001\"]\n    headers: {x-secret: \"${SECRET}\"}\n    balance: fastest\nroutes: []\n",
"listen:\n  - addr: 127.0.0.1:8000\nupstreams:\n  u:\n    peers: [\"${KEY}\"]\nroutes: []\n",
"listen:\n  - addr: 127.0.0.1:8000\nconsumers:\n  - name: a\n    keys: [\"${KEY}\"]\n  - name: b\n    keys: [topsecretkey]\nroutes: []\n",
    ];
    for c in cases {
        println!("---\n{c}");
        show(c);
    }
    panic!();
}
