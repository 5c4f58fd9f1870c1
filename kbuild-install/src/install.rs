//! Installing a Kbuild tree: what `scripts/package/install-extmod-build` ships, plus what config
//! variants need (`.config`, `auto.conf.cmd`, every parsed Kconfig file, a built `conf`,
//! `System.map`) and a manifest. Built in a temporary sibling of DEST and renamed into place.
//!
//! Hardlink policy: only files that come from the **source tree** and are not build outputs are
//! hardlinked. Tools that change source files (git, patch, quilt, tar, sed -i) replace the inode,
//! so the tree keeps the old content. Everything taken from the **object tree** is copied: the next
//! `make` in the object tree rewrites `Module.symvers`, `System.map` and compiler outputs in place,
//! which would show through a hardlink.

use crate::error::{Error, Result};
use crate::manifest::{FileCounts, MANIFEST, MadeFrom, Manifest, sha256_file};
use crate::paths::absolute;
use crate::process::check_interrupted;
use crate::tree::{ObjTree, SourceTree, config_value, cross_compile_of, read};
use crate::{elf, selftest};
use camino::{Utf8Path, Utf8PathBuf};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use walkdir::WalkDir;

#[derive(Debug, Clone)]
pub struct Options {
    pub srctree: Utf8PathBuf,
    pub objtree: Utf8PathBuf,
    pub dest: Utf8PathBuf,
    /// Copy every file, never hardlink.
    pub copy: bool,
    /// Replace an existing tree made by kbuild-install.
    pub force: bool,
    /// Build a small module against the result and compare its vermagic.
    pub verify: bool,
    /// `VAR=VALUE` make variables of the base build (KCFLAGS, ...).
    pub make_vars: Vec<String>,
}

/// Progress of an installation, for a reporter to render.
#[derive(Debug, Clone)]
pub enum Event {
    Checked {
        kernelrelease: String,
        srcarch: String,
    },
    Collected {
        files: usize,
    },
    Populated {
        counts: FileCounts,
    },
    SelfTestStarted,
    SelfTestPassed {
        vermagic: String,
    },
    Installed {
        dest: Utf8PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Source,
    Object,
}

/// Install a Kbuild tree; returns its manifest.
pub fn install(opts: &Options, on_event: &mut dyn FnMut(Event)) -> Result<Manifest> {
    // Every path reaches make and Kbuild's shell recipes: refuse what they would misread.
    for p in [&opts.srctree, &opts.objtree, &opts.dest] {
        crate::paths::check_path(&absolute(p)?)?;
    }
    let src = SourceTree::open(&opts.srctree)?;
    let obj = ObjTree::open(&opts.objtree)?;
    obj.check_matches(&src)?;
    let env = &obj.conf_cmd.env;
    let cc = env.get("CC").cloned().unwrap_or_else(|| "gcc".into());
    require_tool(&cc, "the kernel's C compiler (CC)")?;
    require_tool("make", "GNU make")?;
    check_make_vars(&obj, &opts.make_vars)?;
    let dest = absolute(&opts.dest)?;
    let (parent, name) = check_dest(&dest, &src, &obj, opts.force)?;
    crate::paths::check_path(&parent.join(&name))?;
    // Temporary siblings of a run that was killed.
    for what in ["kbuild-install", "old"] {
        crate::fsutil::clean_stale(&parent, &format!(".{name}.{what}-"));
    }
    on_event(Event::Checked {
        kernelrelease: obj.kernelrelease.clone(),
        srcarch: obj.srcarch().to_string(),
    });

    let auto_conf = read(&obj.path.join("include/config/auto.conf"))?;
    let files = collect(&src, &obj, &auto_conf)?;
    on_event(Event::Collected { files: files.len() });

    let tmp = tempfile::Builder::new()
        .prefix(&crate::fsutil::temp_prefix(&name, "kbuild-install"))
        .tempdir_in(&parent)
        .map_err(|e| Error::DestNotWritable {
            path: parent.clone(),
            source: e,
        })?;
    let tmp_path = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf()).expect("UTF-8 parent");
    let counts = populate(&files, &src.path, &obj.path, &tmp_path, opts.copy)?;
    // The base build's record of built-in objects and their config dependencies (absent when the
    // kernel has no vmlinux.a: variants are then not judged).
    if let Ok(index) = crate::builtin::BuiltinIndex::from_objtree(&obj.path) {
        index.store(&tmp_path)?;
    }
    on_event(Event::Populated {
        counts: counts.clone(),
    });

    let srcarch = obj.srcarch().to_string();
    let (vermagic, machine) = base_vermagic(&obj.path)?;
    let manifest = Manifest {
        format: crate::manifest::FORMAT,
        kernelrelease: obj.kernelrelease.clone(),
        kernelversion: src.kernelversion.clone(),
        arch: srcarch.clone(),
        srcarch,
        cross_compile: cross_compile_of(&cc),
        cc_version_text: env.get("CC_VERSION_TEXT").cloned().unwrap_or_default(),
        cc,
        toolchain_env: env.clone(),
        config_sha256: sha256_file(&obj.path.join(".config"))?,
        vermagic,
        machine,
        make_vars_extra: opts.make_vars.clone(),
        made_from: MadeFrom {
            srctree: src.path.clone(),
            objtree: obj.path.clone(),
            made_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            tool: format!("kbuild-install {}", env!("CARGO_PKG_VERSION")),
        },
        files: counts,
    };
    manifest.store(&tmp_path)?;

    if opts.verify {
        on_event(Event::SelfTestStarted);
        let vermagic = selftest::verify(&tmp_path, &manifest)?;
        on_event(Event::SelfTestPassed { vermagic });
    }

    check_interrupted()?;
    // Builds against DEST hold a shared lock on the directory: replace it only when none does.
    let _lock = crate::lock::tree(&dest, true, crate::lock::Wait::Yes, &mut |holder| {
        eprintln!("{:>12} for `{dest}`: in use by {holder}", "Waiting")
    })?;
    // DEST may have changed while the tree was made and tested: check again before replacing.
    if dest.symlink_metadata().is_ok() && !(opts.force && replaceable(&dest)) {
        return Err(if opts.force {
            Error::DestNotOurs(dest)
        } else {
            Error::DestExists(dest)
        });
    }
    crate::fsutil::replace_dir(tmp, &dest, &parent, &name)?;
    on_event(Event::Installed { dest: dest.clone() });
    Ok(manifest)
}

fn require_tool(tool: &str, role: &'static str) -> Result<()> {
    which::which(tool)
        .map(|_| ())
        .map_err(|_| Error::MissingTool {
            tool: tool.to_string(),
            role,
        })
}

/// Validate DEST; returns its canonical parent and its file name.
fn check_dest(
    dest: &Utf8Path,
    src: &SourceTree,
    obj: &ObjTree,
    force: bool,
) -> Result<(Utf8PathBuf, String)> {
    let name = dest
        .file_name()
        .ok_or_else(|| Error::DestNotWritable {
            path: dest.to_owned(),
            source: std::io::Error::other("destination has no file name"),
        })?
        .to_string();
    let parent = dest.parent().unwrap_or(Utf8Path::new("/"));
    // Resolved through its nearest existing ancestor, so the containment check runs before
    // anything is created (DEST inside the object tree must not even get its parents made).
    let parent = crate::paths::resolve(parent)?;
    let full = parent.join(&name);
    crate::paths::check_outside(
        &full,
        &[
            ("source", src.path.as_path()),
            ("object", obj.path.as_path()),
        ],
    )?;
    fs::create_dir_all(&parent).map_err(|e| Error::DestNotWritable {
        path: parent.clone(),
        source: e,
    })?;
    if full.symlink_metadata().is_ok() {
        if !force {
            return Err(Error::DestExists(full));
        }
        if !replaceable(&full) {
            return Err(Error::DestNotOurs(full));
        }
    }
    Ok((parent, name))
}

/// Whether `--force` may replace `dir`: a tree kbuild-install made (a manifest that parses and
/// names kbuild-install, beside a Kbuild Makefile), or an empty directory. A file that is merely
/// named like the manifest does not make a directory ours.
fn replaceable(dir: &Utf8Path) -> bool {
    if dir.is_symlink() || !dir.is_dir() {
        return false;
    }
    if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        return true;
    }
    dir.join(MANIFEST).is_file()
        && dir.join("scripts/Makefile.build").is_file()
        && Manifest::load(dir).is_ok_and(|m| m.made_from.tool.starts_with("kbuild-install "))
}

/// Files below `scripts/` that install-extmod-build ships (its `find_in_scripts`).
fn scripts_files(root: &Utf8Path, out: &mut Vec<String>) {
    walk(root, "scripts", out, &|dir| {
        matches!(dir, "atomic" | "dtc" | "kconfig" | "package")
    });
    out.retain(|p| {
        let base = p.rsplit('/').next().unwrap_or(p);
        !(p.starts_with("scripts/") && (base == "unifdef" || base == "mk_elfconfig"))
    });
}

/// Every file and symlink below `root/rel`, pruning directories for which `prune(name)` holds.
fn walk(root: &Utf8Path, rel: &str, out: &mut Vec<String>, prune: &dyn Fn(&str) -> bool) {
    let start = root.join(rel);
    if !start.exists() {
        return;
    }
    let it = WalkDir::new(&start).follow_links(false).into_iter();
    for entry in it.filter_entry(|e| {
        e.depth() == 0 || !(e.file_type().is_dir() && e.file_name().to_str().is_some_and(prune))
    }) {
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_dir() {
            continue;
        }
        if let Ok(p) = entry.path().strip_prefix(root)
            && let Some(s) = p.to_str()
        {
            out.push(s.to_string());
        }
    }
}

fn keep(rel: &str) -> bool {
    let base = rel.rsplit('/').next().unwrap_or(rel);
    !(base.ends_with(".o") || (base.starts_with('.') && base.ends_with(".cmd")))
}

/// The file list, each with where it comes from (object-tree entries win).
fn collect(src: &SourceTree, obj: &ObjTree, auto_conf: &str) -> Result<BTreeMap<String, Origin>> {
    let arch = format!("arch/{}", obj.srcarch());
    let enabled = |sym: &str| config_value(auto_conf, sym) == Some("y");
    let no_prune = |_: &str| false;

    let mut s = vec!["Makefile".to_string()];
    if let Ok(rd) = src.path.join(&arch).read_dir_utf8() {
        for e in rd.flatten() {
            if e.file_name().starts_with("Makefile") && e.path().is_file() {
                s.push(format!("{arch}/{}", e.file_name()));
            }
        }
    }
    let mut arch_all = Vec::new();
    walk(&src.path, &arch, &mut arch_all, &|d| d == "generated");
    for f in arch_all {
        let base = f.rsplit('/').next().unwrap_or(&f);
        let in_include = f[arch.len()..].contains("/include/");
        if in_include || base == "Kbuild.platforms" || base == "Platform" {
            s.push(f);
        }
    }
    walk(&src.path, "include", &mut s, &|d| {
        d == "config" || d == "generated"
    });
    scripts_files(&src.path, &mut s);
    // Config variants: every Kconfig file the configuration parsed, and Kconfig's helpers.
    s.extend(
        obj.conf_cmd
            .kconfig_files
            .iter()
            .filter(|f| !f.starts_with('/'))
            .cloned(),
    );
    s.push("scripts/kconfig/merge_config.sh".into());
    // Every kernel Makefile, so that Kbuild's own evaluation works without the source tree.
    s.extend(crate::builtin::makefiles(&src.path, obj.srcarch()));

    let mut o = vec![
        "Module.symvers".to_string(),
        "include/config/auto.conf".into(),
        "include/config/kernel.release".into(),
        // Beyond install-extmod-build: what variants and module lists need.
        ".config".into(),
        "include/config/auto.conf.cmd".into(),
        "scripts/kconfig/conf".into(),
    ];
    for opt in [
        "System.map",
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
        // The public half of the module signing key (Kbuild's cmd_sign reads it); the private
        // key (CONFIG_MODULE_SIG_KEY) is never shipped.
        "certs/signing_key.x509",
    ] {
        if obj.path.join(opt).is_file() {
            o.push(opt.into());
        }
    }
    if enabled("OBJTOOL") {
        o.push("tools/objtool/objtool".into());
    }
    if enabled("DEBUG_INFO_BTF_MODULES") {
        o.push("tools/bpf/resolve_btfids/resolve_btfids".into());
    }
    walk(
        &obj.path,
        &format!("{arch}/include/generated"),
        &mut o,
        &no_prune,
    );
    walk(&obj.path, "include/generated", &mut o, &no_prune);
    scripts_files(&obj.path, &mut o);
    if enabled("GCC_PLUGINS") {
        let mut plugins = Vec::new();
        walk(&obj.path, "scripts/gcc-plugins", &mut plugins, &no_prune);
        o.extend(plugins.into_iter().filter(|p| p.ends_with(".so")));
    }

    let mut files = BTreeMap::new();
    for f in s.into_iter().filter(|f| keep(f)) {
        if src.path.join(&f).symlink_metadata().is_ok() {
            files.insert(f, Origin::Source);
        }
    }
    for f in o.into_iter().filter(|f| keep(f)) {
        if obj.path.join(&f).symlink_metadata().is_ok() {
            files.insert(f, Origin::Object);
        }
    }
    Ok(files)
}

fn populate(
    files: &BTreeMap<String, Origin>,
    src: &Utf8Path,
    obj: &Utf8Path,
    dest: &Utf8Path,
    copy: bool,
) -> Result<FileCounts> {
    let dirs: BTreeSet<Utf8PathBuf> = files
        .keys()
        .filter_map(|f| Utf8Path::new(f).parent().map(|p| dest.join(p)))
        .collect();
    for d in &dirs {
        fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
    }
    let entries: Vec<(&String, &Origin)> = files.iter().collect();
    let linked = AtomicUsize::new(0);
    let copied = AtomicUsize::new(0);
    let symlinks = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let can_link = AtomicBool::new(!copy);
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    let chunk = entries.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                let (linked, copied, symlinks, bytes, can_link) =
                    (&linked, &copied, &symlinks, &bytes, &can_link);
                scope.spawn(move || -> Result<()> {
                    for (i, (rel, origin)) in part.iter().enumerate() {
                        if i % 256 == 0 {
                            check_interrupted()?;
                        }
                        let from = match origin {
                            Origin::Source => src.join(rel),
                            Origin::Object => obj.join(rel),
                        };
                        let to = dest.join(rel);
                        let meta = from
                            .symlink_metadata()
                            .map_err(|e| Error::io("read", &from, e))?;
                        if meta.file_type().is_symlink() {
                            let target =
                                fs::read_link(&from).map_err(|e| Error::io("read", &from, e))?;
                            std::os::unix::fs::symlink(&target, &to)
                                .map_err(|e| Error::io("create symlink", &to, e))?;
                            symlinks.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if **origin == Origin::Source
                            && can_link.load(Ordering::Relaxed)
                            && fs::hard_link(&from, &to).is_ok()
                        {
                            linked.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if **origin == Origin::Source {
                            // Another filesystem or links not allowed: copy from now on.
                            can_link.store(false, Ordering::Relaxed);
                        }
                        copy_file(&from, &to, &meta)?;
                        copied.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(meta.len(), Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("populate worker panicked")?;
        }
        Ok(())
    })?;
    let kconfig_files = files
        .keys()
        .filter(|f| {
            f.rsplit('/')
                .next()
                .is_some_and(|b| b.starts_with("Kconfig"))
        })
        .count();
    Ok(FileCounts {
        linked: linked.into_inner(),
        copied: copied.into_inner(),
        symlinks: symlinks.into_inner(),
        kconfig_files,
        bytes: bytes.into_inner(),
    })
}

/// Copy contents, permissions and modification time (as tar does).
fn copy_file(from: &Utf8Path, to: &Utf8Path, meta: &fs::Metadata) -> Result<()> {
    fs::copy(from, to).map_err(|e| Error::io("copy", from, e))?;
    if let Ok(mtime) = meta.modified() {
        let f = fs::File::options()
            .write(true)
            .open(to)
            .map_err(|e| Error::io("open", to, e))?;
        f.set_modified(mtime)
            .map_err(|e| Error::io("set time of", to, e))?;
    }
    Ok(())
}

/// Make variables that would point the build elsewhere; never accepted as the base build's.
const REDIRECTING: &[&str] = &[
    "O",
    "M",
    "MO",
    "KBUILD_OUTPUT",
    "KBUILD_EXTMOD",
    "KBUILD_EXTMOD_OUTPUT",
    "srctree",
    "objtree",
    "src",
    "obj",
    "KCONFIG_CONFIG",
];

/// `VAR=VALUE` pairs the user says the base build had: well-formed, not redirecting the build,
/// and, for the compiler flag variables, present in the base build's own compile command of a
/// module object (its `.<obj>.o.cmd`): a flag the kernel was not built with would make modules
/// that differ from it.
fn check_make_vars(obj: &ObjTree, vars: &[String]) -> Result<()> {
    let bad = |var: &str, why: String| Error::BadMakeVar {
        var: var.to_string(),
        why,
    };
    let base_cmd = base_compile_command(&obj.path);
    for v in vars {
        let Some((name, value)) = v.split_once('=') else {
            return Err(bad(v, "not VAR=VALUE".into()));
        };
        let name_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok || value.contains('\n') {
            return Err(bad(v, "not a make variable assignment".into()));
        }
        // make expands `$(...)` in a command-line value (`$(shell ...)` would run).
        if value.contains('$') {
            return Err(bad(v, "make would expand `$` in it".into()));
        }
        if REDIRECTING.contains(&name) {
            return Err(bad(
                v,
                format!("{name} selects the trees a build uses, not how it compiles"),
            ));
        }
        if matches!(name, "KCFLAGS" | "KCPPFLAGS")
            && let Some((object, cmd)) = &base_cmd
        {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            if let Some(missing) = value.split_whitespace().find(|w| !words.contains(w)) {
                return Err(bad(
                    v,
                    format!("the base build compiled `{object}` without `{missing}`"),
                ));
            }
        }
    }
    Ok(())
}

/// The recorded compile command (`savedcmd_...`) of the first object of the first module the
/// base build made, with that object's path.
fn base_compile_command(obj: &Utf8Path) -> Option<(String, String)> {
    let order = fs::read_to_string(obj.join("modules.order")).ok()?;
    // The first module whose object was compiled from one source (a composite one is linked).
    crate::tree::module_stems(&order).find_map(|stem| {
        let (dir, file) = stem.rsplit_once('/').unwrap_or(("", stem));
        let text = fs::read_to_string(obj.join(dir).join(format!(".{file}.o.cmd"))).ok()?;
        let line = text.lines().find(|l| l.starts_with("savedcmd_"))?;
        let cmd = line.split_once(":=")?.1.trim().to_string();
        cmd.contains(" -c ").then(|| (format!("{stem}.o"), cmd))
    })
}

/// The vermagic and target machine of the first module the base build made, if it made any.
fn base_vermagic(obj: &Utf8Path) -> Result<(Option<String>, Option<String>)> {
    let Ok(order) = fs::read_to_string(obj.join("modules.order")) else {
        return Ok((None, None));
    };
    for stem in crate::tree::module_stems(&order) {
        let ko = obj.join(format!("{stem}.ko"));
        if ko.is_file() {
            return Ok((
                elf::modinfo_value(&ko, "vermagic")?,
                Some(elf::machine(&ko)?),
            ));
        }
    }
    Ok((None, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_outputs_are_not_shipped() {
        assert!(keep("scripts/mod/modpost"));
        assert!(!keep("scripts/mod/modpost.o"));
        assert!(!keep("scripts/mod/.modpost.cmd"));
        assert!(keep("include/linux/module.h"));
    }
}
