//! A package's overlay and output directory, made or reused before make runs.

use super::ctx::Ctx;
use super::job::{Job, Unit};
use super::stage::STATE;
use crate::kbuild::Kind;
use crate::overlay::{self, Layers};
use camino::Utf8PathBuf;
use kbuild_install::Error as KError;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// modpost as the in-tree build runs it (see [`write_modpost`]), in `D/<package>/`.
pub(super) const MODPOST: &str = "modpost-intree";

/// The overlays' links, kept once in `D/` and hard-linked into each (see `overlay::Layers`).
const LINKS: &str = ".links";

/// Create (or reuse) the package's overlay; drop outputs that are about to be rebuilt so that
/// staged hardlinks never see an in-place write. `link_unwritten`: see [`Layers`]; only when
/// the guard makes the source tree read-only for make.
pub(super) fn prepare_tree(
    ctx: &Ctx,
    job: &Job,
    extra: &[Utf8PathBuf],
    link_unwritten: bool,
) -> Result<(), KError> {
    let link_unwritten = link_unwritten && kbuild_install::sandbox::available();
    let dir = ctx.pkg_dir(&job.pkg.name);
    // Modules whose exports come from a dependency's build (KBUILD_EXTRA_SYMBOLS): the base
    // list must not name them too, or modpost finds them "exported twice".
    let chained: BTreeSet<String> = extra
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.split('\t').nth(2).map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    let tree = ctx.tree(&job.pkg.name);
    // The overlay is reused only for the same package inputs and the same layout: the
    // directories written, the variant, and the source listing of those directories (a new or
    // removed file, or a new subdirectory, must not leave a stale link or miss a source).
    let layout = {
        let mut h = Sha256::new();
        h.update(job.key.as_bytes());
        for d in &job.write_dirs {
            h.update(d.as_bytes());
            let mut names: Vec<String> = std::fs::read_dir(ctx.src.path.join(d))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            h.update(names.join("/").as_bytes());
        }
        if let Some(v) = &job.variant {
            h.update(v.dir.as_str().as_bytes());
        }
        if let Some(p) = &ctx.probes {
            h.update(p.compiler_mk.as_str().as_bytes());
        }
        for m in &chained {
            h.update(m.as_bytes());
            h.update(b"\0");
        }
        h.update([u8::from(link_unwritten)]);
        format!("{:x}", h.finalize())
    };
    let layout_file = dir.join("layout");
    let same_layout = std::fs::read_to_string(&layout_file).is_ok_and(|l| l == layout);
    // Outputs that depend on a changed input go first (make would keep an object newer than
    // a replacement with an older mtime), then the state: an interrupted run builds again.
    let out = ctx.out(&job.pkg.name);
    crate::fresh::remove_stale(&out, &job.write_dirs, &job.changed);
    let _ = std::fs::remove_file(dir.join(STATE));
    if !same_layout || !tree.is_dir() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| KError::io("remove", &dir, e))?;
        }
        let module_dirs = job.write_dirs.clone();
        let only = (ctx.k.kind == Kind::ObjTree).then_some(overlay::OBJTREE_NAMES);
        let (links, none) = (ctx.objdir.join(LINKS), BTreeMap::new());
        let base = Layers {
            kbuild: &ctx.k.layers,
            kbuild_only: only,
            src: &ctx.src.path,
            overrides: &none,
            hidden: &[],
            link_unwritten: false,
            link_store: Some(&links),
        };
        let mut overrides = BTreeMap::new();
        if let Some(p) = &ctx.probes {
            // `scripts/` with the cached probes' Makefile.compiler, one for all packages.
            let compiler = BTreeMap::from([(
                super::probes::COMPILER_MK.to_string(),
                p.compiler_mk.clone(),
            )]);
            let shared = p.scripts_dir(&ctx.src.path, only);
            let layers = Layers {
                overrides: &compiler,
                ..base
            };
            overlay::create_shared(&shared, "scripts", &layers)?;
            overrides.insert("scripts".to_string(), shared);
        }
        if let Some(v) = &job.variant {
            // The variant's configuration, as the C code and make see it.
            overrides.insert("include/config".to_string(), v.dir.join("include/config"));
            for f in ["autoconf.h", "rustc_cfg"] {
                overrides.insert(
                    format!("include/generated/{f}"),
                    v.dir.join("include/generated").join(f),
                );
            }
            overrides.insert(".config".to_string(), v.dir.join(".config"));
        }
        if job.variant.is_some() || !ctx.external || !chained.is_empty() {
            // Modules the base already has are rebuilt here or by a dependency: modpost must
            // not see their old exports next to the new ones (without `-e`, or with a
            // variant's new exports).
            let base = std::fs::read_to_string(ctx.k.path.join("Module.symvers"))
                .map_err(|e| KError::io("read", ctx.k.path.join("Module.symvers"), e))?;
            let ours: BTreeSet<&str> = job
                .modules
                .iter()
                .map(|m| m.trim_end_matches(".ko"))
                .chain(chained.iter().map(String::as_str))
                .collect();
            let filtered: String = base
                .lines()
                .filter(|l| l.split('\t').nth(2).is_none_or(|m| !ours.contains(m)))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::create_dir_all(&dir).map_err(|e| KError::io("create", &dir, e))?;
            let path = dir.join("base.Module.symvers");
            std::fs::write(&path, filtered).map_err(|e| KError::io("write", &path, e))?;
            overrides.insert("Module.symvers".to_string(), path);
        }
        let layers = Layers {
            overrides: &overrides,
            hidden: ctx.generation.hides(),
            link_unwritten,
            ..base
        };
        overlay::create(&tree, &layers, &module_dirs)?;
        if !ctx.external {
            write_modpost(&dir)?;
        }
        crate::runlock::mark(&dir, &job.pkg.name)?;
        std::fs::write(&layout_file, &layout).map_err(|e| KError::io("write", &layout_file, e))?;
    }
    for m in &job.modules {
        let _ = std::fs::remove_file(out.join(m));
    }
    std::fs::create_dir_all(&out).map_err(|e| KError::io("create", &out, e))?;
    for f in ctx.generation.local_outputs() {
        let p = out.join(f);
        if !p.exists() {
            std::fs::write(&p, "").map_err(|e| KError::io("write", &p, e))?;
        }
    }
    Ok(())
}

/// Where a package's make calls leave their exports, one file each, in order.
pub(super) fn symvers_dir(ctx: &Ctx, name: &str) -> Utf8PathBuf {
    ctx.pkg_dir(name).join("symvers.d")
}

/// The exports of one unit's modules, as later units and the package's Module.symvers take
/// them: the Module.symvers its make wrote (`<out>/<dir>/`, since 6.13 `<out>/`), copied to
/// `symvers.d/<n>.symvers`, since the next make in the same directory rewrites it.
pub(super) fn unit_symvers(ctx: &Ctx, name: &str, unit: &Unit) -> Result<Utf8PathBuf, String> {
    let out = ctx.out(name);
    let written = ctx.generation.written_symvers(&out, &unit.dir);
    let dir = symvers_dir(ctx, name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create `{dir}`: {e}"))?;
    let n = std::fs::read_dir(&dir).map_or(0, |rd| rd.count());
    let path = dir.join(format!("{n:04}.symvers"));
    std::fs::copy(&written, &path)
        .map_err(|e| format!("cannot copy `{written}` to `{path}`: {e}"))?;
    Ok(path)
}

/// Kbuild's `scripts/Makefile.modpost` passes `-e` (external module) to modpost for every `M=`
/// build; the in-tree build does not, and only then does modpost write `MODULE_INFO(intree,
/// "Y")` into `<mod>.mod.c`. `MODPOST=` on make's command line replaces the command (it is also a
/// prerequisite, so it must be one file): this script drops `-e` and runs the tree's modpost.
/// The base Module.symvers the overlay gives modpost lacks the package's own modules, so they
/// are not "exported twice". The tree's modpost is found beside the script (make runs in the
/// output directory since 6.13).
fn write_modpost(pkg_dir: &camino::Utf8Path) -> Result<(), KError> {
    let path = pkg_dir.join(MODPOST);
    let script = "#!/bin/sh\n\
# Written by extmod: modpost as the in-tree build runs it (without -e).\n\
for a do shift; [ \"$a\" = -e ] || set -- \"$@\" \"$a\"; done\n\
exec \"${0%/*}/tree/scripts/mod/modpost\" \"$@\"\n";
    std::fs::write(&path, script).map_err(|e| KError::io("write", &path, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| KError::io("chmod", &path, e))
}
