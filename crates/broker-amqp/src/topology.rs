//! Queue names and declarations. Per Ferry queue `q`: the work queue `ferry.q` (durable,
//! classic, `x-max-priority` 31), the dead letters `ferry.q.dead`, and one delay queue per
//! ladder step `ferry.q.delay.<ms>` (`x-message-ttl` = the step, dead-lettering back to the
//! work queue through the default exchange).

use std::time::Duration;

use ferry_core::QueueName;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

pub(crate) struct Names {
    pub(crate) work: String,
    pub(crate) dead: String,
    /// (step, queue name), shortest first.
    pub(crate) delays: Vec<(Duration, String)>,
}

impl Names {
    pub(crate) fn new(queue: &QueueName, buckets: &[Duration]) -> Self {
        let work = format!("ferry.{}", queue.as_str());
        let mut delays: Vec<(Duration, String)> = buckets
            .iter()
            .map(|b| (*b, format!("{work}.delay.{}", b.as_millis())))
            .collect();
        delays.sort();
        Self {
            dead: format!("{work}.dead"),
            work,
            delays,
        }
    }

    /// Where a job due in `wait` goes now: the work queue when due, else its ladder step
    /// (`ferry_core::ladder::ladder_step`).
    pub(crate) fn route(&self, wait: Duration) -> String {
        let steps: Vec<Duration> = self.delays.iter().map(|(s, _)| *s).collect();
        ferry_core::ladder::ladder_step(&steps, wait)
            .map_or_else(|| self.work.clone(), |i| self.delays[i].1.clone())
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn work_args() -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(31));
    a
}

fn delay_args(step: Duration, work: &str) -> FieldTable {
    let mut a = FieldTable::default();
    a.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(step.as_millis()).unwrap_or(i64::MAX)),
    );
    a.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    a.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(work.into()),
    );
    a
}

/// Declares every queue of `names` (idempotent: same names, same arguments).
pub(crate) async fn declare(ch: &Channel, names: &Names) -> lapin::Result<()> {
    counts(ch, names).await.map(|_| ())
}

/// Messages ready in the work queue (not delivered to any consumer).
pub(crate) async fn ready(ch: &Channel, names: &Names) -> lapin::Result<u64> {
    Ok(u64::from(
        ch.queue_declare(names.work.as_str().into(), durable(), work_args())
            .await?
            .message_count(),
    ))
}

pub(crate) struct Counts {
    pub(crate) work: u64,
    pub(crate) delayed: u64,
    pub(crate) dead: u64,
}

/// Messages waiting in each part (declaring them, which also answers their counts).
pub(crate) async fn counts(ch: &Channel, names: &Names) -> lapin::Result<Counts> {
    let work = ch
        .queue_declare(names.work.as_str().into(), durable(), work_args())
        .await?
        .message_count();
    let dead = ch
        .queue_declare(names.dead.as_str().into(), durable(), FieldTable::default())
        .await?
        .message_count();
    let mut delayed = 0;
    for (step, name) in &names.delays {
        delayed += ch
            .queue_declare(
                name.as_str().into(),
                durable(),
                delay_args(*step, &names.work),
            )
            .await?
            .message_count();
    }
    Ok(Counts {
        work: u64::from(work),
        delayed: u64::from(delayed),
        dead: u64::from(dead),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_route_to_the_longest_step_that_is_not_early() {
        let ms = Duration::from_millis;
        let n = Names::new(
            &QueueName::parse("emails").unwrap(),
            &[ms(100), ms(1_000), ms(10_000)],
        );
        assert_eq!(n.route(Duration::ZERO), "ferry.emails");
        assert_eq!(n.route(ms(50)), "ferry.emails.delay.100");
        assert_eq!(n.route(ms(400)), "ferry.emails.delay.100");
        assert_eq!(n.route(ms(1_500)), "ferry.emails.delay.1000");
        assert_eq!(n.route(ms(3_600_000)), "ferry.emails.delay.10000");
    }
}
