//! Staging built modules as `modules_install` does, the recorded state for the next run,
//! and `--install-mod-path`.

use super::ctx::Ctx;
use super::job::Job;
use crate::error::Error;
use crate::events::PackageResult;
use crate::modinst::InstalledModule;
use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::process::check_interrupted;
use kbuild_install::{Error as KError, elf};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::UNIX_EPOCH;

pub(super) const STATE: &str = "state.json";

pub(super) const STATE_FORMAT: u32 = 5;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) format: u32,
    pub(super) key: String,
    pub(super) modules: Vec<String>,
    /// Files the build read (real paths), with size, mtime, inode and content hash
    /// ([`crate::fresh::Input::compact`]).
    pub(super) inputs: Vec<String>,
    /// The build's notes (e.g. the --allow-kernel-change label), repeated when fresh.
    #[serde(default)]
    pub(super) notes: Vec<String>,
    /// The staged files, as `modules_install` left them.
    pub(super) installed: Vec<InstalledModule>,
}

/// Stage into `OUT/<package>` atomically and record the state for the next run.
pub(super) fn stage(
    ctx: &Ctx,
    job: &Job,
    extra: &[Utf8PathBuf],
    started: std::time::SystemTime,
) -> Result<Vec<InstalledModule>, Error> {
    check_interrupted()?;
    let name = &job.pkg.name;
    let out = ctx.out(name);
    let tmp = tempfile::Builder::new()
        .prefix(&kbuild_install::fsutil::temp_prefix(name, "staging"))
        .tempdir_in(&ctx.dest)
        .map_err(|e| KError::io("create", &ctx.dest, e))?;
    let root = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf()).expect("UTF-8 destination");
    let kernel = ctx.modules_dir(&root);
    // The exports of every make call of the package, in the order they ran.
    let mut symvers = String::new();
    let mut files: Vec<Utf8PathBuf> = std::fs::read_dir(super::prepare::symvers_dir(ctx, name))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| Utf8PathBuf::from_path_buf(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in files {
        if let Ok(t) = std::fs::read_to_string(&f) {
            symvers.push_str(&t);
        }
    }
    let mut installed = Vec::new();
    for m in &job.modules {
        let from = out.join(m);
        if !from.is_file() {
            return Err(KError::io(
                "find built module",
                &from,
                std::io::Error::other("make did not produce it"),
            )
            .into());
        }
        elf::modinfo(&from)?;
        check_interrupted()?;
        installed.push(ctx.installer.install(&from, &root, &kernel, m)?);
    }
    let log_path = ctx.pkg_dir(name).join("build.log");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log_path)
        .map_err(|e| KError::io("write", &log_path, e))?;
    ctx.installer
        .depmod(&ctx.k, &root, &job.modules, false, &mut log)?;
    let sv = root.join("Module.symvers");
    std::fs::write(&sv, &symvers).map_err(|e| KError::io("write", &sv, e))?;
    crate::runlock::mark(&root, name)?;
    let pkg_symvers = ctx.pkg_dir(name).join("Module.symvers");
    std::fs::write(&pkg_symvers, &symvers).map_err(|e| KError::io("write", &pkg_symvers, e))?;
    check_interrupted()?;
    kbuild_install::fsutil::replace_dir(tmp, &ctx.staged(name), &ctx.dest, name)?;
    let inputs = inputs(&out, &ctx.tree(name), job, extra, &ctx.k.compiler());
    // An input changed while make ran: the modules may not reflect it, so no state is written
    // and the next run builds again.
    let started_ns = started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    if inputs.iter().any(|i| i.mtime > started_ns) {
        return Ok(installed);
    }
    let state = State {
        format: STATE_FORMAT,
        key: job.key.clone(),
        modules: job.modules.clone(),
        inputs: inputs.iter().map(crate::fresh::Input::compact).collect(),
        notes: job.notes.clone(),
        installed: installed.clone(),
    };
    let path = ctx.pkg_dir(name).join(STATE);
    std::fs::write(
        &path,
        serde_json::to_string(&state).expect("state serializes"),
    )
    .map_err(|e| KError::io("write", &path, e))?;
    Ok(installed)
}

/// `--install-mod-path`: every built or fresh package's modules in one tree, as `make
/// modules_install INSTALL_MOD_PATH=<root>` would leave it (modules.order in the base build's
/// order, modules.builtin{,.modinfo} of the Kbuild tree, depmod), replaced whole.
pub(super) fn install_all(
    ctx: &Ctx,
    root: &Utf8Path,
    results: &[PackageResult],
) -> Result<(), Error> {
    check_interrupted()?;
    std::fs::create_dir_all(root).map_err(|e| KError::io("create", root, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".extmod-install-")
        .tempdir_in(root)
        .map_err(|e| KError::io("create", root, e))?;
    let tmp_root = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf()).expect("UTF-8 path");
    let modlib = tmp_root.join("lib/modules").join(&ctx.k.kernelrelease);
    let mut modules = Vec::new();
    for r in results {
        let Some(staged) = &r.staged else { continue };
        for m in &r.installed {
            let from = staged.join(&m.path);
            let to = tmp_root.join(&m.path);
            std::fs::create_dir_all(to.parent().expect("module has a directory"))
                .map_err(|e| KError::io("create", &to, e))?;
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(|e| KError::io("copy", &from, e))?;
            }
            modules.push(m.module.clone());
        }
    }
    for f in ["modules.builtin", "modules.builtin.modinfo"] {
        let from = ctx.k.path.join(f);
        if from.is_file() {
            std::fs::create_dir_all(&modlib).map_err(|e| KError::io("create", &modlib, e))?;
            std::fs::copy(&from, modlib.join(f)).map_err(|e| KError::io("copy", &from, e))?;
        }
    }
    let log_path = ctx.objdir.join("install.log");
    let mut log =
        std::fs::File::create(&log_path).map_err(|e| KError::io("write", &log_path, e))?;
    ctx.installer
        .depmod(&ctx.k, &tmp_root, &modules, true, &mut log)?;
    // Only lib/modules/<release> is ours to replace; the rest of the root is left alone.
    let final_dir = root.join("lib/modules").join(&ctx.k.kernelrelease);
    let parent = final_dir.parent().expect("has a parent").to_owned();
    std::fs::create_dir_all(&parent).map_err(|e| KError::io("create", &parent, e))?;
    let staged = tempfile::Builder::new()
        .prefix(&format!(".{}.new-", ctx.k.kernelrelease))
        .tempdir_in(&parent)
        .map_err(|e| KError::io("create", &parent, e))?;
    std::fs::remove_dir(staged.path()).map_err(|e| KError::io("remove", &parent, e))?;
    std::fs::rename(&modlib, staged.path()).map_err(|e| KError::io("move", &modlib, e))?;
    kbuild_install::fsutil::replace_dir(staged, &final_dir, &parent, &ctx.k.kernelrelease)?;
    Ok(())
}

/// An extra output directory (`--install-mod-path`): checked like D and OUT (outside S, K and
/// the trees K was made from, apart from D and OUT).
pub(super) fn output_dir(
    p: &Utf8Path,
    protected: &[(Utf8PathBuf, &'static str)],
    objdir: &Utf8Path,
    dest: &Utf8Path,
) -> Result<Utf8PathBuf, Error> {
    crate::error::check_kbuild_path(p)?;
    let p = kbuild_install::paths::resolve(&kbuild_install::paths::absolute(p)?)?;
    crate::guard::check_outside(&p, protected)?;
    crate::guard::check_apart(objdir, &p)?;
    crate::guard::check_apart(dest, &p)?;
    Ok(p)
}

/// Every file the build read, from Kbuild's `.cmd` files in the output root `out` (make's
/// directory: relative names are relative to it), plus the module directories' Makefiles.
pub(super) fn inputs(
    out: &Utf8Path,
    tree: &Utf8Path,
    job: &Job,
    extra: &[Utf8PathBuf],
    cc: &str,
) -> Vec<crate::fresh::Input> {
    let mut files: BTreeSet<String> = extra.iter().map(|p| p.to_string()).collect();
    for dir in &job.write_dirs {
        for mk in ["Makefile", "Kbuild"] {
            files.insert(tree.join(dir).join(mk).to_string());
        }
        let Ok(rd) = out.join(dir).read_dir_utf8() else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name();
            if !(n.starts_with('.') && n.ends_with(".o.cmd")) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            files.extend(crate::fresh::cmd_deps(&text));
        }
    }
    // The compiler itself: another gcc at the same path is another build.
    if let Ok(p) = which::which(cc)
        && let Some(p) = p.to_str()
    {
        files.insert(p.to_string());
    }
    let real: BTreeSet<Utf8PathBuf> = files
        .into_iter()
        .filter_map(|f| {
            let full = if f.starts_with('/') {
                Utf8PathBuf::from(&f)
            } else {
                out.join(&f)
            };
            // Recorded by real path: the next run's check then stats each header once for all
            // packages, without walking the overlay's symlinks.
            let real = kbuild_install::paths::canonical(&full).ok()?;
            // Files the build itself wrote (`dummy.mod.c`, ...) are outputs, not inputs.
            (!real.starts_with(tree) && !real.starts_with(out)).then_some(real)
        })
        .collect();
    crate::fresh::record(real)
}
