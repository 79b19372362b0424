//! A circuit breaker per target host for the `http` handler: after `failures` failures in a
//! row a host's circuit opens and jobs for it wait instead of calling it; after `cooldown`
//! one probe goes through, and its outcome closes or re-opens the circuit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else waits for its outcome.
    Probing,
}

/// What a caller may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Go,
    /// The circuit was open and its cooldown is over: this call is the probe.
    Probe,
    /// Open: come back after this long.
    Wait(Duration),
}

pub(crate) struct Breakers {
    hosts: Mutex<HashMap<String, State>>,
    failures: u32,
    cooldown: Duration,
}

/// How long a caller waits while another call probes the host.
const PROBE_WAIT: Duration = Duration::from_secs(1);

impl Breakers {
    pub(crate) fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            hosts: Mutex::default(),
            failures: failures.max(1),
            cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn admit(&self, host: &str, now: Instant) -> Admit {
        let mut hosts = self.lock();
        let Some(state) = hosts.get_mut(host) else {
            return Admit::Go;
        };
        match *state {
            State::Closed { .. } => Admit::Go,
            State::Open { until } if now < until => Admit::Wait(until - now),
            State::Open { .. } => {
                *state = State::Probing;
                ferry_telemetry::http_breakers_open(-1);
                Admit::Probe
            }
            State::Probing => Admit::Wait(PROBE_WAIT.min(self.cooldown)),
        }
    }

    /// Records a call's outcome: `ok` means the host answered as a working host does (2xx,
    /// or a 4xx about the request itself).
    pub(crate) fn record(&self, host: &str, ok: bool, now: Instant) {
        let mut hosts = self.lock();
        let state = hosts
            .entry(host.to_owned())
            .or_insert(State::Closed { failures: 0 });
        let next = match (*state, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.failures => State::Closed {
                failures: failures + 1,
            },
            (State::Open { until }, false) => State::Open { until },
            (_, false) => State::Open {
                until: now + self.cooldown,
            },
        };
        let was_open = matches!(*state, State::Open { .. });
        let is_open = matches!(next, State::Open { .. });
        if is_open && !was_open {
            tracing::warn!(host, cooldown = ?self.cooldown, "circuit opened: the host keeps failing");
            ferry_telemetry::http_breakers_open(1);
        } else if !is_open && !matches!(*state, State::Closed { .. }) && ok {
            tracing::info!(host, "circuit closed: the host answers again");
        }
        *state = next;
        if matches!(next, State::Closed { failures: 0 }) {
            hosts.remove(host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_probes_after_cooldown_and_closes_on_success() {
        let b = Breakers::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.admit("h:80", t0), Admit::Go);
            b.record("h:80", false, t0);
        }
        assert_eq!(b.admit("h:80", t0), Admit::Go, "two failures: still closed");
        b.record("h:80", false, t0);
        assert_eq!(b.admit("h:80", t0), Admit::Wait(Duration::from_secs(10)));
        assert_eq!(b.admit("other:80", t0), Admit::Go, "hosts are separate");
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.admit("h:80", later), Admit::Probe);
        assert!(
            matches!(b.admit("h:80", later), Admit::Wait(_)),
            "one probe at a time"
        );
        b.record("h:80", true, later);
        assert_eq!(b.admit("h:80", later), Admit::Go);
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cooldown() {
        let b = Breakers::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        b.record("h:80", false, t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.admit("h:80", t1), Admit::Probe);
        b.record("h:80", false, t1);
        assert_eq!(b.admit("h:80", t1), Admit::Wait(Duration::from_secs(5)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breakers::new(2, Duration::from_secs(5));
        let t0 = Instant::now();
        b.record("h:80", false, t0);
        b.record("h:80", true, t0);
        b.record("h:80", false, t0);
        assert_eq!(b.admit("h:80", t0), Admit::Go);
    }
}
