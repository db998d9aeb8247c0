//! The request-head judge: never panics, a complete head lies inside the input,
//! and what it accepts httparse (Pingora's parser) parses to the same length.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::core::head::{inspect, Verdict, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let max = 64 + data.first().map_or(0, |&b| b as usize) * 16;
    if let Verdict::Complete(n) = inspect(data, max) {
        assert!(n <= data.len());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert_eq!(req.parse(&data[..n]), Ok(httparse::Status::Complete(n)));
        // Judged again on the head alone, the answer is the same.
        assert_eq!(inspect(&data[..n], max), Verdict::Complete(n));
    }
});
