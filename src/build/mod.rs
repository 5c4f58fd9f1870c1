//! The build engine: plans packages, builds them with `make -C <overlay> M=<dir> <goals>` in
//! split object directories sharing one jobserver, stages the results, and emits [`Event`]s.
//!
//! One way through: [`run`] checks the inputs and takes the locks, `plan` decides each package
//! (fresh, refused, or a [`job::Job`]), `schedule` runs the jobs on the shared make slots,
//! `prepare` makes each package's overlay, `make` runs its make calls, and `stage` installs the
//! modules and records what they were built from.

mod common_obj;
mod ctx;
mod job;
mod make;
mod options;
mod plan;
mod prepare;
mod probes;
mod schedule;
mod slots;
mod stage;

use crate::error::Error;
use crate::events::{Event, PackageResult, Status};
use crate::generation::Generation;
use crate::kbuild::KbuildTree;
use crate::modinst::Installer;
use crate::package::Package;
use camino::Utf8PathBuf;
use ctx::Ctx;
use job::Plan;
use kbuild_install::Error as KError;
use kbuild_install::tree::{SourceTree, release_matches};
use make::command_line;
pub use options::BuildOptions;
use plan::plan;
use schedule::execute;
use stage::{install_all, output_dir};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};

/// Run a build; returns one result per package, in dependency order.
pub fn run(
    opts: &BuildOptions,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<Vec<PackageResult>, Error> {
    if opts.packages.is_empty() {
        return Err(Error::NoPackages);
    }
    let (ctx, install_root) = context(opts, emit)?;
    let packages = crate::package::order(opts.packages.clone())?;
    let _locks = if opts.dry_run {
        None
    } else {
        Some(lock(&ctx, &packages, opts.no_wait)?)
    };
    // One set of slots for planning (Kconfig and Kbuild's evaluation run there) and building.
    let slots = slots::Slots::new(opts.jobs, opts.inherited_jobserver.clone())?;
    emit(Event::Jobs {
        what: slots.what.clone(),
    });
    let plans = plan_all(&ctx, &packages, &slots, emit)?;
    emit(Event::Planned {
        packages: plans.len(),
        to_build: plans.iter().filter(|p| matches!(p, Plan::Build(_))).count(),
    });
    if opts.dry_run {
        return Ok(dry_run(&ctx, plans, emit));
    }
    let results = execute(&ctx, plans, slots, opts, emit)?;
    if let Some(root) = &install_root {
        install_all(&ctx, root, &results)?;
    }
    Ok(results)
}

/// The trees and output directories of a run, checked: the source tree matches the Kbuild
/// tree's version, D and OUT (and `--install-mod-path`) are outside S, K and the trees K was
/// made from and apart from each other, and make and the compiler are there.
fn context(
    opts: &BuildOptions,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<(Ctx, Option<Utf8PathBuf>), Error> {
    let objdir = kbuild_install::paths::absolute(&opts.objdir)?;
    let dest = kbuild_install::paths::absolute(&opts.dest)?;
    for p in [&opts.kbuild, &opts.srctree, &objdir, &dest] {
        crate::error::check_kbuild_path(p)?;
    }
    let k = KbuildTree::open(&opts.kbuild)?;
    let src = SourceTree::open(&opts.srctree)?;
    if !release_matches(&k.recorded_release, &src.kernelversion) {
        return Err(KError::VersionMismatch {
            srctree: src.path.clone(),
            src_version: src.kernelversion.clone(),
            objtree: k.path.clone(),
            obj_release: k.recorded_release.clone(),
        }
        .into());
    }
    // D and OUT are written and cleaned: never inside S, K or the trees K was made from, never
    // holding them, and apart from each other.
    let objdir = kbuild_install::paths::resolve(&objdir)?;
    let dest = kbuild_install::paths::resolve(&dest)?;
    let protected = crate::guard::protected(&k, Some(src.path.as_path()));
    for p in [&objdir, &dest] {
        crate::guard::check_outside(p, &protected)?;
    }
    crate::guard::check_apart(&objdir, &dest)?;
    let cc = k.compiler();
    // The launcher reaches make's CC and the shell's command line: one word, no shell or make
    // metacharacters (a command name or a path).
    if let Some(l) = &opts.cc_launcher {
        kbuild_install::paths::check_path(camino::Utf8Path::new(l))?;
    }
    let launcher = opts.cc_launcher.as_deref();
    for (tool, role) in [
        ("make", "GNU make"),
        (cc.as_str(), "the kernel's C compiler (CC)"),
    ]
    .into_iter()
    .chain(launcher.map(|l| (l, "the compiler launcher (--cc-launcher)")))
    {
        which::which(tool).map_err(|_| KError::MissingTool {
            tool: tool.to_string(),
            role,
        })?;
    }
    let answers = (!opts.dry_run).then(|| objdir.join(".probes"));
    let target_answer = k.check_compiler_target(&cc, answers.as_deref())?;
    if let Some(w) = k.untested_version() {
        emit(Event::Warning(w));
    }
    let install_root = match &opts.install_mod_path {
        Some(p) => Some(output_dir(p, &protected, &objdir, &dest)?),
        None => None,
    };
    let installer = Installer::resolve(&k, &opts.install)?;
    let generation = Generation::of_release(&k.kernelrelease);
    // The compiler probes' cache lives in D: not for a dry run, which writes nothing.
    let probes = if opts.dry_run {
        None
    } else {
        std::fs::create_dir_all(&objdir).map_err(|e| KError::DestNotWritable {
            path: objdir.clone(),
            source: e,
        })?;
        let probes = probes::Probes::new(&objdir, &k.layers, &k.identity, &cc)?;
        if let Some((path, triple)) = &target_answer
            && let Some(dir) = path.parent()
            && std::fs::create_dir_all(dir).is_ok()
        {
            let _ = kbuild_install::fsutil::write_atomic(path, triple.as_bytes());
        }
        probes
    };

    let ctx = Ctx {
        probes,
        k,
        src,
        objdir,
        dest,
        index: OnceLock::new(),
        allow_kernel_change: opts.allow_kernel_change,
        dry_run: opts.dry_run,
        external: opts.external,
        installer,
        protected: protected.into_iter().map(|(p, _)| p).collect(),
        cc_launcher: opts.cc_launcher.clone(),
        generation,
        intree_vars: Mutex::new(HashMap::new()),
    };
    Ok((ctx, install_root))
}

/// Locks (per package, in D and OUT) before reading any state.
fn lock(ctx: &Ctx, packages: &[Package], no_wait: bool) -> Result<crate::runlock::RunLocks, Error> {
    for d in [&ctx.objdir, &ctx.dest] {
        std::fs::create_dir_all(d).map_err(|e| KError::DestNotWritable {
            path: d.to_path_buf(),
            source: e,
        })?;
    }
    let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
    let locks = crate::runlock::take(&ctx.k.path, &ctx.objdir, &ctx.dest, &names, no_wait)?;
    crate::runlock::clean_stale(&ctx.dest, &names);
    Ok(locks)
}

/// Plan every package, each holding a make slot (a plan may run Kconfig for a variant and make
/// for Kbuild's module map). A package whose dependency is rebuilt in this run is rebuilt after
/// it. Plans and errors come in package order.
fn plan_all(
    ctx: &Ctx,
    packages: &[Package],
    slots: &slots::Slots,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<Vec<Plan>, Error> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let by_name: std::collections::HashMap<&str, &Package> =
        packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let closures: Vec<Vec<&Package>> = packages.iter().map(|p| closure(&by_name, p)).collect();
    let inherited: Vec<Vec<crate::package::KconfigReq>> =
        closures.iter().map(|c| inherited(c)).collect();
    let planned: Vec<Mutex<Option<Result<Plan, Error>>>> =
        packages.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..slots.workers.clamp(1, packages.len().max(1)) {
            scope.spawn(|| {
                let mut stat_cache = crate::fresh::Cache::default();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= packages.len() || kbuild_install::process::interrupted() {
                        break;
                    }
                    let p = match slots.acquire() {
                        Ok(t) => {
                            let start = std::time::Instant::now();
                            let mut p =
                                plan(ctx, &packages[i], &inherited[i], &mut stat_cache, false);
                            slots.release(t);
                            if let Ok(Plan::Build(job)) = &mut p {
                                job.plan_seconds = start.elapsed().as_secs_f64();
                            }
                            p
                        }
                        Err(e) => Err(KError::io("take a make slot for", "make", e).into()),
                    };
                    *planned[i].lock().expect("plan slot") = Some(p);
                    emit(Event::Planning {
                        done: done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
                        total: packages.len(),
                    });
                }
            });
        }
    });
    kbuild_install::process::check_interrupted()?;
    let mut stat_cache = crate::fresh::Cache::default();
    let mut plans = Vec::new();
    let mut rebuilt: BTreeSet<String> = BTreeSet::new();
    for (((pkg, slot), inherited), deps) in
        packages.iter().zip(planned).zip(&inherited).zip(&closures)
    {
        let mut p = slot
            .into_inner()
            .expect("plan slot")
            .expect("every package planned")?;
        if matches!(p, Plan::Fresh(_)) && pkg.depends.iter().any(|d| rebuilt.contains(d)) {
            p = plan(ctx, pkg, inherited, &mut stat_cache, true)?;
        }
        if let Plan::Build(job) = &mut p {
            job.all_depends = deps.iter().map(|d| d.name.clone()).collect();
        }
        if matches!(p, Plan::Build(_)) {
            rebuilt.insert(pkg.name.clone());
        }
        plans.push(p);
    }
    Ok(plans)
}

/// A package's dependencies, transitively, nearest first.
fn closure<'a>(
    by_name: &std::collections::HashMap<&str, &'a Package>,
    pkg: &Package,
) -> Vec<&'a Package> {
    let mut seen: BTreeSet<&str> = BTreeSet::from([pkg.name.as_str()]);
    let mut queue: std::collections::VecDeque<&str> =
        pkg.depends.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name) {
            continue;
        }
        let Some(&dep) = by_name.get(name) else {
            continue;
        };
        out.push(dep);
        queue.extend(dep.depends.iter().map(String::as_str));
    }
    out
}

/// The kconfig entries of a package's dependencies, transitively (nearest first, each symbol
/// once): the configuration its modules are built with too.
fn inherited(deps: &[&Package]) -> Vec<crate::package::KconfigReq> {
    let mut symbols = BTreeSet::new();
    deps.iter()
        .flat_map(|d| d.kconfig.iter())
        .filter(|r| symbols.insert(r.symbol.clone()))
        .cloned()
        .collect()
}

/// `--dry-run`: what would be built, with make's command lines; nothing is written.
fn dry_run(ctx: &Ctx, plans: Vec<Plan>, emit: &(dyn Fn(Event) + Sync)) -> Vec<PackageResult> {
    let mut out = Vec::new();
    for p in plans {
        let r = p.settled().unwrap_or_else(|job| {
            let mut r = PackageResult::new(&job.pkg.name, Status::Planned);
            r.commands = job
                .units
                .iter()
                .map(|u| command_line(ctx, &job, u, &[]))
                .collect();
            r.modules = job.modules.clone();
            r.notes = job.notes.clone();
            r
        });
        emit(Event::Finished(Box::new(r.clone())));
        out.push(r);
    }
    out
}
