//! `enginebench`'s same-run baseline: an "actor" as people write it with tokio, a task owning
//! its state and fed by a bounded `tokio::sync::mpsc::channel(64)`, asks carrying a
//! `tokio::sync::oneshot` for the reply.

use tokio::sync::{mpsc, oneshot};

/// Capacity of the actor's channel (the usual bounded mailbox of a tokio actor).
pub const MAILBOX: usize = 64;

/// A message to the baseline actor: the three kinds `enginebench` sends Quark's `Echo`.
pub enum Msg {
    /// Fire and forget: count it.
    Bump,
    /// Reply with the value plus one (Quark's `Tiny`).
    Tiny(u64, oneshot::Sender<u64>),
    /// Reply with the number of messages handled (Quark's `Handled`).
    Handled(oneshot::Sender<u64>),
}

/// A handle to one baseline actor.
#[derive(Clone)]
pub struct TokioRef(mpsc::Sender<Msg>);

impl TokioRef {
    /// Sends `Bump` (waits while the channel is full).
    pub async fn tell(&self) {
        self.0
            .send(Msg::Bump)
            .await
            .expect("the baseline actor runs until every handle is dropped");
    }

    /// Asks `Tiny(v)`: `v + 1`.
    pub async fn ask(&self, v: u64) -> u64 {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Msg::Tiny(v, tx))
            .await
            .expect("the baseline actor runs until every handle is dropped");
        rx.await.expect("the baseline actor replies to every ask")
    }

    /// Asks how many messages the actor handled.
    pub async fn handled(&self) -> u64 {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Msg::Handled(tx))
            .await
            .expect("the baseline actor runs until every handle is dropped");
        rx.await.expect("the baseline actor replies to every ask")
    }
}

/// The actor's loop: runs until every handle is dropped.
pub async fn run(mut rx: mpsc::Receiver<Msg>) {
    let mut handled = 0u64;
    while let Some(m) = rx.recv().await {
        handled += 1;
        match m {
            Msg::Bump => {}
            Msg::Tiny(v, reply) => {
                let _ = reply.send(v.wrapping_add(1));
            }
            Msg::Handled(reply) => {
                let _ = reply.send(handled - 1);
            }
        }
    }
}

/// A new actor: its handle and the loop to spawn on a runtime.
pub fn actor() -> (TokioRef, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(MAILBOX);
    (TokioRef(tx), run(rx))
}

/// A current-thread tokio runtime (timers and I/O off: the baseline needs neither).
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime without drivers builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_actor_counts_and_replies() {
        let rt = current_thread();
        rt.block_on(async {
            let (r, fut) = actor();
            let task = tokio::task::spawn(fut);
            r.tell().await;
            assert_eq!(r.ask(41).await, 42);
            assert_eq!(r.handled().await, 2);
            drop(r);
            task.await.expect("actor task");
        });
    }
}
