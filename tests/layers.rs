//! The layers of `src/` (see `src/lib.rs`): each may use only those below it,
//! and the pure core names no Pingora type. A text check, cheap enough to run
//! with every test: an import that climbs a layer fails here, with its place.

use std::path::{Path, PathBuf};

/// Bottom to top.
const LAYERS: [&str; 6] = ["core", "telemetry", "tables", "proxy", "net", "runtime"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `(file, line number, line)` of a layer's sources.
fn lines_of(layer: &str) -> Vec<(String, usize, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(layer);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(!files.is_empty(), "no sources under {}", root.display());
    let mut lines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        let name = file.display().to_string();
        for (i, line) in text.lines().enumerate() {
            lines.push((name.clone(), i + 1, line.to_string()));
        }
    }
    lines
}

#[test]
fn no_layer_uses_one_above_it() {
    let mut climbs = Vec::new();
    for (level, layer) in LAYERS.iter().enumerate() {
        for (file, n, line) in lines_of(layer) {
            for above in &LAYERS[level + 1..] {
                if line.contains(&format!("crate::{above}::"))
                    || line.contains(&format!("crate::{above}}}"))
                {
                    climbs.push(format!("{file}:{n}: {layer} uses {above}: {}", line.trim()));
                }
            }
        }
    }
    assert!(
        climbs.is_empty(),
        "imports that climb a layer:\n{}",
        climbs.join("\n")
    );
}

#[test]
fn the_core_names_no_pingora_type() {
    let found: Vec<String> = lines_of("core")
        .into_iter()
        .filter(|(_, _, line)| line.contains("pingora_") && !line.trim_start().starts_with("//"))
        .map(|(file, n, line)| format!("{file}:{n}: {}", line.trim()))
        .collect();
    assert!(
        found.is_empty(),
        "Pingora in the pure core:\n{}",
        found.join("\n")
    );
}
