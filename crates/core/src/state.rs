//! The job state machine. Every state change anywhere in Ferry goes through
//! [`JobState::transition`], so an illegal change is an error, not a silent overwrite.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Due and waiting for a worker.
    Queued,
    /// Waiting for its `run_at` (submitted with a delay).
    Scheduled,
    /// Leased by a worker; an attempt is under way.
    Running,
    /// An attempt failed; waiting for its backoff before the next attempt.
    Retrying,
    /// Terminal: an attempt succeeded.
    Succeeded,
    /// The last allowed attempt failed (or the failure was permanent); parked in the
    /// dead-letter queue. Only an operator's retry moves it on.
    Dead,
    /// Terminal: cancelled before it succeeded.
    Cancelled,
}

/// A change the state machine does not allow.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("a job cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: JobState,
    pub to: JobState,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        Self::Queued,
        Self::Scheduled,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Dead,
        Self::Cancelled,
    ];

    /// Terminal states never change again (dead is not terminal: an operator can retry it).
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Cancelled)
    }

    /// True when no worker will pick the job up without someone acting.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Cancelled | Self::Dead)
    }

    /// Whether `self -> to` is a legal change.
    ///
    /// `Running -> Running` is legal: a lease expired (the worker died) and the job was
    /// delivered again. `Running -> Queued` is a lease given back on shutdown.
    #[must_use]
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::{Cancelled, Dead, Queued, Retrying, Running, Scheduled, Succeeded};
        match self {
            Queued => matches!(to, Running | Cancelled),
            Scheduled => matches!(to, Queued | Running | Cancelled),
            Running => matches!(
                to,
                Running | Queued | Retrying | Succeeded | Dead | Cancelled
            ),
            Retrying => matches!(to, Queued | Running | Cancelled),
            Dead => matches!(to, Queued),
            Succeeded | Cancelled => false,
        }
    }

    /// The checked change.
    ///
    /// # Errors
    /// [`IllegalTransition`] when the state machine forbids it.
    pub fn transition(self, to: JobState) -> Result<JobState, IllegalTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the text form written by [`JobState::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::JobState::{self, *};
    use proptest::prelude::*;

    fn any_state() -> impl Strategy<Value = JobState> {
        proptest::sample::select(JobState::ALL.to_vec())
    }

    proptest! {
        /// Whatever sequence of changes is attempted, only legal ones take effect, and once
        /// a job is terminal it stays exactly where it is.
        #[test]
        fn random_walks_respect_the_machine(steps in proptest::collection::vec(any_state(), 0..64)) {
            let mut state = Queued;
            let mut terminal_at: Option<JobState> = None;
            for to in steps {
                let before = state;
                match state.transition(to) {
                    Ok(next) => {
                        prop_assert!(before.can_become(to));
                        prop_assert!(terminal_at.is_none(), "left terminal state {before}");
                        state = next;
                    }
                    Err(e) => {
                        prop_assert_eq!(e.from, before);
                        prop_assert_eq!(e.to, to);
                        prop_assert_eq!(state, before, "a refused change leaves the state alone");
                    }
                }
                if state.is_terminal() {
                    terminal_at.get_or_insert(state);
                }
            }
            if let Some(t) = terminal_at {
                prop_assert_eq!(state, t);
            }
        }

        /// Text form round-trips for every state.
        #[test]
        fn text_round_trips(s in any_state()) {
            prop_assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn the_table() {
        // Every state a job is in before it finishes can reach succeeded, and only through
        // running.
        for s in [Queued, Scheduled, Retrying, Dead] {
            assert!(!s.can_become(Succeeded), "{s} -> succeeded skips running");
        }
        assert!(Running.can_become(Succeeded));
        assert!(Dead.can_become(Queued), "operators can retry dead jobs");
        assert!(
            !Dead.can_become(Running),
            "a dead job is re-enqueued, not run in place"
        );
        for s in JobState::ALL {
            assert!(!Succeeded.can_become(s));
            assert!(!Cancelled.can_become(s));
        }
        assert_eq!(
            Succeeded.transition(Queued).unwrap_err().to_string(),
            "a job cannot go from succeeded to queued"
        );
    }
}
