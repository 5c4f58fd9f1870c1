//! Running the planned jobs: dependencies first, one thread per package holding a make slot,
//! results reported as they settle.

use super::ctx::Ctx;
use super::job::{Job, Plan};
use super::make::build_package;
use super::options::BuildOptions;
use super::slots::Slots;
use crate::error::Error;
use crate::events::{Event, PackageResult, Status};
use camino::Utf8PathBuf;
use kbuild_install::process::{check_interrupted, interrupted};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

const NOT_STARTED: &str =
    "not started after an earlier failure (use --keep-going to build the rest)";

/// What the running jobs share.
struct Shared<'a> {
    ctx: &'a Ctx,
    slots: Slots,
    /// Module.symvers of packages whose modules the base build lacks, by package: chained to
    /// their dependents with KBUILD_EXTRA_SYMBOLS, whether built in this run or fresh.
    symvers: Mutex<HashMap<String, Utf8PathBuf>>,
    /// Set by a failure without --keep-going: no further package starts.
    stop: AtomicBool,
    keep_going: bool,
    emit: &'a (dyn Fn(Event) + Sync),
}

/// Results in plan order (which is dependency order).
pub(super) fn execute(
    ctx: &Ctx,
    plans: Vec<Plan>,
    slots: Slots,
    opts: &BuildOptions,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<Vec<PackageResult>, Error> {
    let pos: HashMap<String, usize> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name().to_string(), i))
        .collect();
    let mut results: Vec<Option<PackageResult>> = vec![None; plans.len()];
    let mut pending: Vec<(usize, Job)> = Vec::new();
    let mut chain = HashMap::new();
    for (i, p) in plans.into_iter().enumerate() {
        match p.settled() {
            Ok(r) => {
                if r.status == Status::Fresh && lacks_base_modules(ctx, &r.modules) {
                    chain.insert(r.name.clone(), ctx.pkg_dir(&r.name).join("Module.symvers"));
                }
                emit(Event::Finished(Box::new(r.clone())));
                results[i] = Some(r);
            }
            Err(job) => pending.push((i, *job)),
        }
    }
    let shared = Shared {
        ctx,
        slots,
        symvers: Mutex::new(chain),
        stop: AtomicBool::new(false),
        keep_going: opts.keep_going,
        emit,
    };
    run_jobs(&shared, pending, &pos, &mut results);
    check_interrupted()?;
    Ok(results
        .into_iter()
        .map(|r| r.expect("every package settled"))
        .collect())
}

/// Whether some of `modules` were not made by the base build (their exports are not in its
/// Module.symvers).
fn lacks_base_modules(ctx: &Ctx, modules: &[String]) -> bool {
    modules.iter().any(|m| ctx.k.built_module(m) == Some(false))
}

/// Start every job whose dependencies are settled, on at most `workers` threads, until all
/// are settled.
fn run_jobs(
    sh: &Shared,
    mut pending: Vec<(usize, Job)>,
    pos: &HashMap<String, usize>,
    results: &mut [Option<PackageResult>],
) {
    let (tx, rx) = mpsc::channel::<(usize, PackageResult)>();
    std::thread::scope(|scope| {
        let mut running = 0usize;
        loop {
            let mut i = 0;
            while i < pending.len() && running < sh.slots.workers {
                let deps: Vec<Option<Status>> = pending[i]
                    .1
                    .pkg
                    .depends
                    .iter()
                    .map(|d| results[pos[d]].as_ref().map(|r| r.status))
                    .collect();
                if deps.iter().any(Option::is_none) {
                    i += 1;
                    continue;
                }
                let (idx, job) = pending.remove(i);
                if let Some(r) = not_started(sh, &job, &deps) {
                    (sh.emit)(Event::Finished(Box::new(r.clone())));
                    results[idx] = Some(r);
                    continue;
                }
                let tx = tx.clone();
                running += 1;
                scope.spawn(move || {
                    let r = worker(sh, &job);
                    let _ = tx.send((idx, r));
                });
            }
            if running == 0 {
                break;
            }
            let (idx, r) = rx.recv().expect("a worker reports");
            running -= 1;
            (sh.emit)(Event::Finished(Box::new(r.clone())));
            results[idx] = Some(r);
        }
    });
}

/// A job that must not start: a dependency was not built, or an earlier failure (without
/// --keep-going) or an interrupt stops the run.
fn not_started(sh: &Shared, job: &Job, deps: &[Option<Status>]) -> Option<PackageResult> {
    let failed_dep = job
        .pkg
        .depends
        .iter()
        .zip(deps)
        .find(|(_, s)| !matches!(s, Some(Status::Built | Status::Fresh)));
    let mut r = PackageResult::new(&job.pkg.name, Status::Skipped);
    if let Some((d, _)) = failed_dep {
        r.error = Some(format!("dependency `{d}` was not built"));
    } else if sh.stop.load(Ordering::SeqCst) || interrupted() {
        r.error = Some(NOT_STARTED.into());
    } else {
        return None;
    }
    Some(r)
}

/// One package on its own thread: take a make slot, build, give the slot back, and share what
/// its dependents need.
fn worker(sh: &Shared, job: &Job) -> PackageResult {
    // Providers the base build lacks are chained through KBUILD_EXTRA_SYMBOLS: every
    // dependency's, transitively (a module may need a symbol of its dependency's dependency).
    let extra: Vec<Utf8PathBuf> = {
        let s = sh.symvers.lock().unwrap();
        job.all_depends
            .iter()
            .filter_map(|d| s.get(d).cloned())
            .collect()
    };
    let r = match sh.slots.acquire() {
        // Waiting for a slot may outlast an interrupt or a failure.
        Ok(t) if sh.stop.load(Ordering::SeqCst) || interrupted() => {
            sh.slots.release(t);
            let mut r = PackageResult::new(&job.pkg.name, Status::Skipped);
            r.error = Some(if interrupted() {
                "not started: interrupted".into()
            } else {
                NOT_STARTED.into()
            });
            r
        }
        Ok(t) => {
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                build_package(sh.ctx, job, &extra, &sh.slots, sh.emit)
            }));
            sh.slots.release(t);
            built.unwrap_or_else(|_| {
                let mut r = PackageResult::new(&job.pkg.name, Status::Failed);
                r.error = Some("internal error: the build thread panicked".into());
                r
            })
        }
        Err(e) => {
            let mut r = PackageResult::new(&job.pkg.name, Status::Failed);
            r.error = Some(format!("cannot take a jobserver slot: {e}"));
            r
        }
    };
    if r.status == Status::Built && lacks_base_modules(sh.ctx, &job.modules) {
        sh.symvers.lock().unwrap().insert(
            job.pkg.name.clone(),
            sh.ctx.pkg_dir(&job.pkg.name).join("Module.symvers"),
        );
    }
    if r.status == Status::Failed && !sh.keep_going {
        sh.stop.store(true, Ordering::SeqCst);
    }
    r
}
