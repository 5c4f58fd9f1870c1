//! Running the planned jobs: dependencies first, one thread per package holding a make slot,
//! results reported as they settle.

use super::BuildOptions;
use super::ctx::Ctx;
use super::job::{Job, Plan};
use super::make::build_package;
use super::slots::Slots;
use crate::error::Error;
use crate::events::{Event, PackageResult, Status};
use camino::Utf8PathBuf;
use kbuild_install::process::{check_interrupted, interrupted};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

pub(super) fn execute(
    ctx: &Ctx,
    plans: Vec<Plan>,
    opts: &BuildOptions,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<Vec<PackageResult>, Error> {
    let slots = Slots::new(opts.jobs, opts.inherited_jobserver.clone())?;
    emit(Event::Jobs {
        what: slots.what.clone(),
    });
    let names: Vec<String> = plans
        .iter()
        .map(|p| match p {
            Plan::Done(r) => r.name.clone(),
            Plan::Build(j) => j.pkg.name.clone(),
        })
        .collect();
    let mut results: Vec<Option<PackageResult>> = vec![None; plans.len()];
    let mut pending: Vec<(usize, Job)> = Vec::new();
    // Providers the base build lacks (built through a variant) are chained to their dependents
    // with KBUILD_EXTRA_SYMBOLS, whether they are built in this run or fresh from an earlier one.
    let mut chain: HashMap<String, Utf8PathBuf> = HashMap::new();
    for (i, p) in plans.into_iter().enumerate() {
        match p {
            Plan::Done(r) => {
                if r.status == Status::Fresh
                    && r.modules
                        .iter()
                        .any(|m| ctx.k.built_module(m) == Some(false))
                {
                    chain.insert(r.name.clone(), ctx.pkg_dir(&r.name).join("Module.symvers"));
                }
                emit(Event::Finished(Box::new(r.clone())));
                results[i] = Some(r);
            }
            Plan::Build(job) => pending.push((i, job)),
        }
    }
    let pos: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i))
        .collect();
    let symvers: Mutex<HashMap<String, Utf8PathBuf>> = Mutex::new(chain);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, PackageResult)>();
    std::thread::scope(|scope| {
        let mut running = 0usize;
        loop {
            // Start every job whose dependencies are settled.
            let mut i = 0;
            while i < pending.len() && running < slots.workers {
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
                let failed_dep = job.pkg.depends.iter().find(|d| {
                    !matches!(
                        results[pos[*d]].as_ref().map(|r| r.status),
                        Some(Status::Built | Status::Fresh)
                    )
                });
                if let Some(d) = failed_dep.cloned() {
                    let mut r = PackageResult::new(&job.pkg.name, Status::Skipped);
                    r.error = Some(format!("dependency `{d}` was not built"));
                    emit(Event::Finished(Box::new(r.clone())));
                    results[idx] = Some(r);
                    continue;
                }
                if stop.load(Ordering::SeqCst) || interrupted() {
                    let mut r = PackageResult::new(&job.pkg.name, Status::Skipped);
                    r.error = Some(
                        "not started after an earlier failure (use --keep-going to build the rest)"
                            .into(),
                    );
                    emit(Event::Finished(Box::new(r.clone())));
                    results[idx] = Some(r);
                    continue;
                }
                // Providers the base build lacks are chained through KBUILD_EXTRA_SYMBOLS.
                let extra: Vec<Utf8PathBuf> = {
                    let s = symvers.lock().unwrap();
                    job.pkg
                        .depends
                        .iter()
                        .filter_map(|d| s.get(d).cloned())
                        .collect()
                };
                let tx = tx.clone();
                let (slots, symvers, stop) = (&slots, &symvers, &stop);
                running += 1;
                scope.spawn(move || {
                    let token = slots.acquire();
                    let r = match token {
                        // Waiting for a slot may outlast an interrupt or a failure.
                        Ok(t) if stop.load(Ordering::SeqCst) || interrupted() => {
                            slots.release(t);
                            let mut r = PackageResult::new(&job.pkg.name, Status::Skipped);
                            r.error = Some(if interrupted() {
                                "not started: interrupted".into()
                            } else {
                                "not started after an earlier failure (use --keep-going to build the rest)".into()
                            });
                            r
                        }
                        Ok(t) => {
                            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                build_package(ctx, &job, &extra, slots, emit)
                            }));
                            slots.release(t);
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
                    if r.status == Status::Built
                        && job
                            .modules
                            .iter()
                            .any(|m| ctx.k.built_module(m) == Some(false))
                    {
                        symvers.lock().unwrap().insert(
                            job.pkg.name.clone(),
                            ctx.pkg_dir(&job.pkg.name).join("Module.symvers"),
                        );
                    }
                    if r.status == Status::Failed && !opts.keep_going {
                        stop.store(true, Ordering::SeqCst);
                    }
                    let _ = tx.send((idx, r));
                });
            }
            if running == 0 {
                break;
            }
            let (idx, r) = rx.recv().expect("a worker reports");
            running -= 1;
            emit(Event::Finished(Box::new(r.clone())));
            results[idx] = Some(r);
        }
    });
    check_interrupted()?;
    Ok(results
        .into_iter()
        .map(|r| r.expect("every package settled"))
        .collect())
}
