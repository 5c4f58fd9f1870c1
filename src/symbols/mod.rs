//! A textual index of the kernel's Kconfig files and Makefiles: the pre-filter for Kbuild's own
//! evaluation (`kbuild_eval`, `modmap`), never the answer on which modules a symbol builds.
//!
//! Kconfig: every `config X` with its type and `depends on` (with enclosing `if`s). Makefiles:
//! the directories whose Makefiles mention each `CONFIG_X` (the candidates make is asked about),
//! and every `obj-y/obj-m/obj-$(CONFIG_X)/obj-$(subst m,y,$(CONFIG_X)) += a.o sub/` line
//! (continuations joined), used to name which symbol's line a module is on and the gating chain
//! of a directory (every parent entry `obj-$(CONFIG_P) += c/`).

use camino::{Utf8Path, Utf8PathBuf};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

mod scan;

/// Version of the cached index's layout.
const FORMAT: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SymType {
    Bool,
    Tristate,
    String,
    Int,
    Hex,
    Unknown,
}

/// What an `obj-...` line is conditional on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cond {
    /// `obj-y`
    Always,
    /// `obj-m`
    Module,
    /// `obj-$(CONFIG_X)` (or `obj-$(subst m,y,$(CONFIG_X))`)
    Sym(String),
}

/// One target of an `obj-...` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// `foo.o` or `sub/`.
    target: String,
    cond: Cond,
    /// Inside an `ifeq`/`ifneq`/`ifdef`/`ifndef` block.
    guarded: bool,
}

/// One step of a module's gating chain: `dir` is entered from its parent when `symbol` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gate {
    pub dir: String,
    /// The symbols of the parent's `obj-$(CONFIG_P) += dir/` lines; empty: always entered.
    pub symbols: Vec<String>,
    /// No parent line enters it (only a top-level Makefile variable does, or nothing).
    pub unknown: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Index {
    types: BTreeMap<String, SymType>,
    /// `depends on` expressions of each symbol, with the enclosing `if` blocks of its file.
    deps: BTreeMap<String, Vec<String>>,
    /// `obj-...` entries per directory.
    dirs: BTreeMap<String, Vec<Entry>>,
    /// Directories with entries using each symbol.
    sym_dirs: BTreeMap<String, BTreeSet<String>>,
    /// Directories whose Makefiles mention each symbol anywhere (`CONFIG_X`): the candidates that
    /// Kbuild's evaluation (`kbuild_eval`) is asked about.
    mentions: BTreeMap<String, BTreeSet<String>>,
    /// The Kconfig files and Makefiles read, with their modification times (ns), to tell when a
    /// cached index is stale.
    inputs: Vec<(String, i128)>,
}

fn mtime(p: &std::path::Path) -> i128 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Whether every file still has its recorded modification time (checked on all cores: this is
/// most of a warm query's time).
fn unchanged(srctree: &Utf8Path, inputs: &[(String, i128)]) -> bool {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let chunk = inputs.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .all(|(p, t)| mtime(srctree.join(p).as_std_path()) == *t)
                })
            })
            .collect();
        handles.into_iter().all(|h| h.join().unwrap_or(false))
    })
}

impl Index {
    /// Load the index cached at `cache` if every file it was built from is unchanged, else build
    /// it and store it there.
    pub fn cached(srctree: &Utf8Path, srcarch: &str, cache: &Utf8Path) -> Self {
        let key = {
            use sha2::{Digest, Sha256};
            let h = Sha256::digest(format!(
                "{srctree}\0{srcarch}\0{}\0{FORMAT}",
                env!("CARGO_PKG_VERSION")
            ));
            format!("{:x}", h)[..16].to_string()
        };
        let path = cache.join(format!("index-{key}.json"));
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(idx) = serde_json::from_slice::<Index>(&bytes)
            && unchanged(srctree, &idx.inputs)
        {
            return idx;
        }
        let idx = Index::build(srctree, srcarch);
        if std::fs::create_dir_all(cache).is_ok()
            && let Ok(tmp) = tempfile::NamedTempFile::new_in(cache)
            && serde_json::to_writer(std::io::BufWriter::new(tmp.as_file()), &idx).is_ok()
        {
            let _ = tmp.persist(&path);
        }
        idx
    }

    /// Directories whose Makefiles mention `CONFIG_<sym>`.
    pub fn mentions(&self, sym: &str) -> impl Iterator<Item = &String> {
        self.mentions.get(sym).into_iter().flatten()
    }

    /// Symbols mentioned by the Makefiles of `dir`.
    pub fn mentioned_in(&self, dir: &str) -> Vec<&String> {
        self.mentions
            .iter()
            .filter(|(_, dirs)| dirs.contains(dir))
            .map(|(s, _)| s)
            .collect()
    }

    /// A digest of the files the index was built from (names and modification times).
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (p, t) in &self.inputs {
            h.update(p.as_bytes());
            h.update(t.to_le_bytes());
        }
        format!("{:x}", h.finalize())
    }

    pub fn sym_type(&self, sym: &str) -> Option<SymType> {
        self.types.get(sym).copied()
    }

    /// Every tristate symbol.
    pub fn tristates(&self) -> impl Iterator<Item = &String> {
        self.types
            .iter()
            .filter(|(_, t)| **t == SymType::Tristate)
            .map(|(s, _)| s)
    }

    /// The `depends on` expressions (and enclosing `if`s) of a symbol.
    pub fn depends(&self, sym: &str) -> &[String] {
        self.deps.get(sym).map_or(&[], Vec::as_slice)
    }

    /// Why `sym` could not be enabled: the symbols of its dependencies that are off in `config`,
    /// followed recursively (`NLMON needs NET_CORE (not set); NET_CORE needs NETDEVICES (not set)`).
    pub fn unmet_chain(&self, sym: &str, value: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        static WORD: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"[A-Za-z_][A-Za-z0-9_]*").unwrap());
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![(sym.to_string(), 0)];
        while let Some((s, depth)) = todo.pop() {
            if !seen.insert(s.clone()) || depth > 6 {
                continue;
            }
            for expr in self.depends(&s) {
                let off: Vec<String> = WORD
                    .find_iter(expr)
                    .map(|m| m.as_str().to_string())
                    .filter(|w| {
                        !["y", "m", "n"].contains(&w.as_str()) && self.types.contains_key(w)
                    })
                    .filter(|w| value(w).is_none_or(|v| v == "n"))
                    .collect();
                if off.is_empty() {
                    continue;
                }
                out.push(format!(
                    "CONFIG_{s} depends on `{expr}`: {} not set",
                    off.iter()
                        .map(|w| format!("CONFIG_{w}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                for w in off {
                    todo.push((w, depth + 1));
                }
            }
        }
        out
    }

    /// Modules (`dir/name.ko`) that the Makefiles' text names for `CONFIG_<sym>`: a pre-filter
    /// (which symbol's line names a module) for Kbuild's evaluation, not an answer.
    pub fn modules(&self, sym: &str) -> Vec<String> {
        let mut out: BTreeMap<String, bool> = BTreeMap::new();
        for dir in self.sym_dirs.get(sym).into_iter().flatten() {
            for e in self.dirs.get(dir).into_iter().flatten() {
                if e.cond == Cond::Sym(sym.to_string()) {
                    self.expand(sym, dir, &e.target, e.guarded, &mut out, 0);
                }
            }
        }
        out.into_keys().collect()
    }

    fn expand(
        &self,
        sym: &str,
        dir: &str,
        target: &str,
        guarded: bool,
        out: &mut BTreeMap<String, bool>,
        depth: usize,
    ) {
        let path = if dir.is_empty() {
            target.to_string()
        } else {
            format!("{dir}/{target}")
        };
        if let Some(stem) = path.strip_suffix(".o") {
            let e = out.entry(format!("{stem}.ko")).or_insert(guarded);
            *e = *e && guarded;
            return;
        }
        if depth > 8 {
            return;
        }
        let sub = path.trim_end_matches('/');
        let entries = self.dirs.get(sub).map_or(&[][..], Vec::as_slice);
        let same: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.cond == Cond::Sym(sym.to_string()))
            .collect();
        if !same.is_empty() {
            for e in same {
                self.expand(sym, sub, &e.target, guarded || e.guarded, out, depth + 1);
            }
        } else {
            for e in entries
                .iter()
                .filter(|e| e.cond == Cond::Module && e.target.ends_with(".o"))
            {
                self.expand(sym, sub, &e.target, guarded || e.guarded, out, depth + 1);
            }
        }
    }

    /// The chain of directories from the top to `dir`, each with the symbols that enter it.
    pub fn gates(&self, dir: &str) -> Vec<Gate> {
        let comps: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
        let mut out = Vec::new();
        for i in 0..comps.len() {
            let here = comps[..=i].join("/");
            // `obj-$(CONFIG_P) += c/` in the parent, or `+= b/c/` further up.
            let mut entries: Vec<&Entry> = Vec::new();
            for j in 0..=i {
                let anc = comps[..j].join("/");
                let want = format!("{}/", comps[j..=i].join("/"));
                entries.extend(
                    self.dirs
                        .get(&anc)
                        .into_iter()
                        .flatten()
                        .filter(|e| e.target == want),
                );
            }
            let always = entries
                .iter()
                .any(|e| matches!(e.cond, Cond::Always | Cond::Module));
            let symbols = if always {
                Vec::new()
            } else {
                entries
                    .iter()
                    .filter_map(|e| match &e.cond {
                        Cond::Sym(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect()
            };
            // A directory entered through a deeper target (`block/aoe/`) has no own step.
            let via_deeper = entries.is_empty()
                && (0..=i).any(|j| {
                    let anc = comps[..j].join("/");
                    let prefix = format!("{}/", comps[j..=i].join("/"));
                    self.dirs
                        .get(&anc)
                        .into_iter()
                        .flatten()
                        .any(|e| e.target.starts_with(&prefix) && e.target.len() > prefix.len())
                });
            if via_deeper {
                continue;
            }
            out.push(Gate {
                dir: here,
                symbols,
                unknown: entries.is_empty(),
            });
        }
        out
    }
}

/// The directory of a module path (`drivers/net/dummy.ko` → `drivers/net`).
pub fn module_dir(ko: &str) -> Utf8PathBuf {
    Utf8Path::new(ko)
        .parent()
        .map(Utf8Path::to_owned)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let idx = Index::build(Utf8Path::from_path(dir.path()).unwrap(), "x86");
        (dir, idx)
    }

    #[test]
    fn follows_subdirectories_and_continuations() {
        let (_d, idx) = tree(&[
            (
                "fs/Makefile",
                "obj-$(CONFIG_NLS)\t+= nls/\nobj-$(CONFIG_SQUASHFS) += \\\n  squashfs/\n",
            ),
            (
                "fs/nls/Makefile",
                "obj-$(CONFIG_NLS) += nls_base.o\nobj-$(CONFIG_NLS_UTF8) += nls_utf8.o # utf\n",
            ),
            (
                "fs/squashfs/Makefile",
                "obj-$(CONFIG_SQUASHFS) += squashfs.o\nsquashfs-y += super.o\n",
            ),
            (
                "drivers/block/Makefile",
                "obj-$(CONFIG_BLK_DEV_LOOP) += loop.o\nobj-$(CONFIG_ZRAM) += zram/\n",
            ),
            (
                "drivers/block/zram/Makefile",
                "zram-y := zram_drv.o\nobj-$(CONFIG_ZRAM) += zram.o\n",
            ),
            (
                "arch/arm/Makefile",
                "obj-$(CONFIG_BLK_DEV_LOOP) += armloop.o\n",
            ),
            (
                "fs/Kconfig",
                "config SQUASHFS\n\ttristate \"squashfs\"\nmenuconfig NLS\n\ttristate \"nls\"\n\
                 if FOO && BAR\nconfig NET\n\tbool \"net\"\n\tdepends on BAZ # why\nendif\n\
                 config FOO\n\tbool\nconfig BAR\n\tbool\nconfig BAZ\n\tbool\n",
            ),
        ]);
        assert_eq!(idx.modules("NLS"), ["fs/nls/nls_base.ko"]);
        assert_eq!(idx.modules("NLS_UTF8"), ["fs/nls/nls_utf8.ko"]);
        assert_eq!(idx.modules("SQUASHFS"), ["fs/squashfs/squashfs.ko"]);
        assert_eq!(idx.modules("BLK_DEV_LOOP"), ["drivers/block/loop.ko"]);
        assert_eq!(idx.modules("ZRAM"), ["drivers/block/zram/zram.ko"]);
        assert_eq!(idx.sym_type("NLS"), Some(SymType::Tristate));
        assert_eq!(idx.sym_type("NET"), Some(SymType::Bool));
        assert_eq!(idx.sym_type("NOPE"), None);
        assert_eq!(idx.depends("NET"), ["FOO && BAR", "BAZ"]);
        let chain = idx.unmet_chain("NET", &|s| (s == "BAR").then(|| "y".to_string()));
        assert_eq!(
            chain,
            [
                "CONFIG_NET depends on `FOO && BAR`: CONFIG_FOO not set",
                "CONFIG_NET depends on `BAZ`: CONFIG_BAZ not set"
            ]
        );
    }
}
