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

pub(super) fn package_key(ctx: &Ctx, pkg: &Package) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(pkg).expect("package serializes"));
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

pub(super) fn plan(
    ctx: &Ctx,
    pkg: &Package,
    cache: &mut crate::fresh::Cache,
    force: bool,
) -> Result<Plan, Error> {
    let key = package_key(ctx, pkg);
    // Fresh: same inputs (by content) as the last successful build, and its staged modules
    // still there.
    let mut changed = Vec::new();
    if let Ok(text) = std::fs::read_to_string(ctx.pkg_dir(&pkg.name).join(STATE))
        && let Ok(state) = serde_json::from_str::<State>(&text)
        && state.format == STATE_FORMAT
        && state.key == key
    {
        changed = crate::fresh::changed(&state.inputs, cache);
        let staged = ctx.staged(&pkg.name);
        if !force
            && changed.is_empty()
            && state
                .installed
                .iter()
                .all(|m| staged.join(&m.path).is_file())
        {
            let mut r = PackageResult::new(&pkg.name, Status::Fresh);
            r.modules = state.modules;
            r.notes = state.notes;
            r.installed = state.installed;
            r.staged = Some(ctx.staged(&pkg.name));
            return Ok(Plan::Done(r));
        }
    }
    let refused = |r: Refusal| {
        let mut res = PackageResult::new(&pkg.name, Status::Refused);
        res.refusal = Some(r);
        Ok(Plan::Done(res))
    };
    let index = ctx.index();
    let mut modules = BTreeSet::new();
    let mut notes = Vec::new();
    // Requests the base configuration does not satisfy: they need a variant.
    let mut needs_variant = Vec::new();
    // Tristate symbols whose modules the package builds (checked against the base build when
    // the base already builds them).
    let mut module_syms = Vec::new();
    // OpenWrt's Kconfig merge ignores symbols this kernel does not have (`ignore_unknown`).
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
        return refused(refusal(
            code::UNKNOWN_SYMBOL,
            format!(
                "none of its kconfig symbols is a Kconfig symbol of this kernel ({}): {}",
                ctx.src.kernelversion,
                unknown.join(", ")
            ),
            "OpenWrt generates such a package empty; check the symbols against the kernel version",
        ));
    }
    for req in &pkg.kconfig {
        if let Err(e) = crate::variant::check_request(req) {
            return refused(refusal(
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
            return refused(refusal(
                code::UNKNOWN_SYMBOL,
                format!(
                    "CONFIG_{sym} is not a Kconfig symbol of this kernel ({})",
                    ctx.src.kernelversion
                ),
                "check the spelling; `grep -r 'config NAME' --include='Kconfig*'` in the source tree finds symbols",
            ));
        }
        let tristate = ty == Some(SymType::Tristate);
        // A bare symbol asks for a module (tristate) or for the option to be on (bool).
        let wanted = req
            .value
            .clone()
            .unwrap_or_else(|| if tristate { "m".into() } else { "y".into() });
        if req.value.is_none() && tristate && base == Some("y") {
            return refused(refusal(
                code::BUILT_IN,
                format!(
                    "CONFIG_{sym} is built into the base kernel (=y): its code is in vmlinux, not in a module"
                ),
                "nothing to build; the running kernel already has it",
            ));
        }
        if req.value.is_none() && !tristate && pkg.kconfig.len() == 1 && pkg.files.is_empty() {
            return refused(refusal(
                code::NO_MODULE,
                format!(
                    "CONFIG_{sym} is a {} option: it builds no module",
                    ty.map_or("non-tristate".to_string(), |t| format!("{t:?}")
                        .to_lowercase())
                ),
                "name the tristate symbol that builds the module (e.g. CONFIG_BLK_DEV_LOOP for loop.ko)",
            ));
        }
        let satisfied = if wanted == "n" {
            base.is_none()
        } else {
            base == Some(wanted.as_str())
        };
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
    let mut variant = None;
    if !needs_variant.is_empty() {
        if crate::variant::variant_manifest(&ctx.k).is_err() {
            let list: Vec<String> = needs_variant.iter().map(|r| r.to_string()).collect();
            return refused(refusal(
                code::NEEDS_VARIANT,
                format!(
                    "{} not in the base configuration, and the Kbuild tree cannot make configuration variants",
                    list.join(", ")
                ),
                "make the Kbuild tree with `extmod kbuild-install` (it ships Kconfig and conf)",
            ));
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
            Err(Error::Kbuild(KError::Interrupted)) => return Err(KError::Interrupted.into()),
            Err(e) => {
                let mut res = PackageResult::new(&pkg.name, Status::Failed);
                res.error = Some(format!("cannot make its configuration variant: {e}"));
                return Ok(Plan::Done(res));
            }
        };
        if !v.not_applied.is_empty() {
            let why: Vec<String> = v
                .not_applied
                .iter()
                .map(|n| format!("{}: {}", n.request, n.why))
                .collect();
            return refused(refusal(
                code::NOT_APPLIED,
                format!("Kconfig did not apply {}", why.join("; ")),
                "enable the missing dependencies in the package's kconfig, or ask for a value the symbol can take",
            ));
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
                return refused(refusal(
                    code::KERNEL_AFFECTING,
                    format!(
                        "the configuration variant changes the kernel itself: {}",
                        list.join("; ")
                    ),
                    "the modules would not match the running kernel; --allow-kernel-change builds them anyway, labelled",
                ));
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
        variant = Some(v);
    }
    let km = ctx.kmap(
        &module_syms,
        variant
            .as_ref()
            .map(|v: &crate::variant::Variant| v.dir.as_path()),
    );
    for sym in &module_syms {
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
            return refused(refusal(
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
            return refused(refusal(
                code::NO_MODULE,
                format!("no Makefile in {dir}/ builds {obj}: module '{f}' is missing"),
                "check the path in `files` against the kernel tree (`extmod which CONFIG_X` lists what a symbol builds)",
            ));
        }
    }
    modules.extend(pkg.files.iter().cloned());
    if modules.is_empty() {
        return refused(refusal(
            code::NO_MODULE,
            format!("package {} builds no module", pkg.name),
            "give it a kconfig symbol that is =m in the base config, or `files`",
        ));
    }
    let mut by_dir: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &modules {
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
    for m in &modules {
        let objects = km.objects(m).map_or_else(
            || vec![format!("{}.o", m.trim_end_matches(".ko"))],
            <[String]>::to_vec,
        );
        for o in objects {
            let o = o.split(' ').next().unwrap_or(&o);
            if let Some(d) = normalize(module_dir(o).as_str()) {
                write_dirs.insert(d);
            }
        }
    }
    Ok(Plan::Build(Job {
        pkg: pkg.clone(),
        modules: modules.into_iter().collect(),
        units,
        key,
        notes,
        variant,
        write_dirs,
        changed,
    }))
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

/// `a/b/../c` → `a/c`; `None` when it climbs above the top.
pub(super) fn normalize(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
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
