//! Topic names and their creation. Per Ferry queue `q`: the work topic `ferry.q` (the
//! configured partitions), one delay topic per ladder step `ferry.q.DELAY.<ms>` and the dead
//! letters `ferry.q.DEAD` (one partition each). Queue names are lower case, so the upper-case
//! suffixes never collide with another queue's work topic.

use std::time::Duration;

use ferry_core::QueueName;

/// What a topic is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Work,
    /// A delay ladder step: messages wait there this long.
    Step(Duration),
    Dead,
}

pub(crate) struct Names {
    pub(crate) work: String,
    pub(crate) dead: String,
    /// (step, topic), shortest first.
    pub(crate) steps: Vec<(Duration, String)>,
    /// The step lengths alone, for `ladder_step`.
    lengths: Vec<Duration>,
}

impl Names {
    pub(crate) fn new(queue: &QueueName, steps: &[Duration]) -> Self {
        let work = format!("ferry.{}", queue.as_str());
        let mut steps: Vec<(Duration, String)> = steps
            .iter()
            .map(|s| (*s, format!("{work}.DELAY.{}", s.as_millis())))
            .collect();
        steps.sort();
        Self {
            dead: format!("{work}.DEAD"),
            work,
            lengths: steps.iter().map(|(s, _)| *s).collect(),
            steps,
        }
    }

    /// The topics a consumer of this queue reads (work and delay steps; dead letters are
    /// read only on request).
    pub(crate) fn consumed(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.work.as_str()).chain(self.steps.iter().map(|(_, t)| t.as_str()))
    }

    /// Where a job due in `wait` goes now, and the step it waits there: the work topic when
    /// due, else its ladder step (`ferry_core::ladder::ladder_step`; a job due sooner than
    /// the shortest step is held only until it is due).
    pub(crate) fn route(&self, wait: Duration) -> (&str, Option<Duration>) {
        match ferry_core::ladder::ladder_step(&self.lengths, wait) {
            None => (&self.work, None),
            Some(i) => (&self.steps[i].1, Some(self.steps[i].0)),
        }
    }
}

/// The queue and role of a Ferry topic, or `None` for any other topic.
pub(crate) fn classify(topic: &str) -> Option<(QueueName, Role)> {
    let rest = topic.strip_prefix("ferry.")?;
    if let Some(q) = rest.strip_suffix(".DEAD") {
        return Some((QueueName::parse(q).ok()?, Role::Dead));
    }
    if let Some((q, ms)) = rest.rsplit_once(".DELAY.") {
        let ms: u64 = ms.parse().ok()?;
        return Some((
            QueueName::parse(q).ok()?,
            Role::Step(Duration::from_millis(ms)),
        ));
    }
    Some((QueueName::parse(rest).ok()?, Role::Work))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_route_to_the_longest_step_that_is_not_early() {
        let ms = Duration::from_millis;
        let n = Names::new(
            &QueueName::parse("emails").unwrap(),
            &[ms(1_000), ms(100), ms(10_000)],
        );
        assert_eq!(n.route(Duration::ZERO), ("ferry.emails", None));
        assert_eq!(n.route(ms(50)), ("ferry.emails.DELAY.100", Some(ms(100))));
        assert_eq!(n.route(ms(400)), ("ferry.emails.DELAY.100", Some(ms(100))));
        assert_eq!(
            n.route(ms(1_500)),
            ("ferry.emails.DELAY.1000", Some(ms(1_000)))
        );
        assert_eq!(
            n.route(ms(3_600_000)),
            ("ferry.emails.DELAY.10000", Some(ms(10_000)))
        );
    }

    #[test]
    fn topics_name_their_queue_and_role() {
        let q = |s| QueueName::parse(s).unwrap();
        assert_eq!(classify("ferry.a.b"), Some((q("a.b"), Role::Work)));
        assert_eq!(classify("ferry.a.DEAD"), Some((q("a"), Role::Dead)));
        assert_eq!(
            classify("ferry.a.delay.DELAY.100"),
            Some((q("a.delay"), Role::Step(Duration::from_millis(100))))
        );
        assert_eq!(classify("other"), None);
        assert_eq!(classify("ferry.BAD"), None);
    }
}
