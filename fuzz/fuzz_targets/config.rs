//! Config loading: any text is either a config or a list of errors, each with a
//! position inside the file; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "SET").then(|| "value".to_string());
    if let Err(errors) = portcullis::core::config::load_str(text, "fuzz.yaml", &env) {
        assert!(!errors.0.is_empty(), "an error result lists its errors");
        // YAML breaks lines at LF, CRLF and a lone CR alike.
        let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 2;
        for e in &errors.0 {
            assert!(e.line >= 1 && e.line <= lines, "{e:?} outside {lines} lines");
            assert!(e.col >= 1, "{e:?}");
        }
    }
});
