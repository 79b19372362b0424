//! What this process knows about the partitions it owns: messages fetched ahead, offsets
//! not yet finished, leases held, and how far each partition may be committed. Pure
//! bookkeeping, no I/O: the poller thread and the broker's calls share it under one lock.
//!
//! A partition's commit point is its lowest unfinished offset (or the next one to fetch when
//! none is open): jobs finish out of order, and a crash redelivers only what was not
//! finished below that point.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use ferry_core::broker::LeaseRef;
use ferry_core::{JobEnvelope, QueueName, UnixMillis};

/// A topic partition.
pub(crate) type Tp = (Arc<str>, i32);

/// A fetched message waiting in memory to be leased (or, on a delay step, to be due).
#[derive(Debug)]
pub(crate) struct Buffered {
    pub(crate) offset: i64,
    pub(crate) job: JobEnvelope,
    /// Not handed out before this (the end of its delay step; zero on the work topic).
    pub(crate) hold_until: UnixMillis,
}

pub(crate) struct Part {
    pub(crate) queue: QueueName,
    /// Which assignment of this partition (a lease from an earlier one is stale).
    pub(crate) epoch: u64,
    pub(crate) buffered: VecDeque<Buffered>,
    /// Offsets fetched and not finished: buffered, leased or being moved to another topic.
    pub(crate) open: BTreeSet<i64>,
    /// The next offset the fetcher hands us (last one seen + 1); `None` before the first.
    pub(crate) next: Option<i64>,
    /// The commit point last sent to the group.
    pub(crate) committed: Option<i64>,
    /// The group's committed offset when this partition was assigned: fetching starts a
    /// little earlier (see `consumer::REWIND`), and what lies below this is finished.
    pub(crate) resume_at: i64,
}

impl Part {
    pub(crate) fn commit_point(&self) -> Option<i64> {
        self.open.first().copied().or(self.next)
    }

    /// The next offset not yet seen, as far as jobs go (skipped offsets below `resume_at`
    /// count as seen).
    pub(crate) fn seen_to(&self) -> Option<i64> {
        self.next.map(|n| n.max(self.resume_at))
    }

    /// The front can be handed out: held long enough (work is never held) and due.
    fn front_ready(&self, now: UnixMillis) -> bool {
        self.buffered
            .front()
            .is_some_and(|b| b.hold_until <= now && b.job.run_at <= now)
    }

    /// The front of a delay step waited its step but is not due: it moves on.
    fn front_moving(&self, now: UnixMillis) -> bool {
        self.buffered
            .front()
            .is_some_and(|b| b.hold_until <= now && b.job.run_at > now)
    }

    /// Takes the front out of the buffer; its offset stays open.
    fn pop(&mut self, tp: &Tp) -> Option<Taken> {
        let b = self.buffered.pop_front()?;
        Some(Taken {
            tp: tp.clone(),
            epoch: self.epoch,
            offset: b.offset,
            job: b.job,
        })
    }
}

/// A lease this process holds.
pub(crate) struct Held {
    pub(crate) tp: Tp,
    pub(crate) offset: i64,
    pub(crate) epoch: u64,
    pub(crate) job: Arc<JobEnvelope>,
    pub(crate) expires: Instant,
}

/// What [`State::take`] handed out, before tokens are attached.
pub(crate) struct Taken {
    pub(crate) tp: Tp,
    pub(crate) epoch: u64,
    pub(crate) offset: i64,
    pub(crate) job: JobEnvelope,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) parts: HashMap<Tp, Part>,
    pub(crate) held: HashMap<LeaseRef, Held>,
    /// Per partition, the offset after this process's newest produce to it: a lease waits
    /// until the fetcher has caught up with what this process itself just enqueued.
    pub(crate) produced: HashMap<Tp, i64>,
    /// Committed offsets of partitions about to be assigned (set by the rebalance callback
    /// just before `assign` takes them).
    pub(crate) resume_at: HashMap<Tp, i64>,
    /// Rebalances seen (assignments handed to us), so a new subscription can await one.
    pub(crate) rebalances: u64,
    epochs: u64,
    cursor: usize,
}

impl State {
    pub(crate) fn assign(&mut self, tp: Tp, queue: QueueName) {
        self.epochs += 1;
        let epoch = self.epochs;
        let resume_at = self.resume_at.remove(&tp).unwrap_or(0);
        self.parts.entry(tp).or_insert(Part {
            queue,
            epoch,
            buffered: VecDeque::new(),
            open: BTreeSet::new(),
            next: None,
            // Commits only ever move forward from the group's offset.
            committed: (resume_at > 0).then_some(resume_at),
            resume_at,
        });
    }

    /// Forgets a partition (given to another member): its leases go stale. Returns where to
    /// commit it, if anything was finished since the last commit.
    pub(crate) fn revoke(&mut self, tp: &Tp) -> Option<i64> {
        let part = self.parts.remove(tp)?;
        self.held.retain(|_, h| h.tp != *tp);
        part.commit_point().filter(|p| Some(*p) > part.committed)
    }

    /// A fetched message. Offsets already seen (a fetch replayed after an error) are skipped.
    /// `job` is `None` for a message that is not a Ferry job: it counts as finished.
    pub(crate) fn ingest(
        &mut self,
        tp: &Tp,
        offset: i64,
        job: Option<(JobEnvelope, UnixMillis)>,
    ) -> bool {
        let Some(part) = self.parts.get_mut(tp) else {
            return false;
        };
        if part.next.is_some_and(|n| offset < n) {
            return false;
        }
        part.next = Some(offset + 1);
        // Below the committed offset: finished before this assignment (read again only
        // because fetching starts a batch early).
        let Some((job, hold_until)) = job.filter(|_| offset >= part.resume_at) else {
            return false;
        };
        part.open.insert(offset);
        part.buffered.push_back(Buffered {
            offset,
            job,
            hold_until,
        });
        true
    }

    /// Up to `max` due jobs of `queues`, taking from the partitions in turn.
    pub(crate) fn take(
        &mut self,
        wanted: impl Fn(&QueueName) -> bool,
        max: usize,
        now: UnixMillis,
    ) -> Vec<Taken> {
        let mut tps: Vec<Tp> = self
            .parts
            .iter()
            .filter(|(_, p)| wanted(&p.queue) && !p.buffered.is_empty())
            .map(|(tp, _)| tp.clone())
            .collect();
        tps.sort();
        let mut out = Vec::new();
        if tps.is_empty() {
            return out;
        }
        self.cursor = self.cursor.wrapping_add(1);
        let start = self.cursor % tps.len();
        let share = max.div_ceil(tps.len()).max(1);
        // Two rounds: an equal share from each partition, then whatever is left.
        for round in 0..2 {
            for i in 0..tps.len() {
                let tp = &tps[(start + i) % tps.len()];
                let part = self.parts.get_mut(tp).expect("listed above");
                let mut n = 0;
                // A front held long enough but not due stops its partition: the poller
                // moves it on.
                while out.len() < max && (round == 1 || n < share) && part.front_ready(now) {
                    out.extend(part.pop(tp));
                    n += 1;
                }
            }
        }
        out
    }

    /// Fronts of delay steps that were held long enough but are not yet due: they move on
    /// to a later step (their offsets stay open until that produce is confirmed).
    pub(crate) fn take_moves(&mut self, now: UnixMillis) -> Vec<Taken> {
        let mut out = Vec::new();
        for (tp, part) in &mut self.parts {
            while part.front_moving(now) {
                out.extend(part.pop(tp));
            }
        }
        out
    }

    /// How many jobs of the selection could be handed out now, counting up to `limit`.
    pub(crate) fn due_count(
        &self,
        wanted: impl Fn(&QueueName) -> bool,
        now: UnixMillis,
        limit: usize,
    ) -> usize {
        let mut n = 0;
        for p in self.parts.values().filter(|p| wanted(&p.queue)) {
            for b in &p.buffered {
                if n >= limit || b.hold_until > now || b.job.run_at > now {
                    break;
                }
                n += 1;
            }
        }
        n
    }

    /// The earliest instant a delay step's front will be due.
    pub(crate) fn next_hold(&self) -> Option<UnixMillis> {
        self.parts
            .values()
            .filter_map(|p| p.buffered.front().map(|b| b.hold_until.max(b.job.run_at)))
            .min()
    }

    /// An offset is done (acked, retried elsewhere, dead-lettered, moved on).
    pub(crate) fn finish(&mut self, tp: &Tp, epoch: u64, offset: i64) {
        if let Some(p) = self.parts.get_mut(tp)
            && p.epoch == epoch
        {
            p.open.remove(&offset);
        }
    }

    /// Puts a job back at the front of its partition (a lease expired or was released, a
    /// move failed); its offset is still open.
    pub(crate) fn requeue(&mut self, tp: &Tp, epoch: u64, offset: i64, job: JobEnvelope) {
        if let Some(p) = self.parts.get_mut(tp)
            && p.epoch == epoch
        {
            p.buffered.push_front(Buffered {
                offset,
                job,
                hold_until: UnixMillis(0),
            });
        }
    }

    /// Commit points that moved since they were last sent (and marks them sent).
    pub(crate) fn commits(&mut self) -> Vec<(Tp, i64)> {
        let mut out = Vec::new();
        for (tp, p) in &mut self.parts {
            if let Some(point) = p.commit_point()
                && Some(point) > p.committed
            {
                p.committed = Some(point);
                out.push((tp.clone(), point));
            }
        }
        out
    }

    /// Expired leases, removed; those of partitions still owned go back to the front.
    pub(crate) fn reap(&mut self, now: Instant) -> usize {
        let gone: Vec<LeaseRef> = self
            .held
            .iter()
            .filter(|(_, h)| h.expires <= now)
            .map(|(r, _)| *r)
            .collect();
        for r in &gone {
            if let Some(h) = self.held.remove(r) {
                let job = Arc::unwrap_or_clone(h.job);
                self.requeue(&h.tp, h.epoch, h.offset, job);
            }
        }
        gone.len()
    }

    pub(crate) fn note_produced(&mut self, tp: Tp, offset: i64) {
        let e = self.produced.entry(tp).or_insert(0);
        *e = (*e).max(offset + 1);
    }

    /// Owned partitions of the selection whose fetch is behind what this process has
    /// produced to them, with the offset the fetch must reach.
    pub(crate) fn behind(&self, wanted: impl Fn(&QueueName) -> bool) -> Vec<(Tp, i64)> {
        self.parts
            .iter()
            .filter(|(_, p)| wanted(&p.queue))
            .filter_map(|(tp, p)| {
                let end = *self.produced.get(tp)?;
                (p.seen_to().unwrap_or(0) < end).then(|| (tp.clone(), end))
            })
            .collect()
    }

    /// Whether the fetch has reached these offsets (a partition no longer owned counts).
    pub(crate) fn reached(&self, targets: &[(Tp, i64)]) -> bool {
        targets.iter().all(|(tp, end)| {
            self.parts
                .get(tp)
                .is_none_or(|p| p.seen_to().unwrap_or(0) >= *end)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use ferry_core::JobKind;

    fn tp(p: i32) -> Tp {
        (Arc::from("ferry.q"), p)
    }

    fn job() -> JobEnvelope {
        JobEnvelope::new(
            QueueName::parse("q").unwrap(),
            JobKind::parse("noop").unwrap(),
            JobEnvelope::empty_payload(),
        )
    }

    fn state() -> State {
        let mut s = State::default();
        s.assign(tp(0), QueueName::parse("q").unwrap());
        s
    }

    #[test]
    fn commits_stop_at_the_lowest_unfinished_offset() {
        let mut s = state();
        for o in 10..15 {
            s.ingest(&tp(0), o, Some((job(), UnixMillis(0))));
        }
        let taken = s.take(|_| true, 10, UnixMillis::now());
        assert_eq!(taken.len(), 5);
        let epoch = taken[0].epoch;
        // 11, 12 and 14 finish first: nothing below 10 is done, so no commit moves past 10.
        for o in [11, 12, 14] {
            s.finish(&tp(0), epoch, o);
        }
        assert_eq!(s.commits(), vec![(tp(0), 10)]);
        s.finish(&tp(0), epoch, 10);
        assert_eq!(s.commits(), vec![(tp(0), 13)]);
        assert!(
            s.commits().is_empty(),
            "unchanged points are not sent again"
        );
        s.finish(&tp(0), epoch, 13);
        assert_eq!(s.commits(), vec![(tp(0), 15)]);
    }

    #[test]
    fn a_partition_assigned_at_a_committed_offset_skips_what_lies_below_it() {
        let mut s = State::default();
        s.resume_at.insert(tp(0), 100);
        s.assign(tp(0), QueueName::parse("q").unwrap());
        // Fetching starts early (at a batch boundary): 95..99 were finished before.
        for o in 95..103 {
            s.ingest(&tp(0), o, Some((job(), UnixMillis(0))));
        }
        let t = s.take(|_| true, 10, UnixMillis::now());
        assert_eq!(
            t.iter().map(|t| t.offset).collect::<Vec<_>>(),
            [100, 101, 102]
        );
        assert!(s.commits().is_empty(), "never behind the group's offset");
        for t in &t {
            s.finish(&t.tp, t.epoch, t.offset);
        }
        assert_eq!(s.commits(), vec![(tp(0), 103)]);
    }

    #[test]
    fn replayed_offsets_are_skipped_and_foreign_ones_finish_at_once() {
        let mut s = state();
        assert!(s.ingest(&tp(0), 0, Some((job(), UnixMillis(0)))));
        assert!(!s.ingest(&tp(0), 0, Some((job(), UnixMillis(0)))));
        assert!(!s.ingest(&tp(0), 1, None));
        let t = s.take(|_| true, 10, UnixMillis::now());
        assert_eq!(t.len(), 1);
        s.finish(&tp(0), t[0].epoch, 0);
        assert_eq!(s.commits(), vec![(tp(0), 2)]);
    }

    #[test]
    fn a_delay_step_hands_out_its_front_only_when_held_long_enough_and_due() {
        let mut s = State::default();
        let step: Tp = (Arc::from("ferry.q.DELAY.100"), 0);
        s.assign(step.clone(), QueueName::parse("q").unwrap());
        let now = UnixMillis::now();
        let mut later = job();
        later.run_at = now.plus(Duration::from_secs(60));
        s.ingest(&step, 0, Some((job(), now.plus(Duration::from_millis(50)))));
        s.ingest(&step, 1, Some((later, now)));
        assert!(s.take(|_| true, 10, now).is_empty(), "front still held");
        let at = now.plus(Duration::from_millis(60));
        assert_eq!(s.take(|_| true, 10, at).len(), 1);
        assert!(
            s.take(|_| true, 10, at).is_empty(),
            "the next one is not due"
        );
        let moves = s.take_moves(at);
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].offset, 1);
        assert_eq!(s.commits(), vec![(step, 0)], "both offsets still open");
    }

    #[test]
    fn revoked_partitions_lose_their_leases_and_expired_leases_come_back() {
        let mut s = state();
        s.ingest(&tp(0), 0, Some((job(), UnixMillis(0))));
        let t = s.take(|_| true, 1, UnixMillis::now()).pop().unwrap();
        let r = LeaseRef {
            id: t.job.id,
            token: ferry_core::broker::FencingToken(1),
        };
        s.held.insert(
            r,
            Held {
                tp: t.tp.clone(),
                offset: t.offset,
                epoch: t.epoch,
                job: Arc::new(t.job),
                expires: Instant::now(),
            },
        );
        assert_eq!(s.reap(Instant::now()), 1);
        assert_eq!(s.take(|_| true, 1, UnixMillis::now()).len(), 1);
        assert_eq!(
            s.revoke(&tp(0)),
            Some(0),
            "committed at the unfinished offset"
        );
        assert!(s.parts.is_empty());
    }
}
