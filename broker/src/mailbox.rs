//! A bounded queue whose owner sleeps in `zmq_poll`: the sender puts an item in the queue and
//! one byte on an inproc PAIR socket, and that byte is what wakes the owner's poll.
//!
//! Every thread of the broker waits in `zmq_poll` on its sockets, so a plain channel cannot wake
//! it. This is the one way threads hand each other work: ingest → commands (datagrams), the
//! snapshot endpoint ↔ ingest (views wanted and made), the cluster → ingest (other brokers'
//! updates), the relay → commands.

use std::sync::mpsc::{self, Receiver, SyncSender, TryIter, TrySendError};
use std::sync::Mutex;

/// The sending end: any thread may hold it (the wake-up socket is behind a lock).
pub(crate) struct Post<T> {
    tx: SyncSender<T>,
    wake: Mutex<zmq::Socket>,
}

/// The receiving end, owned by the thread that polls it.
pub(crate) struct Mailbox<T> {
    rx: Receiver<T>,
    wake: zmq::Socket,
}

/// A mailbox holding at most `bound` items, and its post. `name` names the inproc endpoint; it
/// must be unique within `ctx`.
pub(crate) fn mailbox<T>(
    ctx: &zmq::Context,
    name: &str,
    bound: usize,
) -> zmq::Result<(Post<T>, Mailbox<T>)> {
    let endpoint = format!("inproc://thingsbus-{name}");
    let receiving = ctx.socket(zmq::PAIR)?;
    receiving.set_linger(0)?;
    receiving.bind(&endpoint)?;
    let sending = ctx.socket(zmq::PAIR)?;
    sending.set_linger(0)?;
    sending.connect(&endpoint)?;
    let (tx, rx) = mpsc::sync_channel(bound);
    Ok((
        Post {
            tx,
            wake: Mutex::new(sending),
        },
        Mailbox {
            rx,
            wake: receiving,
        },
    ))
}

impl<T> Post<T> {
    /// Puts `item` in the mailbox and wakes its owner, without waiting: gives the item back when
    /// the mailbox is full or its owner has gone.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(item)?;
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        let wake = self
            .wake
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A full wake-up queue already holds a wake-up the owner has not seen.
        let _ = wake.send(&b""[..], zmq::DONTWAIT);
    }
}

impl<T> Mailbox<T> {
    /// What to give `zmq::poll` so that it returns when something is posted.
    pub(crate) fn poll_item(&self) -> zmq::PollItem<'_> {
        self.wake.as_poll_item(zmq::POLLIN)
    }

    /// Everything in the mailbox now. The wake-ups are taken first, so an item posted after the
    /// iterator ends wakes the next poll.
    pub(crate) fn drain(&self) -> TryIter<'_, T> {
        while self.wake.recv_bytes(zmq::DONTWAIT).is_ok() {}
        self.rx.try_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_wakes_the_poll_and_drain_takes_everything() {
        let ctx = zmq::Context::new();
        let (post, mailbox) = mailbox::<u32>(&ctx, "test-wake", 4).expect("mailbox");
        let mut items = [mailbox.poll_item()];
        assert_eq!(zmq::poll(&mut items, 0).expect("poll"), 0, "nothing yet");
        post.try_send(1).expect("room");
        post.try_send(2).expect("room");
        let mut items = [mailbox.poll_item()];
        assert_eq!(zmq::poll(&mut items, 1000).expect("poll"), 1, "woken");
        assert_eq!(mailbox.drain().collect::<Vec<_>>(), [1, 2]);
        let mut items = [mailbox.poll_item()];
        assert_eq!(zmq::poll(&mut items, 0).expect("poll"), 0, "wake-ups taken");
    }

    #[test]
    fn a_full_mailbox_gives_the_item_back_and_a_gone_owner_too() {
        let ctx = zmq::Context::new();
        let (post, mailbox) = mailbox::<u32>(&ctx, "test-full", 1).expect("mailbox");
        post.try_send(1).expect("room");
        assert!(matches!(post.try_send(2), Err(TrySendError::Full(2))));
        drop(mailbox);
        assert!(matches!(
            post.try_send(3),
            Err(TrySendError::Disconnected(3))
        ));
    }

    #[test]
    fn posts_from_another_thread_arrive_in_order() {
        let ctx = zmq::Context::new();
        let (post, mailbox) = mailbox::<u32>(&ctx, "test-thread", 8).expect("mailbox");
        let sender = std::thread::spawn(move || {
            for mut i in 0..1000 {
                // A full mailbox gives the item back: try again once the owner took some.
                while let Err(TrySendError::Full(back)) = post.try_send(i) {
                    i = back;
                    std::thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 1000 {
            let mut items = [mailbox.poll_item()];
            zmq::poll(&mut items, 1000).expect("poll");
            got.extend(mailbox.drain());
        }
        sender.join().expect("sender");
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }
}
