//! Delay ladders: brokers without per-message delays (RabbitMQ, Kafka) hold delayed jobs in
//! a few fixed steps (queues or topics that each wait one length of time), and a job goes
//! from step to step until it is due.

use std::time::Duration;

/// The step a job due in `wait` waits in next: the longest of `steps` (sorted, shortest
/// first) that does not overshoot it, so that it is never delivered early; the shortest
/// when even that does (the broker then holds it only until it is due, or delivers it late
/// by at most that step). `None` when the job is due now or there are no steps.
#[must_use]
pub fn ladder_step(steps: &[Duration], wait: Duration) -> Option<usize> {
    if wait.is_zero() || steps.is_empty() {
        return None;
    }
    Some(steps.iter().rposition(|s| *s <= wait).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_step_that_is_not_early() {
        let ms = Duration::from_millis;
        let steps = [ms(100), ms(1_000), ms(10_000)];
        assert_eq!(ladder_step(&steps, Duration::ZERO), None);
        assert_eq!(ladder_step(&steps, ms(50)), Some(0));
        assert_eq!(ladder_step(&steps, ms(400)), Some(0));
        assert_eq!(ladder_step(&steps, ms(1_500)), Some(1));
        assert_eq!(ladder_step(&steps, ms(3_600_000)), Some(2));
        assert_eq!(ladder_step(&[], ms(5)), None);
    }
}
