//! The split object directory of a package: an **overlay root**
//! where the directories along the package's module paths are real and everything else is a
//! symlink into the Kbuild tree or the source tree. On kernels up to 6.12,
//! `make -C <overlay> M=drivers/net dummy.ko` then writes only into the overlay's real
//! directories; since 6.13 the overlay is M and objects go to `MO` (see [`crate::generation`]).
//! Either way object names and Module.symvers entries match the in-tree build, and
//! `#include "../x.h"` or `-I$(srctree)/drivers/...` still resolve.
//!
//! Rules for an entry `p` of a real directory:
//! - on the path to a module directory: a real directory, filled by the same rules;
//! - inside a module directory: a symlink to the source tree's file, skipping build outputs
//!   (a source tree used for an in-source build has them; they must never be written through);
//! - a directory present in two or more Kbuild layers (a split distribution headers package):
//!   a real directory merging them;
//! - otherwise the Kbuild tree's entry for files and for `include`, `scripts`, `tools`, `arch`
//!   (generated headers and host programs live there), else the source tree's entry.
//!
//! The top `Makefile` is the first real kernel Makefile found (not a distribution wrapper), so
//! the overlay is both srctree and objtree for Kbuild.

use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::Error as KError;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

pub struct Layers<'a> {
    /// Kbuild tree directories, highest priority first.
    pub kbuild: &'a [Utf8PathBuf],
    /// Only these top-level names are taken from the Kbuild layers (a full object directory
    /// holds build outputs of the whole kernel elsewhere); `None`: everything.
    pub kbuild_only: Option<&'static [&'static str]>,
    pub src: &'a Utf8Path,
    /// Entries replaced by files of extmod's own (a configuration variant's `include/config`,
    /// `autoconf.h`, a filtered `Module.symvers`): relative path → target.
    pub overrides: &'a BTreeMap<String, Utf8PathBuf>,
    /// Entries (relative paths) the overlay leaves out.
    pub hidden: &'a [&'a str],
    /// The source tree is read-only for make (the guard of `kbuild_install::sandbox`): a
    /// directory below a module directory that no object is written into (none of
    /// `module_dirs` is in it) links to the source tree instead of being made real, file by
    /// file. A stray write there fails loudly; without the guard such a directory is real, so
    /// that the write lands in the overlay.
    pub link_unwritten: bool,
    /// Where the overlay's links are kept once each, to be hard-linked into every overlay
    /// (`D/.links`); `None`: every link is a new symlink.
    pub link_store: Option<&'a Utf8Path>,
}

/// Top-level entries taken from a full object directory.
pub const OBJTREE_NAMES: &[&str] = &[
    "include",
    "arch",
    "scripts",
    "tools",
    ".config",
    "Module.symvers",
    "System.map",
    "modules.order",
    "modules.builtin",
    "modules.builtin.modinfo",
];

const KBUILD_DIRS: &[&str] = &["include", "scripts", "tools", "arch"];

/// Always real directories: tracepoint headers are included through `TRACE_INCLUDE_PATH`
/// relative to `include/trace/` (`#include "../../drivers/scsi/sd_trace.h"` from
/// `define_trace.h`), and the kernel resolves `..` physically: behind a symlink into a Kbuild
/// layer it would leave the overlay and miss the module's own header.
const TRACE_DIRS: &[&str] = &["include", "include/trace"];

fn is_build_output(name: &str) -> bool {
    name.starts_with('.')
        || name == "modules.order"
        || name == "Module.symvers"
        || name == "built-in.a"
        || [".o", ".ko", ".mod", ".mod.c", ".a", ".order", ".symvers"]
            .iter()
            .any(|s| name.ends_with(s))
}

fn io<'a>(action: &'static str, path: &'a Utf8Path) -> impl FnOnce(std::io::Error) -> KError + 'a {
    move |e| KError::io(action, path, e)
}

fn names(dir: &Utf8Path) -> Vec<String> {
    dir.read_dir_utf8()
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string()).collect())
        .unwrap_or_default()
}

fn exists(p: &Utf8Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// Create the overlay at `root` (which must not exist) for modules in `module_dirs`.
///
/// Links into the source tree and the Kbuild layers are relative, through one anchor link
/// each beside `root` (`<root>.src`, `<root>.k0`, ...): `fs/nls/nls_utf8.c` ->
/// `../../../tree.src/fs/nls/nls_utf8.c`. A target under 60 bytes is stored in the inode by
/// ext4; a longer one costs a data block each, and an overlay's ~500 absolute links then took
/// 0.2-0.4 s to write instead of 0.02 s. Compilers see the overlay's paths either way.
pub fn create(
    root: &Utf8Path,
    layers: &Layers,
    module_dirs: &BTreeSet<String>,
) -> Result<(), KError> {
    std::fs::create_dir_all(root).map_err(io("create", root))?;
    let anchors = Anchors::create(root, layers)?;
    let ctx = Fill {
        layers,
        anchors: &anchors,
        module_dirs,
    };
    ctx.fill(root, "", false)
}

/// A real directory `dst` holding what the overlay's directory `rel` would hold, with absolute
/// links, for overlays to share through an override (`scripts/` with extmod's
/// `Makefile.compiler`: 180 entries no package writes into), made once
/// ([`kbuild_install::fsutil::publish_dir`]).
pub fn create_shared(dst: &Utf8Path, rel: &str, layers: &Layers) -> Result<(), KError> {
    kbuild_install::fsutil::publish_dir(dst, |tmp| {
        Fill {
            layers,
            anchors: &Anchors { trees: Vec::new() },
            module_dirs: &BTreeSet::new(),
        }
        .fill(tmp, rel, false)
    })
}

/// The anchor links of an overlay and the trees they stand for.
struct Anchors {
    /// (tree, anchor name), longest tree path first.
    trees: Vec<(Utf8PathBuf, String)>,
}

impl Anchors {
    fn create(root: &Utf8Path, layers: &Layers) -> Result<Anchors, KError> {
        let (Some(parent), Some(name)) = (root.parent(), root.file_name()) else {
            return Ok(Anchors { trees: Vec::new() });
        };
        let mut trees = vec![(layers.src.to_path_buf(), format!("{name}.src"))];
        for (i, k) in layers.kbuild.iter().enumerate() {
            trees.push((k.clone(), format!("{name}.k{i}")));
        }
        for (tree, anchor) in &trees {
            let link = parent.join(anchor);
            let _ = std::fs::remove_file(&link);
            symlink_abs(tree, &link)?;
        }
        trees.sort_by_key(|(t, _)| std::cmp::Reverse(t.as_str().len()));
        Ok(Anchors { trees })
    }

    /// The target to store for a link to `target` in the real directory `rel` of the overlay.
    fn target(&self, target: &Utf8Path, rel: &str) -> Utf8PathBuf {
        for (tree, anchor) in &self.trees {
            if let Ok(rest) = target.strip_prefix(tree) {
                let depth = if rel.is_empty() {
                    1
                } else {
                    rel.split('/').count() + 1
                };
                let mut t = Utf8PathBuf::from("../".repeat(depth));
                t.push(anchor);
                if !rest.as_str().is_empty() {
                    t.push(rest);
                }
                return t;
            }
        }
        target.to_path_buf()
    }
}

struct Fill<'a> {
    layers: &'a Layers<'a>,
    anchors: &'a Anchors,
    module_dirs: &'a BTreeSet<String>,
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

fn kbuild_allows(layers: &Layers, p: &str) -> bool {
    let top = p.split('/').next().unwrap_or(p);
    layers.kbuild_only.is_none_or(|names| names.contains(&top))
}

impl Fill<'_> {
    /// A link at `link` (in the real directory `rel`) to `target`. With a store, the symlink is
    /// made once there, named by its content, and hard-linked here: allocating an inode is what
    /// an overlay's ~300 links cost on ext4 (without a journal it skips every inode freed in the
    /// last 5-35 s, so after a large `rm -rf` each allocation scans); a hard link only adds a
    /// directory entry.
    fn link(&self, target: &Utf8Path, link: &Utf8Path, rel: &str) -> Result<(), KError> {
        let t = self.anchors.target(target, rel);
        if let Some(store) = self.layers.link_store {
            let key = format!("{:x}", Sha256::digest(t.as_str().as_bytes()));
            let kept = store.join(&key[..2]).join(&key[2..32]);
            if std::fs::hard_link(&kept, link).is_ok() {
                return Ok(());
            }
            if let Some(parent) = kept.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            // Another package may make it at the same time: the same content either way.
            let _ = std::os::unix::fs::symlink(&t, &kept);
            if std::fs::hard_link(&kept, link).is_ok() {
                return Ok(());
            }
        }
        symlink_abs(&t, link)
    }

    fn fill(&self, dst: &Utf8Path, rel: &str, under_module_dir: bool) -> Result<(), KError> {
        let (layers, module_dirs) = (self.layers, self.module_dirs);
        let symlink = |target: &Utf8Path, link: &Utf8Path| self.link(target, link, rel);
        let in_module_dir = under_module_dir || module_dirs.contains(rel);
        let mut all = BTreeSet::new();
        for l in layers.kbuild {
            if rel.is_empty() || kbuild_allows(layers, rel) {
                all.extend(names(&l.join(rel)));
            }
        }
        all.extend(names(&layers.src.join(rel)));
        for name in all {
            let p = join(rel, &name);
            let out = dst.join(&name);
            if layers.hidden.contains(&p.as_str()) {
                continue;
            }
            if let Some(target) = layers.overrides.get(&p) {
                symlink(target, &out)?;
                continue;
            }
            let prefix = format!("{p}/");
            let on_path = module_dirs
                .iter()
                .any(|d| *d == p || d.starts_with(&prefix))
                || layers.overrides.keys().any(|o| o.starts_with(&prefix))
                || TRACE_DIRS.contains(&p.as_str());
            if on_path {
                std::fs::create_dir(&out).map_err(io("create", &out))?;
                self.fill(&out, &p, in_module_dir)?;
                continue;
            }
            let src = layers.src.join(&p);
            if in_module_dir {
                // Build outputs, and files Kbuild generated in an in-source-built tree (they have a
                // `.<name>.cmd` beside them): the build writes those, so they must not be links.
                if is_build_output(&name)
                    || exists(&layers.src.join(rel).join(format!(".{name}.cmd")))
                {
                    continue;
                }
                // Directories below a module directory that objects are written into are on the
                // path above. The others are links into S when the guard makes S read-only for
                // make; otherwise real too, so that no write can go through a link into S.
                // (drivers/net holds 404 directories and 6,660 files: a new inode each took
                // 0.25 s per package, seconds after a large `rm -rf`; see `Fill::link`.)
                if src.is_dir() && !src.is_symlink() {
                    if layers.link_unwritten {
                        symlink(&src, &out)?;
                        continue;
                    }
                    std::fs::create_dir(&out).map_err(io("create", &out))?;
                    self.fill(&out, &p, true)?;
                    continue;
                }
                if exists(&src) {
                    symlink(&src, &out)?;
                    continue;
                }
            }
            let kb: Vec<Utf8PathBuf> = if kbuild_allows(layers, &p) {
                layers
                    .kbuild
                    .iter()
                    .map(|l| l.join(&p))
                    .filter(|c| exists(c))
                    .collect()
            } else {
                Vec::new()
            };
            if p == "Makefile" {
                // The real kernel Makefile, not a wrapper that re-enters another tree.
                let real = kb
                    .iter()
                    .chain(std::iter::once(&src))
                    .find(|m| std::fs::read_to_string(m).is_ok_and(|t| t.contains("\nVERSION =")));
                if let Some(m) = real {
                    symlink(m, &out)?;
                }
                continue;
            }
            let src_exists = exists(&src);
            let is_dir = kb.first().map_or(src.is_dir(), |k| k.is_dir());
            let target = if kb.is_empty() {
                src
            } else if !is_dir {
                kb[0].clone()
            } else if kb.len() >= 2 {
                std::fs::create_dir(&out).map_err(io("create", &out))?;
                self.fill(&out, &p, false)?;
                continue;
            } else if layers.kbuild_only.is_some() && src_exists && src.is_dir() {
                // A full object dir and the source both have it (e.g. include/): merge.
                std::fs::create_dir(&out).map_err(io("create", &out))?;
                self.merge_two(&out, &p, &kb[0], &src)?;
                continue;
            } else if !src_exists
                || (rel.is_empty() && KBUILD_DIRS.contains(&name.as_str()))
                || name == "include"
                || ["include", "scripts", "tools"].contains(&p.split('/').next().unwrap_or(""))
            {
                kb[0].clone()
            } else {
                src
            };
            symlink(&target, &out)?;
        }
        Ok(())
    }

    /// A real directory (`rel` in the overlay) holding the entries of `a` then those of `b` not
    /// in `a`, recursively for directories present in both.
    fn merge_two(
        &self,
        out: &Utf8Path,
        rel: &str,
        a: &Utf8Path,
        b: &Utf8Path,
    ) -> Result<(), KError> {
        let symlink = |target: &Utf8Path, link: &Utf8Path| self.link(target, link, rel);
        let mut all: BTreeSet<String> = names(a).into_iter().collect();
        all.extend(names(b));
        for n in all {
            let (pa, pb, o) = (a.join(&n), b.join(&n), out.join(&n));
            if pa.is_dir() && pb.is_dir() && !pa.is_symlink() {
                std::fs::create_dir(&o).map_err(io("create", &o))?;
                self.merge_two(&o, &join(rel, &n), &pa, &pb)?;
            } else if exists(&pa) {
                if !is_build_output(&n) {
                    symlink(&pa, &o)?;
                }
            } else {
                symlink(&pb, &o)?;
            }
        }
        Ok(())
    }
}

fn symlink_abs(target: &Utf8Path, link: &Utf8Path) -> Result<(), KError> {
    std::os::unix::fs::symlink(target, link).map_err(io("create symlink", link))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(root: &Utf8Path, files: &[&str]) {
        for f in files {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(
                &p,
                if f.ends_with("Makefile") && !f.contains('/') {
                    "\nVERSION = 6\n"
                } else {
                    "x"
                },
            )
            .unwrap();
        }
    }

    /// Layers of a source tree alone, with the guard on.
    fn guarded_src<'a>(s: &'a Utf8Path, store: Option<&'a Utf8Path>) -> Layers<'a> {
        static NONE: std::sync::LazyLock<BTreeMap<String, Utf8PathBuf>> =
            std::sync::LazyLock::new(BTreeMap::new);
        Layers {
            kbuild: &[],
            kbuild_only: None,
            src: s,
            overrides: &NONE,
            hidden: &[],
            link_unwritten: true,
            link_store: store,
        }
    }

    /// Where the link at `root/p` leads (a relative one resolved through its anchor).
    fn link_of(root: &Utf8Path, p: &str) -> Option<String> {
        let l = std::fs::read_link(root.join(p)).ok()?;
        if l.is_absolute() {
            return Some(l.to_string_lossy().into_owned());
        }
        let parent = root.join(p).parent().unwrap().as_std_path().to_path_buf();
        let resolved = std::fs::canonicalize(parent.join(l)).unwrap();
        Some(resolved.to_string_lossy().into_owned())
    }

    #[test]
    fn links_are_short_and_relative_through_anchors() {
        let t = tempfile::tempdir().unwrap();
        let t = Utf8Path::from_path(t.path()).unwrap();
        let (s, o) = (
            t.join("a-long-source-tree-path/linux-6.12"),
            t.join("d/pkg/tree"),
        );
        mk(
            &s,
            &[
                "Makefile",
                "fs/nls/nls_utf8.c",
                "fs/nls/sub/x.h",
                "fs/ext4/y.c",
            ],
        );
        let layers = guarded_src(&s, None);
        create(&o, &layers, &BTreeSet::from(["fs/nls".to_string()])).unwrap();
        let raw = |p: &str| {
            std::fs::read_link(o.join(p))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        assert_eq!(
            raw("fs/nls/nls_utf8.c"),
            "../../../tree.src/fs/nls/nls_utf8.c"
        );
        assert_eq!(raw("fs/ext4"), "../../tree.src/fs/ext4");
        assert_eq!(raw("Makefile"), "../tree.src/Makefile");
        assert_eq!(
            std::fs::read_link(t.join("d/pkg/tree.src"))
                .unwrap()
                .to_string_lossy(),
            s.as_str()
        );
        // With the guard, a directory below a module directory that no object is written
        // into links to the source tree.
        assert_eq!(raw("fs/nls/sub"), "../../../tree.src/fs/nls/sub");
        assert!(o.join("fs/nls/sub/x.h").is_file());
        assert_eq!(std::fs::read(o.join("fs/ext4/y.c")).unwrap(), b"x");
    }

    #[test]
    fn overlays_share_their_links_through_the_store() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let t = Utf8Path::from_path(t.path()).unwrap();
        let s = t.join("s");
        mk(&s, &["Makefile", "fs/nls/nls_utf8.c", "fs/ext4/y.c"]);
        let store = t.join("d/.links");
        let layers = guarded_src(&s, Some(&store));
        let dirs = BTreeSet::from(["fs/nls".to_string()]);
        let (a, b) = (t.join("d/a/tree"), t.join("d/b/tree"));
        create(&a, &layers, &dirs).unwrap();
        create(&b, &layers, &dirs).unwrap();
        for p in ["Makefile", "fs/ext4", "fs/nls/nls_utf8.c"] {
            let (ma, mb) = (
                a.join(p).symlink_metadata().unwrap(),
                b.join(p).symlink_metadata().unwrap(),
            );
            assert!(ma.file_type().is_symlink(), "{p}");
            assert_eq!(ma.ino(), mb.ino(), "{p}: one inode for both overlays");
            assert_eq!(ma.nlink(), 3, "{p}: the store's and the two overlays'");
        }
        assert_eq!(std::fs::read(b.join("fs/ext4/y.c")).unwrap(), b"x");
        assert_eq!(std::fs::read(a.join("fs/nls/nls_utf8.c")).unwrap(), b"x");
    }

    #[test]
    fn real_dirs_along_the_path_and_links_elsewhere() {
        let t = tempfile::tempdir().unwrap();
        let t = Utf8Path::from_path(t.path()).unwrap();
        let (k, s, o) = (t.join("k"), t.join("s"), t.join("o"));
        mk(
            &k,
            &[
                "Makefile",
                "Module.symvers",
                "modules.order",
                "include/generated/autoconf.h",
                "include/generated/utsrelease.h",
                "include/linux/module.h",
                "include/trace/define_trace.h",
                "drivers/net/Kconfig",
                "scripts/mod/modpost",
            ],
        );
        mk(
            &s,
            &[
                "Makefile",
                "include/linux/module.h",
                "drivers/net/dummy.c",
                "drivers/net/dummy.o",
                "drivers/net/.dummy.o.cmd",
                "drivers/net/wan/x.c",
                "drivers/base/core.c",
                "fs/nls/nls_base.c",
            ],
        );
        let kb = [k.clone()];
        let overrides = BTreeMap::from([(
            "include/generated/autoconf.h".to_string(),
            t.join("variant/autoconf.h"),
        )]);
        let layers = Layers {
            kbuild: &kb,
            kbuild_only: None,
            src: &s,
            overrides: &overrides,
            hidden: &["modules.order"],
            link_unwritten: false,
            link_store: None,
        };
        create(&o, &layers, &BTreeSet::from(["drivers/net".to_string()])).unwrap();
        let link = |p: &str| link_of(&o, p);
        assert!(o.join("drivers").is_dir() && !o.join("drivers").is_symlink());
        assert!(o.join("drivers/net").is_dir() && !o.join("drivers/net").is_symlink());
        assert_eq!(
            link("drivers/net/dummy.c"),
            Some(s.join("drivers/net/dummy.c").to_string())
        );
        assert_eq!(
            link("drivers/net/dummy.o"),
            None,
            "build outputs are never linked"
        );
        assert_eq!(link("drivers/net/.dummy.o.cmd"), None);
        // Below a module directory every directory is real, its files links.
        assert_eq!(link("drivers/net/wan"), None);
        assert!(o.join("drivers/net/wan").is_dir());
        assert_eq!(
            link("drivers/net/wan/x.c"),
            Some(s.join("drivers/net/wan/x.c").to_string())
        );
        assert_eq!(
            link("drivers/base"),
            Some(s.join("drivers/base").to_string())
        );
        assert_eq!(
            link("include/linux"),
            Some(k.join("include/linux").to_string())
        );
        assert_eq!(
            link("include/generated/autoconf.h"),
            Some(t.join("variant/autoconf.h").to_string())
        );
        assert_eq!(
            link("include/generated/utsrelease.h"),
            Some(k.join("include/generated/utsrelease.h").to_string())
        );
        assert!(o.join("include/generated").is_dir() && !o.join("include/generated").is_symlink());
        assert_eq!(link("scripts"), Some(k.join("scripts").to_string()));
        assert_eq!(
            link("Module.symvers"),
            Some(k.join("Module.symvers").to_string())
        );
        assert_eq!(link("Makefile"), Some(k.join("Makefile").to_string()));
        assert!(!exists(&o.join("modules.order")), "hidden");
        assert_eq!(link("fs"), Some(s.join("fs").to_string()));
        // `include/trace/../../drivers/net/x_trace.h` stays inside the overlay.
        assert!(o.join("include/trace").is_dir() && !o.join("include/trace").is_symlink());
        assert_eq!(
            link("include/trace/define_trace.h"),
            Some(k.join("include/trace/define_trace.h").to_string())
        );
        assert!(o.join("include/trace/../../drivers/net/dummy.c").exists());
    }
}
