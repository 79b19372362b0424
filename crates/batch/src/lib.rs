#![doc = include_str!("../README.md")]

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// Why a submission did not get its results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError<E> {
    /// The writer task is gone (shut down or panicked); nothing was written for this caller.
    Closed,
    /// The batch containing these items failed to write; none of it was written.
    Failed(E),
}

impl<E: std::fmt::Display> std::fmt::Display for SubmitError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("the batch writer has stopped"),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for SubmitError<E> {}

struct Pending<T, R, E> {
    items: Vec<T>,
    reply: oneshot::Sender<Result<Vec<R>, E>>,
}

/// A handle to a running group-commit writer. Cheap to clone.
pub struct Batcher<T, R, E> {
    tx: mpsc::Sender<Pending<T, R, E>>,
}

impl<T, R, E> Clone for Batcher<T, R, E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T, R, E> std::fmt::Debug for Batcher<T, R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<T, R, E> Batcher<T, R, E>
where
    T: Send + 'static,
    R: Send + 'static,
    E: Clone + Send + 'static,
{
    /// Spawns the writer. `write` receives the items of one or more callers, in arrival
    /// order, and must return exactly one result per item (or one error for all).
    /// `max_batch` bounds the items per write (a single larger submission is still written
    /// whole); `depth` bounds how many submissions may wait, which is the back-pressure.
    pub fn spawn<F, Fut>(max_batch: usize, depth: usize, mut write: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, E>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Pending<T, R, E>>(depth.max(1));
        tokio::spawn(async move {
            let mut waiting: Vec<Pending<T, R, E>> = Vec::new();
            while let Some(first) = rx.recv().await {
                waiting.push(first);
                let mut count = waiting[0].items.len();
                while count < max_batch {
                    match rx.try_recv() {
                        Ok(p) => {
                            count += p.items.len();
                            waiting.push(p);
                        }
                        Err(_) => break,
                    }
                }
                let mut items = Vec::with_capacity(count);
                let mut sizes = Vec::with_capacity(waiting.len());
                let mut replies = Vec::with_capacity(waiting.len());
                for p in waiting.drain(..) {
                    sizes.push(p.items.len());
                    items.extend(p.items);
                    replies.push(p.reply);
                }
                match write(items).await {
                    Ok(results) => {
                        debug_assert_eq!(results.len(), count, "one result per item");
                        let mut results = results.into_iter();
                        for (size, reply) in sizes.into_iter().zip(replies) {
                            let mine: Vec<R> = results.by_ref().take(size).collect();
                            let _ = reply.send(Ok(mine));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Hands `items` to the writer and waits until they are written.
    ///
    /// # Errors
    /// [`SubmitError::Failed`] with the write's error, or [`SubmitError::Closed`].
    pub async fn submit(&self, items: Vec<T>) -> Result<Vec<R>, SubmitError<E>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { items, reply })
            .await
            .map_err(|_| SubmitError::Closed)?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(SubmitError::Failed(e)),
            Err(_) => Err(SubmitError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn concurrent_callers_share_writes_and_get_their_own_results() {
        let writes = Arc::new(Mutex::new(Vec::<usize>::new()));
        let seen = writes.clone();
        let b: Batcher<u32, u32, String> = Batcher::spawn(1000, 64, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(items.len());
                Ok(items.into_iter().map(|x| x * 10).collect())
            }
        });
        // On the single-threaded test runtime all 20 callers queue up before the writer runs
        // again, so they must be grouped into fewer writes than callers.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20u32 {
            let b = b.clone();
            tasks.spawn(async move { (i, b.submit(vec![i, i + 100]).await) });
        }
        while let Some(done) = tasks.join_next().await {
            let (i, got) = done.unwrap();
            assert_eq!(got.unwrap(), vec![i * 10, (i + 100) * 10]);
        }
        let writes = writes.lock().unwrap().clone();
        assert_eq!(writes.iter().sum::<usize>(), 40);
        assert!(writes.len() < 20, "submissions were grouped: {writes:?}");
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_caller_in_it() {
        let b: Batcher<u32, u32, String> = Batcher::spawn(10, 4, |_items: Vec<u32>| async {
            Err("disk full".to_owned())
        });
        assert_eq!(
            b.submit(vec![1]).await,
            Err(SubmitError::Failed("disk full".to_owned()))
        );
    }
}
