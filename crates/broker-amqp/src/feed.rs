//! Deliveries pushed by `basic.consume`, buffered per queue until a lease takes them.
//!
//! RabbitMQ pushes deliveries to a consumer up to the channel's prefetch window; lapin hands
//! them over asynchronously, so an empty buffer alone does not prove that nothing is on its
//! way. The lease decides emptiness with a fence instead (see `Inner::lease_fenced` in
//! `lib.rs`); this module only owns the buffers and the consumers that fill them.
//!
//! Every pop from a consumer happens under the feeds lock, together with the push into the
//! buffer, so that a lease draining the buffer never misses a delivery that a waiter holds
//! half-way.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use ferry_core::QueueName;
use futures_util::StreamExt;
use lapin::Consumer;
use lapin::message::Delivery;

/// One queue's consumer and what it delivered that no lease has taken yet.
pub(crate) struct Feed {
    /// The session the consumer (and its delivery tags) belong to.
    pub(crate) generation: u64,
    /// Polled by leases (without a waker worth keeping).
    drain: Consumer,
    /// Polled by `wait_for_jobs`: a clone with a wake-up slot of its own.
    wake: Consumer,
    pub(crate) buffer: VecDeque<Delivery>,
    /// The server cancelled the consumer, or its channel failed: start another.
    pub(crate) ended: bool,
}

impl Feed {
    pub(crate) fn new(generation: u64, consumer: Consumer) -> Self {
        Self {
            generation,
            wake: consumer.clone(),
            drain: consumer,
            buffer: VecDeque::new(),
            ended: false,
        }
    }

    pub(crate) fn tag(&self) -> lapin::types::ShortString {
        self.drain.tag()
    }

    /// Moves every delivery that has arrived into the buffer.
    pub(crate) fn drain_arrived(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(got) = self.drain.poll_next_unpin(&mut cx) {
            if !self.accept(got) {
                return;
            }
        }
    }

    /// Polls the waking clone; true when something arrived (or the feed ended).
    fn poll_arrival(&mut self, cx: &mut Context<'_>) -> bool {
        match self.wake.poll_next_unpin(cx) {
            Poll::Ready(got) => {
                self.accept(got);
                true
            }
            Poll::Pending => false,
        }
    }

    /// Buffers a delivery; false when the stream is over.
    fn accept(&mut self, got: Option<lapin::Result<Delivery>>) -> bool {
        match got {
            Some(Ok(d)) => {
                self.buffer.push_back(d);
                true
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "rabbitmq consumer failed; it will be started again");
                self.ended = true;
                false
            }
            None => {
                self.ended = true;
                false
            }
        }
    }
}

/// The feeds of this process, by queue.
#[derive(Default)]
pub(crate) struct Feeds(Mutex<HashMap<QueueName, Feed>>);

impl Feeds {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<QueueName, Feed>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Deliveries buffered for `queue` (ready jobs, as far as stats go).
    pub(crate) fn buffered(&self, queue: &QueueName) -> u64 {
        self.lock().get_mut(queue).map_or(0, |f| {
            f.drain_arrived();
            f.buffer.len() as u64
        })
    }

    /// Resolves when any of `queues`' feeds has something buffered or receives a delivery.
    /// Pending forever when none of them has a consumer.
    pub(crate) async fn arrival(&self, queues: &[QueueName], generation: u64) {
        std::future::poll_fn(|cx| {
            let mut feeds = self.lock();
            let mut any = false;
            for q in queues {
                let Some(f) = feeds.get_mut(q) else { continue };
                if f.generation != generation {
                    continue;
                }
                if !f.buffer.is_empty() || f.ended || f.poll_arrival(cx) {
                    any = true;
                }
            }
            if any { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
    }
}
