//! Child processes: each in its own process group, reaped on Ctrl-C.
//!
//! `install_interrupt_handler` installs one SIGINT/SIGTERM handler for the whole program. It sets
//! a flag that long loops poll through [`check_interrupted`], and sends SIGTERM (then SIGKILL after
//! a grace period) to the process group of every running child, so `make` and its compilers stop
//! too. The caller's `Drop` guards then remove what was half-written.

use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
static HANDLER: Once = Once::new();

/// Install the Ctrl-C handler (idempotent).
pub fn install_interrupt_handler() {
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            INTERRUPTED.store(true, Ordering::SeqCst);
            signal_groups(libc::SIGTERM);
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs(3));
                signal_groups(libc::SIGKILL);
            });
        });
    });
}

fn signal_groups(sig: i32) {
    let groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pgid in groups {
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe {
            libc::killpg(pgid, sig);
        }
    }
}

/// Whether the user asked to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once the user asked to stop.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Put the child in a process group of its own, with stdin from /dev/null, and have the kernel
/// send it SIGTERM when extmod dies (even by SIGKILL), so no make outlives its parent.
pub fn own_group(expr: duct::Expression) -> duct::Expression {
    expr.stdin_null().before_spawn(|cmd| {
        cmd.process_group(0);
        // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated after fork.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // The parent may have died between fork and prctl.
                if libc::getppid() == 1 {
                    libc::_exit(130);
                }
                Ok(())
            });
        }
        Ok(())
    })
}

/// A one-line rendering of a command for messages and `--dry-run`.
pub fn display(program: &str, args: &[String]) -> String {
    let mut out = String::from(program);
    for a in args {
        out.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
            out.push('\'');
            out.push_str(&a.replace('\'', r"'\''"));
            out.push('\'');
        } else {
            out.push_str(a);
        }
    }
    out
}

/// Registration of a running child's process group for Ctrl-C; unregisters on drop.
pub struct GroupGuard(Vec<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let mut g = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        for p in &self.0 {
            g.remove(p);
        }
    }
}

fn register(pids: &[u32]) -> GroupGuard {
    let pids: Vec<i32> = pids.iter().map(|&p| p as i32).collect();
    GROUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(pids.iter().copied());
    // Ctrl-C may have come between the spawn and this registration.
    if interrupted() {
        for &p in &pids {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe {
                libc::killpg(p, libc::SIGTERM);
            }
        }
    }
    GroupGuard(pids)
}

/// Start `expr` in its own process group with stdout and stderr merged into a reader, for
/// streaming a long build's output. Read to EOF, then `try_wait` gives the status.
pub fn start_reader(expr: duct::Expression) -> std::io::Result<(duct::ReaderHandle, GroupGuard)> {
    let reader = own_group(expr).stderr_to_stdout().unchecked().reader()?;
    let guard = register(&reader.pids());
    Ok((reader, guard))
}

/// The result of a finished child.
#[derive(Debug)]
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `expr` (already configured with env, dir, redirections) in its own process group,
/// capturing stdout and stderr unless the expression redirects them itself. Failure to start or a
/// non-zero exit becomes `Error::Command` naming `what`, unless `unchecked`.
pub fn run(expr: duct::Expression, what: &str, unchecked: bool) -> Result<Finished> {
    check_interrupted()?;
    let handle = own_group(expr)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .start()
        .map_err(|e| Error::command(what, None, e.to_string()))?;
    let guard = register(&handle.pids());
    let out = handle.wait();
    drop(guard);
    let out = out.map_err(|e| Error::command(what, None, e.to_string()))?;
    check_interrupted()?;
    let fin = Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if !unchecked && !fin.status.success() {
        let mut text = fin.stderr.clone();
        if text.trim().is_empty() {
            text = fin.stdout.clone();
        }
        return Err(Error::command(what, Some(fin.status), text));
    }
    Ok(fin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_when_needed() {
        assert_eq!(
            display("make", &["-C".into(), "/a b".into(), "M=x".into()]),
            "make -C '/a b' M=x"
        );
    }

    #[test]
    fn failing_command_names_itself_and_keeps_stderr() {
        let err = run(
            duct::cmd!("sh", "-c", "echo boom >&2; exit 3"),
            "sh boom",
            false,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`sh boom` failed"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }

    #[test]
    fn child_reads_dev_null_not_our_stdin() {
        let fin = run(
            duct::cmd!("sh", "-c", "cat; readlink /proc/self/fd/0"),
            "sh",
            false,
        )
        .unwrap();
        assert_eq!(fin.stdout.trim(), "/dev/null");
    }

    #[test]
    fn child_runs_in_its_own_process_group() {
        let fin = run(
            duct::cmd!("sh", "-c", "ps -o pgid= -p $$; echo $$"),
            "ps",
            false,
        )
        .unwrap();
        let mut it = fin.stdout.split_whitespace();
        let pgid = it.next().unwrap();
        let pid = it.next().unwrap();
        assert_eq!(pgid, pid);
    }
}
