//! The make slots shared by every package: our own jobserver of N slots, or make's.
//!
//! A package thread holds one slot while its make runs (make's implicit one: make takes more
//! from the jobserver for parallel compiles). Slots come from the jobserver through its helper
//! thread (the `jobserver` crate's): a waiting thread is woken when a token arrives, when the
//! implicit slot is given back, or on Ctrl-C, never by polling. A token that arrives when
//! nobody waits any more goes straight back to the jobserver, so no slot sits idle.

use crate::error::Error;
use kbuild_install::Error as KError;
use kbuild_install::process::interrupted;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// More make slots than this would only fill the jobserver pipe (64 KiB) and block.
pub(super) const MAX_JOBS: usize = 1024;

/// How often a waiting thread looks at the interrupt flag (Ctrl-C sets it without waking
/// anyone).
const INTERRUPT_CHECK: Duration = Duration::from_millis(200);

#[derive(Default)]
struct State {
    /// This process's implicit slot is free.
    implicit_free: bool,
    /// Tokens the helper thread acquired for threads still waiting.
    tokens: Vec<jobserver::Acquired>,
    /// Threads waiting for a slot.
    waiting: usize,
    /// A failed read of the jobserver, for the waiting threads.
    error: Option<String>,
}

/// The jobserver shared by every make: our own with N slots, or make's when run under make.
pub(super) struct Slots {
    pub(super) client: jobserver::Client,
    shared: Arc<(Mutex<State>, Condvar)>,
    helper: jobserver::HelperThread,
    /// How the slots are shared, for the report.
    pub(super) what: String,
    /// At most this many package threads at once (each holds or waits for one slot).
    pub(super) workers: usize,
}

impl Slots {
    pub(super) fn new(
        jobs: Option<usize>,
        inherited: Option<jobserver::Client>,
    ) -> Result<Self, Error> {
        let (client, what, workers) = match (jobs, inherited) {
            (None, Some(client)) => (
                client,
                "make's jobserver".to_string(),
                std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .max(2),
            ),
            (jobs, _) => {
                let n = jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
                    .clamp(1, MAX_JOBS);
                // As `make -jN`: N-1 tokens in the jobserver, and the implicit slot.
                let client = jobserver::Client::new(n - 1)
                    .map_err(|e| KError::io("create jobserver for", "make", e))?;
                (client, format!("a jobserver of {n} slots"), n)
            }
        };
        let shared = Arc::new((
            Mutex::new(State {
                implicit_free: true,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let for_helper = Arc::clone(&shared);
        let helper = client
            .clone()
            .into_helper_thread(move |token| {
                let (lock, cvar) = &*for_helper;
                let mut st = lock.lock().expect("slots lock");
                match token {
                    // Nobody waits any more (the implicit slot served): give it back now.
                    Ok(t) if st.waiting <= st.tokens.len() => drop(t),
                    Ok(t) => st.tokens.push(t),
                    Err(e) => st.error = Some(e.to_string()),
                }
                cvar.notify_all();
            })
            .map_err(|e| KError::io("start the jobserver helper for", "make", e))?;
        Ok(Slots {
            client,
            shared,
            helper,
            what,
            workers,
        })
    }

    /// Wait for a slot: the implicit one when free, else a jobserver token.
    pub(super) fn acquire(&self) -> std::io::Result<Token> {
        let (lock, cvar) = &*self.shared;
        let mut st = lock.lock().expect("slots lock");
        if st.implicit_free {
            st.implicit_free = false;
            return Ok(Token::Implicit);
        }
        st.waiting += 1;
        self.helper.request_token();
        let got = loop {
            if st.implicit_free {
                st.implicit_free = false;
                break Ok(Token::Implicit);
            }
            if let Some(t) = st.tokens.pop() {
                break Ok(Token::Acquired(t));
            }
            if let Some(e) = st.error.take() {
                break Err(std::io::Error::other(e));
            }
            if interrupted() {
                break Err(std::io::Error::other("interrupted"));
            }
            st = cvar
                .wait_timeout(st, INTERRUPT_CHECK)
                .expect("slots lock")
                .0;
        };
        st.waiting -= 1;
        // Tokens beyond the threads still waiting go back to the jobserver.
        while st.tokens.len() > st.waiting {
            drop(st.tokens.pop());
        }
        got
    }

    pub(super) fn release(&self, t: Token) {
        let (lock, cvar) = &*self.shared;
        if let Token::Implicit = t {
            lock.lock().expect("slots lock").implicit_free = true;
            cvar.notify_all();
        }
        // A jobserver token goes back when dropped.
    }
}

pub(super) enum Token {
    Implicit,
    Acquired(#[allow(dead_code)] jobserver::Acquired),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_slots_serve_n_holders_and_wake_a_waiter_on_release() {
        let slots = Arc::new(Slots::new(Some(2), None).unwrap());
        let a = slots.acquire().unwrap();
        let b = slots.acquire().unwrap();
        assert!(matches!(a, Token::Implicit));
        assert!(matches!(b, Token::Acquired(_)));
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = Arc::clone(&slots);
        let waiter = std::thread::spawn(move || {
            let t = s2.acquire().unwrap();
            tx.send(()).unwrap();
            s2.release(t);
        });
        // Both slots are held: the third holder waits.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        slots.release(b);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("woken when a token came back");
        waiter.join().unwrap();
        slots.release(a);
        // Everything was given back: two holders again, at once.
        let a = slots.acquire().unwrap();
        let b = slots.acquire().unwrap();
        slots.release(a);
        slots.release(b);
    }
}
