//! Which modules does `CONFIG_X` build? A textual index of the kernel's Kconfig and Makefiles.
//!
//! Kconfig: every `config X` with its type. Makefiles: every `obj-$(CONFIG_X) += a.o sub/` line
//! (continuations joined). A `.o` target names a module in that directory; a `sub/` target
//! descends into the subdirectory and takes the entries there that use the same symbol (or its
//! unconditional `obj-m`). When the Kbuild tree records the base build's `modules.order`,
//! predictions for symbols that are `=m` in the base are checked against it, and anything the
//! base did not build is reported as uncertain rather than guessed.

use camino::{Utf8Path, Utf8PathBuf};
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use walkdir::WalkDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SymType {
    Bool,
    Tristate,
    String,
    Int,
    Hex,
    Unknown,
}

/// One `obj-$(CONFIG_X) += ...` target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    dir: String,
    /// `foo.o` or `sub/`.
    name: String,
}

#[derive(Debug, Default)]
pub struct Index {
    types: BTreeMap<String, SymType>,
    /// `depends on` expressions of each symbol, with the enclosing `if` blocks of its file.
    deps: BTreeMap<String, Vec<String>>,
    by_symbol: BTreeMap<String, Vec<Target>>,
    /// Unconditional `obj-m += x.o` per directory.
    obj_m: BTreeMap<String, Vec<String>>,
}

/// Directories of the source tree that hold no kernel Makefiles of interest.
fn skip_dir(rel: &str, srcarch: &str) -> bool {
    matches!(
        rel,
        "Documentation" | "tools" | "scripts" | "samples" | "usr" | ".git"
    ) || (rel.starts_with("arch/")
        && rel.matches('/').count() == 1
        && rel != format!("arch/{srcarch}"))
}

impl Index {
    pub fn build(srctree: &Utf8Path, srcarch: &str) -> Self {
        static CONFIG: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$").unwrap());
        static TYPE: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"^\s*(bool|tristate|string|int|hex|def_bool|def_tristate)\b").unwrap()
        });
        static OBJ: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"^\s*obj-(?:\$\(CONFIG_([A-Za-z0-9_]+)\)|(m))\s*(?:\+=|:=|=)\s*(.*)$")
                .unwrap()
        });
        let mut idx = Index::default();
        let walker = WalkDir::new(srctree).into_iter().filter_entry(|e| {
            let Ok(rel) = e.path().strip_prefix(srctree) else {
                return true;
            };
            !(e.file_type().is_dir() && skip_dir(rel.to_str().unwrap_or(""), srcarch))
        });
        for entry in walker.filter_map(Result::ok) {
            if !entry.file_type().is_file() {
                continue;
            }
            let name = entry.file_name().to_str().unwrap_or("");
            let is_make = name == "Makefile" || name == "Kbuild";
            let is_kconfig = name.starts_with("Kconfig");
            if !is_make && !is_kconfig {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let rel_dir = entry
                .path()
                .parent()
                .and_then(|p| p.strip_prefix(srctree).ok())
                .and_then(|p| p.to_str())
                .unwrap_or("")
                .to_string();
            if is_kconfig {
                let mut current: Option<String> = None;
                let mut in_config: Option<String> = None;
                let mut ifs: Vec<String> = Vec::new();
                for line in text.lines() {
                    let t = line.trim();
                    if let Some(c) = CONFIG.captures(line) {
                        current = Some(c[1].to_string());
                        in_config = current.clone();
                        idx.deps
                            .entry(c[1].to_string())
                            .or_default()
                            .extend(ifs.iter().cloned());
                        continue;
                    }
                    if let Some(e) = t
                        .strip_prefix("if ")
                        .filter(|_| !line.starts_with(char::is_whitespace))
                    {
                        ifs.push(e.split('#').next().unwrap_or("").trim().to_string());
                        in_config = None;
                        continue;
                    }
                    if t == "endif" || t.starts_with("endif ") || t.starts_with("endif#") {
                        ifs.pop();
                        in_config = None;
                        continue;
                    }
                    if !line.starts_with(char::is_whitespace)
                        && !t.is_empty()
                        && !t.starts_with('#')
                    {
                        in_config = None;
                    }
                    if let (Some(sym), Some(e)) = (&in_config, t.strip_prefix("depends on ")) {
                        idx.deps
                            .entry(sym.clone())
                            .or_default()
                            .push(e.split('#').next().unwrap_or("").trim().to_string());
                    }
                    if let (Some(sym), Some(t)) = (&current, TYPE.captures(line)) {
                        let ty = match &t[1] {
                            "bool" | "def_bool" => SymType::Bool,
                            "tristate" | "def_tristate" => SymType::Tristate,
                            "string" => SymType::String,
                            "int" => SymType::Int,
                            _ => SymType::Hex,
                        };
                        let slot = idx.types.entry(sym.clone()).or_insert(SymType::Unknown);
                        if *slot == SymType::Unknown {
                            *slot = ty;
                        }
                        current = None;
                    }
                }
                if let Some(sym) = current {
                    idx.types.entry(sym).or_insert(SymType::Unknown);
                }
                continue;
            }
            for line in joined_lines(&text) {
                let line = line.split('#').next().unwrap_or("");
                let Some(c) = OBJ.captures(line) else {
                    continue;
                };
                let targets = c[3]
                    .split_whitespace()
                    .filter(|t| (t.ends_with(".o") || t.ends_with('/')) && !t.contains('$'));
                match c.get(1) {
                    Some(sym) => {
                        let v = idx.by_symbol.entry(sym.as_str().to_string()).or_default();
                        for t in targets {
                            v.push(Target {
                                dir: rel_dir.clone(),
                                name: t.to_string(),
                            });
                        }
                    }
                    None => idx
                        .obj_m
                        .entry(rel_dir.clone())
                        .or_default()
                        .extend(targets.filter(|t| t.ends_with(".o")).map(String::from)),
                }
            }
        }
        idx
    }

    pub fn sym_type(&self, sym: &str) -> Option<SymType> {
        self.types.get(sym).copied()
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

    /// Modules (`dir/name.ko`) that `CONFIG_<sym>=m` builds, by the Makefiles' text.
    pub fn modules(&self, sym: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        for t in self.by_symbol.get(sym).into_iter().flatten() {
            self.expand(sym, &t.dir, &t.name, &mut out, 0);
        }
        out.into_iter().collect()
    }

    fn expand(&self, sym: &str, dir: &str, name: &str, out: &mut BTreeSet<String>, depth: usize) {
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        if let Some(stem) = path.strip_suffix(".o") {
            out.insert(format!("{stem}.ko"));
            return;
        }
        if depth > 8 {
            return;
        }
        let sub = path.trim_end_matches('/');
        let same: Vec<&Target> = self
            .by_symbol
            .get(sym)
            .into_iter()
            .flatten()
            .filter(|t| t.dir == sub)
            .collect();
        if !same.is_empty() {
            for t in same {
                self.expand(sym, &t.dir, &t.name, out, depth + 1);
            }
        } else if let Some(objs) = self.obj_m.get(sub) {
            for o in objs {
                out.insert(format!("{sub}/{}.ko", o.trim_end_matches(".o")));
            }
        }
    }
}

/// Makefile lines with `\` continuations joined.
fn joined_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if let Some(stripped) = line.strip_suffix('\\') {
            cur.push_str(stripped);
            cur.push(' ');
        } else {
            cur.push_str(line);
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
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
