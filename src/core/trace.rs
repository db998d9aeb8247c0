//! W3C Trace Context (`traceparent`): a valid one from the client is kept and
//! passed on; otherwise the gateway starts a trace. No spans are exported: the
//! point is that the gateway's access-log line (`trace_id`) and the backends'
//! own spans join one trace in Tempo, Jaeger or Loki.

use crate::core::forward::push_hex;

/// A request's trace: the `traceparent` it goes upstream with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// `00-<trace-id>-<parent-id>-<flags>`, as received or as started here.
    pub traceparent: String,
    /// Whether the gateway started it (the client sent none, or an invalid one):
    /// then it must be sent upstream, and any `tracestate` dropped with it.
    pub started: bool,
}

impl Trace {
    /// The client's trace when `incoming` is a valid `traceparent`, else a new one.
    pub fn of(incoming: Option<&[u8]>) -> Trace {
        match incoming.filter(|v| is_valid_traceparent(v)) {
            Some(valid) => Trace {
                traceparent: String::from_utf8_lossy(valid).into_owned(),
                started: false,
            },
            None => Trace::start(),
        }
    }

    /// A new trace: random trace and parent ids, sampled (a backend that
    /// samples by its parent records its part).
    pub fn start() -> Trace {
        let mut traceparent = String::with_capacity(55);
        let trace_id = rand::random::<u128>().max(1);
        let parent_id = rand::random::<u64>().max(1);
        traceparent.push_str("00-");
        push_hex(&mut traceparent, trace_id, 32);
        traceparent.push('-');
        push_hex(&mut traceparent, u128::from(parent_id), 16);
        traceparent.push_str("-01");
        Trace {
            traceparent,
            started: true,
        }
    }

    /// The 32 hex digits of the trace id, for the access log.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }
}

/// `version-traceid-parentid-flags` (W3C Trace Context §3.2): lowercase hex,
/// version not `ff`, ids not all zeros; version 00 is exactly 55 characters, a
/// later version at least that, with a `-` after the flags if longer.
pub fn is_valid_traceparent(value: &[u8]) -> bool {
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |b: &[u8]| b.iter().all(|&c| c == b'0');
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return false;
    }
    let (version, trace_id, parent_id, flags) =
        (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    let well_formed = hex(version) && hex(trace_id) && hex(parent_id) && hex(flags);
    let length_ok = match version {
        b"00" => value.len() == 55,
        _ => value.len() == 55 || value[55] == b'-',
    };
    well_formed && version != b"ff" && !zero(trace_id) && !zero(parent_id) && length_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept() {
        let trace = Trace::of(Some(VALID.as_bytes()));
        assert_eq!(trace.traceparent, VALID);
        assert!(!trace.started);
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // A later version may carry more after the flags.
        assert!(is_valid_traceparent(
            format!("01{}-extra", &VALID[2..]).as_bytes()
        ));
    }

    #[test]
    fn invalid_ones_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(!is_valid_traceparent(bad.as_bytes()), "{bad}");
            let trace = Trace::of(Some(bad.as_bytes()));
            assert!(trace.started, "{bad}");
        }
    }

    #[test]
    fn a_started_trace_is_valid_and_new_each_time() {
        let a = Trace::of(None);
        let b = Trace::start();
        assert!(is_valid_traceparent(a.traceparent.as_bytes()), "{a:?}");
        assert!(a.started);
        assert_ne!(a.trace_id(), b.trace_id());
        assert_eq!(a.trace_id().len(), 32);
    }
}
