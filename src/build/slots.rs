//! The make slots shared by every package: our own jobserver of N slots, or make's.

use crate::error::Error;
use kbuild_install::Error as KError;
use kbuild_install::process::interrupted;
use std::sync::atomic::{AtomicBool, Ordering};

/// More make slots than this would only fill the jobserver pipe (64 KiB) and block.
pub(super) const MAX_JOBS: usize = 1024;

/// The jobserver shared by every make: our own with N slots, or make's when run under make.
pub(super) struct Slots {
    pub(super) client: jobserver::Client,
    pub(super) implicit_free: AtomicBool,
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
        if jobs.is_none()
            && let Some(client) = inherited
        {
            return Ok(Slots {
                client,
                implicit_free: AtomicBool::new(true),
                what: "make's jobserver".into(),
                workers: std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .max(2),
            });
        }
        let n = jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .clamp(1, MAX_JOBS);
        let client =
            jobserver::Client::new(n).map_err(|e| KError::io("create jobserver for", "make", e))?;
        Ok(Slots {
            client,
            implicit_free: AtomicBool::new(false),
            what: format!("a jobserver of {n} slots"),
            workers: n,
        })
    }

    pub(super) fn acquire(&self) -> std::io::Result<Token> {
        if self
            .implicit_free
            .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Ok(Token::Implicit);
        }
        // Poll rather than block: a blocked read is not woken when the implicit slot comes
        // back, nor by Ctrl-C.
        loop {
            match self.client.try_acquire() {
                Ok(Some(a)) => return Ok(Token::Acquired(a)),
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                    return self.client.acquire().map(Token::Acquired);
                }
                Err(e) => return Err(e),
            }
            if interrupted() {
                return Err(std::io::Error::other("interrupted"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            if self
                .implicit_free
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Ok(Token::Implicit);
            }
        }
    }

    pub(super) fn release(&self, t: Token) {
        if let Token::Implicit = t {
            self.implicit_free.store(true, Ordering::SeqCst);
        }
    }
}

pub(super) enum Token {
    Implicit,
    Acquired(#[allow(dead_code)] jobserver::Acquired),
}
