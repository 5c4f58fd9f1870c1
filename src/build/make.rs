//! One package's make calls: command lines, the in-tree modpost, the output and what a
//! failure means.

use super::ctx::Ctx;
use super::job::{Job, Unit};
use super::prepare::{MODPOST, prepare_tree, unit_symvers};
use super::slots::Slots;
use super::stage::stage;
use crate::error::code;
use crate::events::{Event, PackageResult, Phases, Status};
use crate::modinst::InstalledModule;
use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::process::{self, interrupted};
use regex::Regex;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::sync::LazyLock;
use std::time::Instant;

pub(super) fn make_args(
    ctx: &Ctx,
    job: &Job,
    unit: &Unit,
    extra_symbols: &[Utf8PathBuf],
) -> Vec<String> {
    let name = &job.pkg.name;
    let mut args = ctx
        .generation
        .placement(&ctx.tree(name), &ctx.out(name), &unit.dir);
    args.extend(ctx.k.make_vars.iter().cloned());
    args.extend(ctx.generation_vars(job).unwrap_or_default());
    if let Some(launcher) = &ctx.cc_launcher {
        // After the tree's own variables, so that it is the CC make uses.
        args.push(format!("CC={launcher} {}", ctx.k.compiler()));
    }
    if !ctx.external {
        args.push(format!(
            "MODPOST={}",
            ctx.pkg_dir(&job.pkg.name).join(MODPOST)
        ));
    }
    // Module BTF: pahole's `-j` makes its output depend on thread timing (pahole < 1.27), and
    // scripts/Makefile.btf drops `-j` when KBUILD_BUILD_TIMESTAMP is set, as reproducible
    // builds (Debian's among them) do. Nothing else in a module build reads it.
    if ctx.k.value("DEBUG_INFO_BTF_MODULES") == Some("y")
        && std::env::var_os("KBUILD_BUILD_TIMESTAMP").is_none()
    {
        args.push("KBUILD_BUILD_TIMESTAMP=@0".into());
    }
    if !extra_symbols.is_empty() {
        let list: Vec<&str> = extra_symbols.iter().map(|p| p.as_str()).collect();
        args.push(format!("KBUILD_EXTRA_SYMBOLS={}", list.join(" ")));
    }
    args.extend(ctx.generation.goals(&unit.dir, &unit.goals));
    args
}

pub(super) fn command_line(ctx: &Ctx, job: &Job, unit: &Unit, extra: &[Utf8PathBuf]) -> String {
    process::display("make", &make_args(ctx, job, unit, extra))
}

pub(super) fn build_package(
    ctx: &Ctx,
    job: &Job,
    extra: &[Utf8PathBuf],
    slots: &Slots,
    emit: &(dyn Fn(Event) + Sync),
) -> PackageResult {
    // Remembered beside the overlay it describes (a new overlay layout removes it).
    let real = ctx.pkg_dir(&job.pkg.name).join(REAL_SUBDIRS);
    let linked = !real.exists();
    let (r, wrote_read_only) = build_once(ctx, job, extra, slots, emit, linked);
    if !linked || r.status != Status::Failed || !wrote_read_only || interrupted() {
        return r;
    }
    // make wrote below a module directory into a directory the overlay links to the read-only
    // source tree: none of the package's objects is there by the module map, yet the build
    // writes there (a generated file). Again with every directory below the module directories
    // real, and so from now on.
    let (mut again, _) = build_once(ctx, job, extra, slots, emit, false);
    if again.status == Status::Built {
        let _ = std::fs::write(&real, "");
    }
    again.notes.push(
        "make wrote below a module directory where none of its objects is; built again with those directories real"
            .to_string(),
    );
    again
}

/// In `D/<package>/`: the package's make writes below its module directories, so they are all
/// real in its overlay.
const REAL_SUBDIRS: &str = "real-subdirs";

/// One build of a package; whether a make failed writing into the read-only source tree.
fn build_once(
    ctx: &Ctx,
    job: &Job,
    extra: &[Utf8PathBuf],
    slots: &Slots,
    emit: &(dyn Fn(Event) + Sync),
    link_unwritten: bool,
) -> (PackageResult, bool) {
    let mut wrote_read_only = false;
    let start = Instant::now();
    let name = &job.pkg.name;
    let mut r = PackageResult::new(name, Status::Failed);
    r.modules = job.modules.clone();
    r.notes = job.notes.clone();
    let log_path = ctx.pkg_dir(name).join("build.log");
    r.log = Some(log_path.clone());
    let started = std::time::SystemTime::now();
    // Providers chained into this package: its dependencies', then its own earlier units'.
    let deps_extra = extra;
    let mut extra = extra.to_vec();
    let mut missing_exports = None;
    let mut phases = Phases {
        plan: job.plan_seconds,
        ..Phases::default()
    };
    let outcome = (|| -> Result<Vec<InstalledModule>, String> {
        let setup_start = Instant::now();
        ctx.generation_vars(job)?;
        prepare_tree(ctx, job, deps_extra, link_unwritten).map_err(|e| e.to_string())?;
        phases.setup = setup_start.elapsed().as_secs_f64();
        let mut log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot write `{log_path}`: {e}"))?;
        // Units run in the package's order; one whose modpost misses symbols that a unit still
        // to come exports (by the base Module.symvers) waits for it: modpost names the needs.
        let symvers_d = super::prepare::symvers_dir(ctx, name);
        let _ = std::fs::remove_dir_all(&symvers_d);
        let mut pending: std::collections::VecDeque<Unit> = job.units.iter().cloned().collect();
        let mut deferred = 0;
        let mut split = false;
        while let Some(unit) = pending.pop_front() {
            let unit = &unit;
            let (line, status, text) =
                make_unit(ctx, job, unit, &extra, slots, &mut log, &mut phases, emit)?;
            r.commands.push(line);
            if interrupted() {
                return Err("interrupted".into());
            }
            match status {
                Some(s) if s.success() => {
                    deferred = 0;
                    // Later units see this one's exports when the base list lacks or filters them.
                    // (With in-tree modpost the base list lacks every module of the package.)
                    let fresh_exports = job.variant.is_some()
                        || !ctx.external
                        || unit.goals.iter().any(|g| {
                            ctx.k.built_module(&format!("{}/{g}", unit.dir)) == Some(false)
                        });
                    let exports = unit_symvers(ctx, name, unit)?;
                    if fresh_exports {
                        extra.push(exports);
                    }
                }
                _ if deferred < pending.len() && needs_later_unit(ctx, &text, &pending) => {
                    let _ = writeln!(
                        log,
                        "# {}: needs exports of a later unit of this package; built after it",
                        unit.dir
                    );
                    r.commands.pop();
                    deferred += 1;
                    pending.push_back(unit.clone());
                }
                // Directories that need each other's exports (lib/crypto's libcurve25519.ko
                // needs arch/x86's, whose module needs libcurve25519-generic.ko): one make per
                // module, in the order modpost allows.
                _ if !split
                    && job.units.len() > 1
                    && job.units.iter().any(|u| u.goals.len() > 1)
                    && only_undefined_symbols(&text) =>
                {
                    let _ = writeln!(
                        log,
                        "# {}: its directories need each other's exports; one make per module",
                        unit.dir
                    );
                    r.commands.pop();
                    split = true;
                    deferred = 0;
                    let rest: Vec<Unit> = std::iter::once(unit.clone())
                        .chain(pending.drain(..))
                        .flat_map(|u| {
                            u.goals
                                .iter()
                                .map(|g| Unit {
                                    dir: u.dir.clone(),
                                    goals: vec![g.clone()],
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    pending.extend(rest);
                }
                other => {
                    wrote_read_only =
                        wrote_below_module_dir(&text, &ctx.tree(name), &job.write_dirs);
                    let why = explain_failure(&text, ctx);
                    if other.is_some() && only_undefined_symbols(&text) {
                        // Compiled, but linked against exports nobody provides: a missing
                        // dependency, or a configuration that changes another module.
                        missing_exports = Some(why.clone());
                    }
                    let st = other.map_or("did not finish".to_string(), |s| s.to_string());
                    return Err(format!("`make` failed ({st}): {why}"));
                }
            }
        }
        let stage_start = Instant::now();
        let installed = stage(ctx, job, deps_extra, started).map_err(|e| {
            let hint = e
                .hint()
                .map(|h| format!(" (hint: {h})"))
                .unwrap_or_default();
            format!("{e}{hint}")
        })?;
        phases.stage = stage_start.elapsed().as_secs_f64();
        Ok(installed)
    })();
    r.seconds = start.elapsed().as_secs_f64();
    match outcome {
        Ok(installed) => {
            r.status = Status::Built;
            r.staged = Some(ctx.staged(name));
            r.installed = installed;
            r.phases = Some(phases);
            r.notes.extend(ctx.installer.notes.iter().cloned());
            r.notes.extend(ctx.k.btf_note());
        }
        Err(_) if missing_exports.is_some() => {
            r.status = Status::Refused;
            r.refusal = Some(super::ctx::refusal(
                code::MISSING_EXPORTS,
                missing_exports.unwrap_or_default(),
                "add the package that ships the module exporting them to `depends`; if its module is built without the options this package sets, that package needs them too",
            ));
        }
        Err(e) => r.error = Some(e),
    }
    (r, wrote_read_only)
}

/// One make call of a unit: its command line announced and logged, Kbuild's progress lines
/// passed on and timed into `phases`; the command line, make's status and its output.
#[allow(clippy::too_many_arguments)]
fn make_unit(
    ctx: &Ctx,
    job: &Job,
    unit: &Unit,
    extra: &[Utf8PathBuf],
    slots: &Slots,
    log: &mut std::fs::File,
    phases: &mut Phases,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<(String, Option<std::process::ExitStatus>, String), String> {
    let name = &job.pkg.name;
    let args = make_args(ctx, job, unit, extra);
    let line = process::display("make", &args);
    emit(Event::Started {
        package: name.clone(),
        command: line.clone(),
    });
    let _ = writeln!(log, "$ {line}");
    let make_start = Instant::now();
    let (first_out, modpost_at, after_modpost) =
        (Cell::new(None), Cell::new(None), Cell::new(None));
    let pkg_dir = ctx.pkg_dir(name);
    super::common_obj::take(ctx, job, unit);
    let (status, text) = run_make(&args, &line, slots, ctx, &pkg_dir, log, &|l| {
        let now = Some(Instant::now());
        if l.starts_with("MODPOST") {
            modpost_at.set(now);
        } else if modpost_at.get().is_some() {
            if after_modpost.get().is_none() {
                after_modpost.set(now);
            }
        } else if first_out.get().is_none() {
            first_out.set(now);
        }
        emit(Event::Output {
            package: name.clone(),
            line: l.to_string(),
        })
    })?;
    if let Some(p) = &ctx.probes {
        p.merge(&pkg_dir);
    }
    if status.is_some_and(|s| s.success()) {
        super::common_obj::keep(ctx, job, unit);
    }
    phases.add_make(
        make_start,
        first_out.get(),
        modpost_at.get(),
        after_modpost.get(),
        Instant::now(),
    );
    Ok((line, status, text))
}

/// Run one make with the shared jobserver, copying its output to `log` and Kbuild's progress
/// lines to `progress`; its status (`None` when it could not be waited for) and output.
pub(super) fn run_make(
    args: &[String],
    line: &str,
    slots: &Slots,
    ctx: &Ctx,
    pkg_dir: &Utf8Path,
    log: &mut std::fs::File,
    progress: &dyn Fn(&str),
) -> Result<(Option<std::process::ExitStatus>, String), String> {
    let client = slots.client.clone();
    let protected = ctx.protected.clone();
    let mut expr = kbuild_install::selftest::make_expr("make", args);
    let probes = ctx
        .probes
        .as_ref()
        .map(|p| p.env(pkg_dir))
        .unwrap_or_default();
    for (k, v) in ctx.launcher_env().into_iter().chain(probes) {
        expr = expr.env(k, v);
    }
    let expr = expr.before_spawn(move |cmd| {
        client.configure_make(cmd);
        // S and K read-only for make and everything it runs.
        let paths: Vec<&Utf8Path> = protected.iter().map(|p| p.as_path()).collect();
        kbuild_install::sandbox::protect(cmd, &paths);
        Ok(())
    });
    let (reader, _guard) =
        process::start_reader(expr).map_err(|e| format!("cannot start `{line}`: {e}"))?;
    let mut reader = std::io::BufReader::new(reader);
    let mut buf = String::new();
    let mut text = String::new();
    loop {
        buf.clear();
        match reader.read_line(&mut buf) {
            Ok(0) => break,
            Ok(_) => {
                let _ = log.write_all(buf.as_bytes());
                text.push_str(&buf);
                let l = buf.trim_end();
                if is_progress_line(l) {
                    progress(l.trim());
                }
            }
            // A non-UTF-8 line: keep going.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
            Err(e) => return Err(format!("reading `{line}`: {e}")),
        }
    }
    let handle = reader.into_inner();
    Ok((handle.try_wait().ok().flatten().map(|o| o.status), text))
}

/// Whether modpost failed only for symbols that modules of `pending` units export in the base
/// build's Module.symvers, or a pending unit builds a module the base did not make.
pub(super) fn needs_later_unit(
    ctx: &Ctx,
    log: &str,
    pending: &std::collections::VecDeque<Unit>,
) -> bool {
    let needed: BTreeSet<&str> = UNDEF
        .captures_iter(log)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    if needed.is_empty() {
        return false;
    }
    let later: BTreeSet<String> = pending
        .iter()
        .flat_map(|u| {
            u.goals
                .iter()
                .map(move |g| format!("{}/{}", u.dir, g.trim_end_matches(".ko")))
        })
        .collect();
    let Ok(base) = std::fs::read_to_string(ctx.k.path.join("Module.symvers")) else {
        return false;
    };
    let mut base_modules = BTreeSet::new();
    let exported_later: BTreeSet<&str> = base
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_, sym, module) = (f.next()?, f.next()?, f.next()?);
            base_modules.insert(module);
            later.contains(module).then_some(sym)
        })
        .collect();
    // A later module the base build did not make (the package's variant adds it) may export
    // anything: modpost tells after it is built.
    needed.iter().all(|s| exported_later.contains(s))
        || later.iter().any(|m| !base_modules.contains(m.as_str()))
}

/// Kbuild's short-format progress lines (`  CC [M]  drivers/net/dummy.o`).
pub(super) fn is_progress_line(l: &str) -> bool {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\s{2}[A-Z][A-Z0-9_]{1,8}(\s\[M\])?\s+\S").unwrap());
    RE.is_match(l)
}

/// modpost's complaint about a symbol nobody exports: the symbol, the module.
static UNDEF: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"ERROR: modpost: "([^"]+)" \[([^\]]+)\] undefined!"#).unwrap());

/// Whether make failed only in modpost, for undefined symbols (everything compiled).
fn only_undefined_symbols(log: &str) -> bool {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR: ") || l.contains(": error: ") || l.contains("Error 1"))
        .filter(|l| !l.starts_with("make"))
        .collect();
    !errors.is_empty() && errors.iter().all(|l| UNDEF.is_match(l))
}

/// A failure in words: modpost's complaints explained, else the first compiler errors.
pub(super) fn explain_failure(log: &str, ctx: &Ctx) -> String {
    static TWICE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"ERROR: modpost: (.*exported twice.*)").unwrap());
    let mut out = Vec::new();
    for c in UNDEF.captures_iter(log).take(5) {
        out.push(format!(
            "module {} needs symbol `{}`, which neither the base kernel's Module.symvers nor a dependency provides{}",
            &c[2],
            &c[1],
            provider_hint(ctx, &c[1])
        ));
    }
    static LICENSE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"ERROR: modpost: (missing MODULE_LICENSE\(\) in \S+)").unwrap()
    });
    for c in LICENSE.captures_iter(log).take(3) {
        out.push(format!(
            "{} (the object was compiled as built-in code: its CONFIG symbol is not =m in the configuration this build saw)",
            &c[1]
        ));
    }
    for c in TWICE.captures_iter(log).take(3) {
        out.push(format!(
            "{} (the module duplicates code the kernel already has)",
            &c[1]
        ));
    }
    for p in read_only_writes(log).iter().take(3) {
        out.push(format!(
            "the build tried to write `{p}` (in the package's tree `{}`), which leads into a tree extmod keeps read-only (the source tree, the Kbuild tree or the trees it was made from); nothing was written there",
            ctx.objdir
        ));
    }
    if out.is_empty() {
        out = log
            .lines()
            .filter(|l| {
                l.contains("error:")
                    || l.contains("Error ")
                    || l.starts_with("ERROR")
                    || l.contains("No rule to make target")
            })
            .take(4)
            .map(str::to_string)
            .collect();
    }
    if out.is_empty() {
        out.push(log.lines().rev().take(3).collect::<Vec<_>>().join(" | "));
    }
    out.join("; ")
}

/// The paths a make's output says could not be written: "Read-only file system".
fn read_only_writes(log: &str) -> Vec<String> {
    static READ_ONLY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?m)[`'‘]([^'’`\n]+)[’'`]: Read-only file system|(\S+): Read-only file system")
            .unwrap()
    });
    READ_ONLY
        .captures_iter(log)
        .filter_map(|c| c.get(1).or(c.get(2)).map(|m| m.as_str().to_string()))
        .collect()
}

/// Whether make failed writing in a directory below one of the package's module directories
/// (relative to the overlay `tree`, make's directory, or absolute), where the overlay may link
/// a directory that none of the package's objects is in to the read-only source tree.
fn wrote_below_module_dir(log: &str, tree: &Utf8Path, write_dirs: &BTreeSet<String>) -> bool {
    read_only_writes(log).iter().any(|p| {
        let p = p.strip_prefix(tree.as_str()).unwrap_or(p);
        let p = p.trim_start_matches('/').trim_start_matches("./");
        write_dirs
            .iter()
            .filter_map(|d| p.strip_prefix(d.as_str())?.strip_prefix('/'))
            .any(|r| r.contains('/'))
    })
}

/// Which package built so far exports `sym`.
pub(super) fn provider_hint(ctx: &Ctx, sym: &str) -> String {
    let Ok(rd) = ctx.objdir.read_dir_utf8() else {
        return String::new();
    };
    for e in rd.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path().join("Module.symvers"))
            && text.lines().any(|l| l.split('\t').nth(1) == Some(sym))
        {
            return format!(
                " (package `{}` exports it: add it to `depends`)",
                e.file_name()
            );
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_below_a_module_directory_is_told_from_others() {
        let dirs = BTreeSet::from(["drivers/net".to_string()]);
        let tree = Utf8Path::new("/d/pkg/tree");
        let sh = "/bin/sh: 1: cannot create drivers/net/wan/gen.h: Read-only file system\n";
        assert!(wrote_below_module_dir(sh, tree, &dirs));
        let abs = "touch: cannot touch '/d/pkg/tree/drivers/net/wan/x': Read-only file system\n";
        assert!(wrote_below_module_dir(abs, tree, &dirs));
        // Into include/ (a hostile Makefile), or a sibling directory: no retry.
        let inc = "touch: cannot touch './include/linux/X': Read-only file system\n";
        assert!(!wrote_below_module_dir(inc, tree, &dirs));
        let sib = "cannot create drivers/netfoo/x: Read-only file system\n";
        assert!(!wrote_below_module_dir(sib, tree, &dirs));
        // The module directory itself is real: a failure there is not the overlay's doing.
        let own = "cannot create drivers/net/x: Read-only file system\n";
        assert!(!wrote_below_module_dir(own, tree, &dirs));
        assert!(!wrote_below_module_dir("error: x\n", tree, &dirs));
    }

    #[test]
    fn only_modposts_undefined_symbols_count_as_missing_exports() {
        let undef = "  MODPOST drivers/net/ppp/Module.symvers\n\
ERROR: modpost: \"arc4_setkey\" [drivers/net/ppp/ppp_mppe.ko] undefined!\n\
make[2]: *** [scripts/Makefile.modpost:145: drivers/net/ppp/Module.symvers] Error 1\n";
        assert!(only_undefined_symbols(undef));
        let compile = "drivers/net/x.c:3:1: error: expected ';'\n\
ERROR: modpost: \"a\" [drivers/net/x.ko] undefined!\n";
        assert!(!only_undefined_symbols(compile));
        let twice = "ERROR: modpost: lib/lzo/lzo_compress: 'lzo1x_1_compress' exported twice.\n";
        assert!(!only_undefined_symbols(twice));
        assert!(!only_undefined_symbols(
            "make: *** No rule to make target\n"
        ));
    }

    #[test]
    fn progress_lines_are_kbuilds_short_output() {
        assert!(is_progress_line("  CC [M]  drivers/net/dummy.o"));
        assert!(is_progress_line("  MODPOST drivers/net/Module.symvers"));
        assert!(is_progress_line("  LD [M]  drivers/net/dummy.ko"));
        assert!(!is_progress_line("make: Entering directory '/x'"));
        assert!(!is_progress_line("drivers/net/dummy.c:1:1: error: x"));
    }
}
