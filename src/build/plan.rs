//! Planning one package: fresh from its last build, refused with a reason, or a job with
//! its modules, configuration variant and make calls.

use super::ctx::{Ctx, refusal};
use super::job::{Job, Plan, Unit};
use super::stage::{STATE, STATE_FORMAT, State};
use crate::error::{Error, code};
use crate::events::{PackageResult, Refusal, Status};
use crate::package::{KconfigReq, Package};
use crate::symbols::{SymType, module_dir};
use camino::Utf8Path;
use kbuild_install::Error as KError;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

pub(super) fn package_key(ctx: &Ctx, pkg: &Package, inherited: &[KconfigReq]) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(pkg).expect("package serializes"));
    for r in inherited {
        h.update(format!("{r}\0").as_bytes());
    }
    h.update(ctx.k.identity.as_bytes());
    h.update(ctx.k.path.as_str().as_bytes());
    h.update(ctx.src.path.as_str().as_bytes());
    // A package built with --allow-kernel-change is not fresh for a run without it.
    h.update([u8::from(ctx.allow_kernel_change), u8::from(ctx.external)]);
    h.update(ctx.installer.identity.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(STATE_FORMAT.to_le_bytes());
    // Make variables from the environment reach the command lines (KCFLAGS, LLVM, CC, ...).
    for (k, v) in crate::guard::command_line_env() {
        h.update(format!("{k}={v}\0").as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// What a package's kconfig asks of the configuration, checked against the base.
struct Requests {
    notes: Vec<String>,
    /// Requests the base configuration does not satisfy: they need a variant.
    needs_variant: Vec<KconfigReq>,
    /// Tristate symbols whose modules the package builds (checked against the base build when
    /// the base already builds them).
    module_syms: Vec<String>,
    /// Symbols of `needs_variant` that come from the package's dependencies.
    inherited: BTreeSet<String>,
}

/// Why a package is not built, when planning decides it.
enum Stop {
    Refused(Refusal),
    /// Its configuration variant could not be made (this package fails, the run goes on).
    Failed(String),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Self {
        Stop::Refused(r)
    }
}

/// Plan one package: fresh (same inputs as its last build), refused or failed with the reason,
/// or a job to build.
pub(super) fn plan(
    ctx: &Ctx,
    pkg: &Package,
    inherited: &[KconfigReq],
    cache: &mut crate::fresh::Cache,
    force: bool,
) -> Result<Plan, Error> {
    let key = package_key(ctx, pkg, inherited);
    let changed = match last_build(ctx, pkg, &key, cache, force) {
        Ok(fresh) => return Ok(Plan::Fresh(fresh)),
        Err(changed) => changed,
    };
    match job(ctx, pkg, inherited, key, changed) {
        Ok(job) => Ok(Plan::Build(job)),
        Err(Ok(Stop::Refused(r))) => {
            let mut res = PackageResult::new(&pkg.name, Status::Refused);
            res.refusal = Some(r);
            Ok(Plan::Refused(res))
        }
        Err(Ok(Stop::Failed(e))) => {
            let mut res = PackageResult::new(&pkg.name, Status::Failed);
            res.error = Some(e);
            Ok(Plan::Failed(res))
        }
        Err(Err(e)) => Err(e),
    }
}

/// The package's last build when it is fresh: same inputs (by content) and its staged modules
/// still there. Otherwise the inputs that changed since (real paths; none when there was no
/// usable record).
fn last_build(
    ctx: &Ctx,
    pkg: &Package,
    key: &str,
    cache: &mut crate::fresh::Cache,
    force: bool,
) -> Result<PackageResult, Vec<String>> {
    let Ok(text) = std::fs::read_to_string(ctx.pkg_dir(&pkg.name).join(STATE)) else {
        return Err(Vec::new());
    };
    let Ok(state) = serde_json::from_str::<State>(&text) else {
        return Err(Vec::new());
    };
    if state.format != STATE_FORMAT || state.key != key {
        return Err(Vec::new());
    }
    let changed = crate::fresh::changed(&state.inputs, cache);
    let staged = ctx.staged(&pkg.name);
    if force
        || !changed.is_empty()
        || !state
            .installed
            .iter()
            .all(|m| staged.join(&m.path).is_file())
    {
        return Err(changed);
    }
    let mut r = PackageResult::new(&pkg.name, Status::Fresh);
    r.modules = state.modules;
    r.notes = state.notes;
    r.installed = state.installed;
    r.staged = Some(staged);
    Ok(r)
}

/// The job for a package that is not fresh: its requests, variant, modules and make calls.
fn job(
    ctx: &Ctx,
    pkg: &Package,
    inherited: &[KconfigReq],
    key: String,
    changed: Vec<String>,
) -> Result<Job, Result<Stop, Error>> {
    let mut req = requests(ctx, pkg).map_err(|r| Ok(r.into()))?;
    inherit(ctx, &mut req, pkg, inherited);
    let variant = if req.needs_variant.is_empty() {
        None
    } else {
        Some(variant(ctx, pkg, &mut req)?)
    };
    let km = ctx.kmap(
        &req.module_syms,
        variant
            .as_ref()
            .map(|v: &crate::variant::Variant| v.dir.as_path()),
    );
    let modules =
        modules(ctx, pkg, &km, &req.module_syms, &mut req.notes).map_err(|r| Ok(r.into()))?;
    let (units, write_dirs) = units(&modules, &km);
    Ok(Job {
        pkg: pkg.clone(),
        modules: modules.into_iter().collect(),
        units,
        key,
        notes: req.notes,
        variant,
        write_dirs,
        changed,
        plan_seconds: 0.0,
        all_depends: Vec::new(),
    })
}

/// The configuration of the package's dependencies (their kconfig, transitively) joins its
/// own: its modules are compiled against the configuration its dependencies' modules are
/// (OpenWrt merges every selected package's KCONFIG into one configuration). Entries this
/// kernel does not have, or that the base already satisfies, add nothing; the package's own
/// setting of a symbol wins.
fn inherit(ctx: &Ctx, req: &mut Requests, pkg: &Package, inherited: &[KconfigReq]) {
    let index = ctx.index();
    let own: BTreeSet<&str> = pkg.kconfig.iter().map(|r| r.symbol.as_str()).collect();
    let mut added = Vec::new();
    for r in inherited {
        let sym = &r.symbol;
        let (base, ty) = (ctx.k.value(sym), index.sym_type(sym));
        if own.contains(sym.as_str())
            || (ty.is_none() && base.is_none())
            || req.needs_variant.iter().any(|n| n.symbol == *sym)
        {
            continue;
        }
        // A dependency's module that the base builds in: its code is there already.
        if r.value.is_none() && base == Some("y") {
            continue;
        }
        let (wanted, satisfied) = request_value(r, ty == Some(SymType::Tristate), base);
        if !satisfied {
            let n = KconfigReq {
                symbol: sym.clone(),
                value: Some(wanted),
            };
            added.push(n.to_string());
            req.inherited.insert(n.symbol.clone());
            req.needs_variant.push(n);
        }
    }
    if !added.is_empty() {
        req.notes.push(format!(
            "built with its dependencies' configuration: {}",
            added.join(", ")
        ));
    }
}

/// The value a request asks for (a bare symbol: a module if tristate, else on) and whether the
/// base configuration already has it.
fn request_value(req: &KconfigReq, tristate: bool, base: Option<&str>) -> (String, bool) {
    let wanted = req
        .value
        .clone()
        .unwrap_or_else(|| if tristate { "m".into() } else { "y".into() });
    let satisfied = if wanted == "n" {
        base.is_none()
    } else {
        base == Some(wanted.as_str())
    };
    (wanted, satisfied)
}

/// Check each kconfig request against the kernel and the base configuration.
fn requests(ctx: &Ctx, pkg: &Package) -> Result<Requests, Refusal> {
    let index = ctx.index();
    let mut notes = Vec::new();
    let mut needs_variant = Vec::new();
    let mut module_syms = Vec::new();
    let unknown = unknown_symbols(ctx, pkg)?;
    for req in &pkg.kconfig {
        if let Err(e) = crate::variant::check_request(req) {
            return Err(refusal(
                code::BAD_PACKAGES,
                e.to_string().replace("package file `--set`: ", ""),
                "write one value per kconfig entry",
            ));
        }
        let sym = &req.symbol;
        let base = ctx.k.value(sym);
        let ty = index.sym_type(sym);
        if unknown.contains(&req.to_string()) {
            notes.push(format!(
                "{req} ignored: not a Kconfig symbol of this kernel ({})",
                ctx.src.kernelversion
            ));
            continue;
        }
        if ty.is_none() && base.is_none() && req.value.as_deref() == Some("n") {
            // Kconfig ignores settings of symbols this kernel does not have (OpenWrt packages
            // carry such `=n` entries across kernel versions).
            notes.push(format!(
                "CONFIG_{sym}=n ignored: not a symbol of this kernel"
            ));
            continue;
        }
        if ty.is_none() && base.is_none() {
            return Err(refusal(
                code::UNKNOWN_SYMBOL,
                format!(
                    "CONFIG_{sym} is not a Kconfig symbol of this kernel ({})",
                    ctx.src.kernelversion
                ),
                "check the spelling; `grep -r 'config NAME' --include='Kconfig*'` in the source tree finds symbols",
            ));
        }
        let tristate = ty == Some(SymType::Tristate);
        let (wanted, satisfied) = request_value(req, tristate, base);
        if req.value.is_none() && tristate && base == Some("y") {
            return Err(refusal(
                code::BUILT_IN,
                format!(
                    "CONFIG_{sym} is built into the base kernel (=y): its code is in vmlinux, not in a module"
                ),
                "nothing to build; the running kernel already has it",
            ));
        }
        // An option the base already has: nothing to build. One it lacks needs a variant, whose
        // verdict (module-local, or a change of the kernel itself) decides.
        if req.value.is_none()
            && !tristate
            && pkg.kconfig.len() == 1
            && pkg.files.is_empty()
            && base == Some("y")
        {
            return Err(refusal(
                code::NO_MODULE,
                format!(
                    "CONFIG_{sym} is a {} option: it builds no module",
                    ty.map_or("non-tristate".to_string(), |t| format!("{t:?}")
                        .to_lowercase())
                ),
                "name the tristate symbol that builds the module (e.g. CONFIG_BLK_DEV_LOOP for loop.ko)",
            ));
        }
        if !satisfied {
            needs_variant.push(KconfigReq {
                symbol: sym.clone(),
                value: Some(wanted.clone()),
            });
        }
        if wanted == "m" {
            module_syms.push(sym.clone());
        }
    }
    Ok(Requests {
        notes,
        needs_variant,
        module_syms,
        inherited: BTreeSet::new(),
    })
}

/// The package's kconfig symbols this kernel does not have, which `ignore_unknown` leaves out
/// as OpenWrt's Kconfig merge does; refused when nothing would be left to enable its modules.
fn unknown_symbols(ctx: &Ctx, pkg: &Package) -> Result<Vec<String>, Refusal> {
    let index = ctx.index();
    let unknown: Vec<String> = pkg
        .kconfig
        .iter()
        .filter(|r| {
            pkg.ignore_unknown
                && r.value.as_deref() != Some("n")
                && index.sym_type(&r.symbol).is_none()
                && ctx.k.value(&r.symbol).is_none()
        })
        .map(|r| r.to_string())
        .collect();
    // Every symbol that would enable the package's modules is unknown (OpenWrt: an empty
    // package), or nothing is left to build at all.
    let plain: Vec<String> = pkg
        .kconfig
        .iter()
        .filter(|r| r.value.is_none())
        .map(|r| r.to_string())
        .collect();
    let all_plain_unknown = !plain.is_empty() && plain.iter().all(|p| unknown.contains(p));
    let nothing_left = unknown.len() == pkg.kconfig.len() && pkg.files.is_empty();
    if !unknown.is_empty() && (all_plain_unknown || nothing_left) {
        return Err(refusal(
            code::UNKNOWN_SYMBOL,
            format!(
                "none of its kconfig symbols is a Kconfig symbol of this kernel ({}): {}",
                ctx.src.kernelversion,
                unknown.join(", ")
            ),
            "OpenWrt generates such a package empty; check the symbols against the kernel version",
        ));
    }
    Ok(unknown)
}

/// The configuration variant the package's requests need, made by Kconfig, and what it
/// changes: refused when Kconfig did not apply a request or the variant changes the kernel
/// itself (unless `--allow-kernel-change`).
fn variant(
    ctx: &Ctx,
    pkg: &Package,
    req: &mut Requests,
) -> Result<crate::variant::Variant, Result<Stop, Error>> {
    let index = ctx.index();
    let (needs_variant, notes, module_syms) =
        (&req.needs_variant, &mut req.notes, &mut req.module_syms);
    if crate::variant::variant_manifest(&ctx.k).is_err() {
        let list: Vec<String> = needs_variant.iter().map(|r| r.to_string()).collect();
        return Err(Ok(Stop::Refused(refusal(
            code::NEEDS_VARIANT,
            format!(
                "{} not in the base configuration, and the Kbuild tree cannot make configuration variants",
                list.join(", ")
            ),
            "make the Kbuild tree with `extmod kbuild-install` (it ships Kconfig and conf)",
        ))));
    }
    let reqs: Vec<KconfigReq> = pkg
        .kconfig
        .iter()
        .map(|r| {
            needs_variant
                .iter()
                .find(|n| n.symbol == r.symbol)
                .cloned()
                .unwrap_or_else(|| r.clone())
        })
        .filter(|r| r.value.is_some() || needs_variant.iter().any(|n| n.symbol == r.symbol))
        .chain(
            needs_variant
                .iter()
                .filter(|n| req.inherited.contains(&n.symbol))
                .cloned(),
        )
        .collect();
    let v = crate::variant::generate(
        &crate::variant::Inputs {
            k: &ctx.k,
            src: Some(&ctx.src.path),
            index: Some(index),
            // A dry run writes nothing into D: its variants go to the user's cache.
            cache: &if ctx.dry_run {
                crate::cache::dir("variants")
            } else {
                ctx.objdir.join(".variants")
            },
        },
        &reqs,
    );
    // A variant that cannot be made fails this package only.
    let v = match v {
        Ok(v) => v,
        Err(Error::Kbuild(KError::Interrupted)) => return Err(Err(KError::Interrupted.into())),
        Err(e) => {
            return Err(Ok(Stop::Failed(format!(
                "cannot make its configuration variant: {e}"
            ))));
        }
    };
    // A dependency's setting Kconfig does not apply here did not apply for the dependency
    // either: the configurations still agree.
    let (theirs, ours): (Vec<_>, Vec<_>) = v.not_applied.iter().partition(|n| {
        n.request
            .strip_prefix("CONFIG_")
            .and_then(|r| r.split('=').next())
            .is_some_and(|s| req.inherited.contains(s))
    });
    for n in theirs {
        notes.push(format!(
            "its dependencies' {} does not apply: {}",
            n.request, n.why
        ));
    }
    if !ours.is_empty() {
        let why: Vec<String> = ours
            .iter()
            .map(|n| format!("{}: {}", n.request, n.why))
            .collect();
        return Err(Ok(Stop::Refused(refusal(
            code::NOT_APPLIED,
            format!("Kconfig did not apply {}", why.join("; ")),
            "enable the missing dependencies in the package's kconfig, or ask for a value the symbol can take",
        ))));
    }
    // Toolchain drift compiles the module with values the kernel was not built with.
    let affecting: Vec<&crate::variant::Change> = v
        .kernel_affecting()
        .into_iter()
        .chain(v.drift.iter())
        .collect();
    if !affecting.is_empty() {
        let list: Vec<String> = affecting
            .iter()
            .map(|c| {
                format!(
                    "CONFIG_{} {} -> {} ({})",
                    c.symbol,
                    c.old.as_deref().unwrap_or("n"),
                    c.new.as_deref().unwrap_or("n"),
                    c.why
                )
            })
            .collect();
        if !ctx.allow_kernel_change {
            return Err(Ok(Stop::Refused(refusal(
                code::KERNEL_AFFECTING,
                format!(
                    "the configuration variant changes the kernel itself: {}",
                    list.join("; ")
                ),
                "the modules would not match the running kernel; --allow-kernel-change builds them anyway, labelled",
            ))));
        }
        notes.push(format!(
            "built with --allow-kernel-change: does NOT match the running kernel: {}",
            list.join("; ")
        ));
    }
    for s in &v.new_modules {
        if !module_syms.contains(s) {
            notes.push(if pkg.files.is_empty() {
                format!(
                    "CONFIG_{s}=m is enabled by the variant (selected); its modules are built too"
                )
            } else {
                format!(
                    "CONFIG_{s}=m is enabled by the variant (selected); only the package's files are built"
                )
            });
            module_syms.push(s.clone());
        }
    }
    Ok(v)
}

/// The modules the package builds: each symbol's (as Kbuild evaluates the Makefiles under the
/// package's configuration) unless it names its `files`.
fn modules(
    ctx: &Ctx,
    pkg: &Package,
    km: &crate::modmap::Kmap,
    module_syms: &[String],
    notes: &mut Vec<String>,
) -> Result<BTreeSet<String>, Refusal> {
    let mut modules = BTreeSet::new();
    for sym in module_syms {
        let derived = km.paths(sym);
        let in_base = ctx.k.value(sym) == Some("m");
        let mut found = false;
        for m in derived {
            if in_base && ctx.k.built_module(&m) == Some(false) {
                notes.push(format!(
                    "CONFIG_{sym}: Makefiles name {m}, but the base build did not make it; left out"
                ));
                continue;
            }
            found = true;
            if pkg.files.is_empty() {
                modules.insert(m);
            }
        }
        if !found && pkg.files.is_empty() {
            return Err(refusal(
                code::NO_MODULE,
                format!(
                    "CONFIG_{sym} builds no module that extmod can find in the kernel's Makefiles"
                ),
                "name the module with `files` in a package file",
            ));
        }
    }
    for f in &pkg.files {
        // A module no Makefile of its directory mentions cannot be built: say so before make.
        let dir = module_dir(f);
        let obj = format!(
            "{}.o",
            f.rsplit('/').next().unwrap_or(f).trim_end_matches(".ko")
        );
        let mentioned = ["Makefile", "Kbuild"].iter().any(|mk| {
            std::fs::read_to_string(ctx.src.path.join(&dir).join(mk))
                .is_ok_and(|t| t.contains(&obj))
        });
        if !mentioned {
            return Err(refusal(
                code::NO_MODULE,
                format!("no Makefile in {dir}/ builds {obj}: module '{f}' is missing"),
                "check the path in `files` against the kernel tree (`extmod which CONFIG_X` lists what a symbol builds)",
            ));
        }
    }
    modules.extend(pkg.files.iter().cloned());
    if modules.is_empty() {
        return Err(refusal(
            code::NO_MODULE,
            format!("package {} builds no module", pkg.name),
            "give it a kconfig symbol that is =m in the base config, or `files`",
        ));
    }
    Ok(modules)
}

/// One make call per directory of the package's modules, providers first, and the
/// directories the build writes into.
fn units(modules: &BTreeSet<String>, km: &crate::modmap::Kmap) -> (Vec<Unit>, BTreeSet<String>) {
    let mut by_dir: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in modules {
        let dir = module_dir(m).to_string();
        let goal = Utf8Path::new(m).file_name().unwrap_or(m).to_string();
        by_dir.entry(dir).or_default().push(goal);
    }
    let mut units: Vec<Unit> = by_dir
        .into_iter()
        .map(|(dir, goals)| Unit { dir, goals })
        .collect();
    // Providers first: each unit's modpost must see the exports of the package's other units
    // it uses (crypto/des_generic.ko needs lib/crypto/libdes.ko, drivers/block/zram/zram.ko
    // needs mm/zsmalloc.ko). A first guess, which saves make runs: libraries, then core
    // directories, then the rest (stable sort); a unit modpost sends back is retried later.
    units.sort_by_key(|u| unit_rank(&u.dir));
    let mut write_dirs: BTreeSet<String> = units.iter().map(|u| u.dir.clone()).collect();
    for m in modules {
        let objects = km.objects(m).map_or_else(
            || vec![format!("{}.o", m.trim_end_matches(".ko"))],
            <[String]>::to_vec,
        );
        for o in objects {
            let o = o.split(' ').next().unwrap_or(&o);
            if let Some(d) = crate::kbuild_eval::normalize_within(module_dir(o).as_str()) {
                write_dirs.insert(d);
            }
        }
    }
    (units, write_dirs)
}

/// Build order of a package's directories: libraries (0), core code other modules build on
/// (1), everything else (2).
pub(super) fn unit_rank(dir: &str) -> u8 {
    let top = dir.split('/').next().unwrap_or(dir);
    if top == "lib" || dir.contains("/lib/") || dir.ends_with("/lib") {
        0
    } else if ["mm", "kernel", "crypto", "block", "security"].contains(&top)
        || dir.starts_with("net/core")
        || dir.starts_with("drivers/base")
    {
        1
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_directories_are_built_first() {
        let mut dirs = vec!["drivers/block/zram", "mm", "crypto", "lib/crypto", "fs/nls"];
        dirs.sort_by_key(|d| unit_rank(d));
        assert_eq!(
            dirs,
            ["lib/crypto", "mm", "crypto", "drivers/block/zram", "fs/nls"]
        );
    }
}
