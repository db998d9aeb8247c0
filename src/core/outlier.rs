//! Outlier ejection (SPEC §8.3), the pure state machine: per peer, failures
//! in a row, the ejection window, and the one trial request after it. The
//! tables keep one [`Outliers`] per upstream behind a lock and feed it what
//! each attempt ended with; time comes in as an argument, so every rule is
//! tested here without a clock or a server.

use std::time::{Duration, Instant};

/// An upstream's `outlier` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures in a row that eject a peer (at least 1).
    pub consecutive_failures: u32,
    /// How long an ejected peer is skipped before its trial request.
    pub eject_for: Duration,
}

/// How an attempt on a peer ended, as far as ejection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The peer answered (any status but 502, 503 and 504).
    Success,
    /// Connect error, timeout, or a 502/503/504 from the peer.
    Failure,
}

impl Verdict {
    /// What an answer's status says of the peer that sent it.
    pub fn of_status(status: u16) -> Verdict {
        match status {
            502..=504 => Verdict::Failure,
            _ => Verdict::Success,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Takes traffic; `failures` in a row so far.
    In { failures: u32 },
    /// Skipped until `until`; then the next pick is its trial.
    Ejected { until: Instant },
    /// Its one trial request is under way: skipped by every other pick.
    OnTrial,
}

/// Whether a pick may send a request to a peer, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// An ordinary request.
    Yes,
    /// The trial request after an ejection: its verdict decides.
    Trial,
    No,
}

/// The ejection state of every peer of one upstream.
#[derive(Debug, Clone)]
pub struct Outliers {
    policy: Policy,
    peers: Vec<State>,
}

impl Outliers {
    pub fn new(policy: Policy, peers: usize) -> Outliers {
        Outliers {
            policy,
            peers: vec![State::In { failures: 0 }; peers],
        }
    }

    /// Whether peer `i` may take a request now. Does not change anything: a
    /// pick that chooses a peer on [`Admit::Trial`] calls [`Outliers::start_trial`].
    pub fn admit(&self, i: usize, now: Instant) -> Admit {
        match self.peers.get(i) {
            Some(State::In { .. }) | None => Admit::Yes,
            Some(State::Ejected { until }) if now >= *until => Admit::Trial,
            Some(State::Ejected { .. } | State::OnTrial) => Admit::No,
        }
    }

    /// Peer `i` was picked for its trial: no other request goes to it until
    /// the trial's verdict (or [`Outliers::trial_abandoned`]).
    pub fn start_trial(&mut self, i: usize) {
        if let Some(s @ State::Ejected { .. }) = self.peers.get_mut(i) {
            *s = State::OnTrial;
        }
    }

    /// Notes how an attempt on peer `i` ended; `trial` says whether it was the
    /// peer's trial request. Returns whether the peer went out or came back in.
    /// `healthy` says which peers the active health check lets take traffic:
    /// a peer is not ejected when no other healthy one would be left in.
    pub fn record(
        &mut self,
        i: usize,
        trial: bool,
        verdict: Verdict,
        now: Instant,
        healthy: &dyn Fn(usize) -> bool,
    ) -> bool {
        let Some(&state) = self.peers.get(i) else {
            return false;
        };
        match (state, trial, verdict) {
            (State::In { .. }, false, Verdict::Success) => {
                self.peers[i] = State::In { failures: 0 };
                false
            }
            (State::In { failures }, false, Verdict::Failure) => {
                let failures = failures.saturating_add(1);
                if failures >= self.policy.consecutive_failures && self.others_in(i, healthy) {
                    self.peers[i] = State::Ejected {
                        until: now + self.policy.eject_for,
                    };
                    return true;
                }
                // The last peer in stays in, however it fails.
                self.peers[i] = State::In { failures };
                false
            }
            (State::OnTrial, true, Verdict::Success) => {
                self.peers[i] = State::In { failures: 0 };
                true
            }
            (State::OnTrial, true, Verdict::Failure) => {
                if self.others_in(i, healthy) {
                    self.peers[i] = State::Ejected {
                        until: now + self.policy.eject_for,
                    };
                    false
                } else {
                    // Every other peer went out meanwhile: this one comes back
                    // in rather than leave the upstream with none.
                    self.peers[i] = State::In { failures: 1 };
                    true
                }
            }
            // What requests sent before an ejection say afterwards, or a trial
            // verdict for a peer no longer on trial: the ejection stands.
            _ => false,
        }
    }

    /// The trial request of peer `i` ended without a verdict (its client went
    /// away, the route's deadline passed first): the next pick tries again.
    pub fn trial_abandoned(&mut self, i: usize, now: Instant) {
        if let Some(s @ State::OnTrial) = self.peers.get_mut(i) {
            *s = State::Ejected { until: now };
        }
    }

    /// Whether peer `i` is out (ejected, or on trial until its verdict).
    pub fn is_ejected(&self, i: usize) -> bool {
        !matches!(self.peers.get(i), Some(State::In { .. }) | None)
    }

    fn others_in(&self, i: usize, healthy: &dyn Fn(usize) -> bool) -> bool {
        self.peers
            .iter()
            .enumerate()
            .any(|(j, s)| j != i && matches!(s, State::In { .. }) && healthy(j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EJECT: Duration = Duration::from_secs(30);

    fn outliers(failures: u32, peers: usize) -> Outliers {
        Outliers::new(
            Policy {
                consecutive_failures: failures,
                eject_for: EJECT,
            },
            peers,
        )
    }

    fn fail(o: &mut Outliers, i: usize, times: u32, now: Instant) {
        for _ in 0..times {
            o.record(i, false, Verdict::Failure, now, &|_| true);
        }
    }

    #[test]
    fn only_502_503_504_answers_count_as_failures() {
        for status in [502, 503, 504] {
            assert_eq!(Verdict::of_status(status), Verdict::Failure);
        }
        for status in [200, 301, 404, 429, 500, 501, 505] {
            assert_eq!(Verdict::of_status(status), Verdict::Success, "{status}");
        }
    }

    #[test]
    fn n_failures_in_a_row_eject_for_the_window() {
        let t0 = Instant::now();
        let mut o = outliers(3, 2);
        fail(&mut o, 0, 2, t0);
        assert_eq!(o.admit(0, t0), Admit::Yes);
        assert!(
            o.record(0, false, Verdict::Failure, t0, &|_| true),
            "the third ejects"
        );
        assert!(o.is_ejected(0));
        assert_eq!(o.admit(0, t0), Admit::No);
        assert_eq!(o.admit(0, t0 + EJECT - Duration::from_millis(1)), Admit::No);
        assert_eq!(o.admit(0, t0 + EJECT), Admit::Trial);
        assert_eq!(o.admit(1, t0), Admit::Yes);
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut o = outliers(3, 2);
        fail(&mut o, 0, 2, t0);
        o.record(0, false, Verdict::Success, t0, &|_| true);
        fail(&mut o, 0, 2, t0);
        assert!(!o.is_ejected(0), "never three in a row");
    }

    #[test]
    fn one_trial_at_a_time_and_its_success_brings_the_peer_back() {
        let t0 = Instant::now();
        let mut o = outliers(1, 2);
        fail(&mut o, 0, 1, t0);
        let later = t0 + EJECT;
        assert_eq!(o.admit(0, later), Admit::Trial);
        o.start_trial(0);
        assert_eq!(o.admit(0, later), Admit::No, "only one trial request");
        assert!(o.is_ejected(0), "out until the trial succeeds");
        assert!(o.record(0, true, Verdict::Success, later, &|_| true));
        assert!(!o.is_ejected(0));
        assert_eq!(o.admit(0, later), Admit::Yes);
    }

    #[test]
    fn a_failed_trial_ejects_again_at_once() {
        let t0 = Instant::now();
        let mut o = outliers(5, 2);
        fail(&mut o, 0, 5, t0);
        let later = t0 + EJECT;
        o.start_trial(0);
        o.record(0, true, Verdict::Failure, later, &|_| true);
        assert!(o.is_ejected(0), "one failure, not five");
        assert_eq!(o.admit(0, later + EJECT / 2), Admit::No);
        assert_eq!(o.admit(0, later + EJECT), Admit::Trial, "a new window");
    }

    #[test]
    fn never_all_ejected_the_last_peer_stays_in() {
        let t0 = Instant::now();
        let mut o = outliers(2, 3);
        fail(&mut o, 0, 2, t0);
        fail(&mut o, 1, 2, t0);
        assert!(o.is_ejected(0) && o.is_ejected(1));
        fail(&mut o, 2, 10, t0);
        assert!(!o.is_ejected(2), "the last one in stays in");
        assert_eq!(o.admit(2, t0), Admit::Yes);
        // A single peer is never ejected either.
        let mut one = outliers(1, 1);
        fail(&mut one, 0, 3, t0);
        assert!(!one.is_ejected(0));
    }

    #[test]
    fn a_peer_is_not_ejected_when_the_others_in_are_unhealthy() {
        let t0 = Instant::now();
        let mut o = outliers(1, 3);
        let only_0_healthy = |j: usize| j == 0;
        // Peers 1 and 2 are down by the health check: 0 is the last one usable.
        o.record(0, false, Verdict::Failure, t0, &only_0_healthy);
        assert!(!o.is_ejected(0));
        o.record(0, false, Verdict::Failure, t0, &|_| true);
        assert!(o.is_ejected(0), "with healthy peers left, it goes out");
    }

    #[test]
    fn a_peer_on_trial_does_not_count_as_in() {
        let t0 = Instant::now();
        let mut o = outliers(1, 2);
        fail(&mut o, 0, 1, t0);
        o.start_trial(0);
        fail(&mut o, 1, 3, t0 + EJECT);
        assert!(!o.is_ejected(1), "peer 0 is not back yet: 1 is the last in");
        // Peer 0's trial fails while 1 is the only one in: 0 stays out.
        o.record(0, true, Verdict::Failure, t0 + EJECT, &|_| true);
        assert!(o.is_ejected(0));
    }

    #[test]
    fn stale_verdicts_do_not_change_an_ejection() {
        let t0 = Instant::now();
        let mut o = outliers(1, 2);
        fail(&mut o, 0, 1, t0);
        assert!(
            !o.record(0, false, Verdict::Success, t0, &|_| true),
            "sent before the ejection"
        );
        assert!(o.is_ejected(0));
        o.start_trial(0);
        assert!(
            !o.record(0, false, Verdict::Success, t0 + EJECT, &|_| true),
            "not the trial"
        );
        assert!(o.is_ejected(0));
    }

    #[test]
    fn an_abandoned_trial_is_tried_again() {
        let t0 = Instant::now();
        let mut o = outliers(1, 2);
        fail(&mut o, 0, 1, t0);
        o.start_trial(0);
        o.trial_abandoned(0, t0 + EJECT);
        assert_eq!(o.admit(0, t0 + EJECT), Admit::Trial);
    }
}
