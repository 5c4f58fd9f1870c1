//! The base build's own record of what is linked into vmlinux, shipped in the Kbuild tree as
//! `extmod-builtin.json`: every object of `vmlinux.a` and of the `lib.a` archives linked with it,
//! and for each configuration symbol the built-in objects whose compilation depended on it
//! (fixdep's `$(wildcard include/config/SYM)` lines in `<dir>/.<obj>.o.cmd`). A symbol no
//! built-in object depends on cannot change vmlinux through the preprocessor; Makefile-level
//! effects (which objects are built in at all) are judged by evaluating the Makefiles.
//!
//! Also the list of kernel Makefiles a Kbuild tree ships so that the Makefiles can be evaluated
//! without the source tree.

use crate::error::{Error, Result};
use camino::Utf8Path;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub const FILE: &str = "extmod-builtin.json";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltinIndex {
    pub format: u32,
    /// Objects linked into vmlinux (relative to the object tree), sorted.
    pub objects: Vec<String>,
    /// Symbol (without `CONFIG_`) -> indices into `objects` of the objects that depend on it.
    pub symbols: BTreeMap<String, Vec<u32>>,
    /// Objects whose `.cmd` file was missing or unreadable (their dependencies are unknown).
    pub unrecorded: Vec<String>,
}

/// Member paths of a GNU thin archive (`!<thin>`): the entries of its long-name table.
pub fn thin_members(data: &[u8]) -> Option<Vec<String>> {
    let rest = data.strip_prefix(b"!<thin>\n")?;
    let mut pos = 0;
    let mut out = Vec::new();
    while pos + 60 <= rest.len() {
        let header = &rest[pos..pos + 60];
        let name = std::str::from_utf8(&header[..16]).ok()?.trim_end();
        let size: usize = std::str::from_utf8(&header[48..58])
            .ok()?
            .trim()
            .parse()
            .ok()?;
        pos += 60;
        if name == "//" {
            let table = rest.get(pos..pos + size)?;
            out.extend(
                String::from_utf8_lossy(table)
                    .split('\n')
                    .map(|n| n.trim_end_matches('/'))
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            );
            pos += size + (size & 1);
        } else if name == "/" || name == "/SYM64/" {
            // The symbol table is stored even in thin archives.
            pos += size + (size & 1);
        }
        // Members of a thin archive have no data in the archive.
    }
    Some(out)
}

/// `include/config/SYM` dependencies recorded by fixdep in a `.cmd` file.
pub fn cmd_symbols(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("include/config/") {
        let rest = &text[i + "include/config/".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 && !rest[end..].starts_with('.') {
            out.insert(rest[..end].to_string());
        }
    }
    out
}

impl BuiltinIndex {
    /// Read the record from a built object tree.
    pub fn from_objtree(obj: &Utf8Path) -> Result<Self> {
        let mut objects = BTreeSet::new();
        let vmlinux_a = obj.join("vmlinux.a");
        let data = std::fs::read(&vmlinux_a).map_err(|e| Error::io("read", &vmlinux_a, e))?;
        objects.extend(thin_members(&data).unwrap_or_default());
        // KBUILD_VMLINUX_LIBS: lib.a of every `libs-y` directory.
        let libs: BTreeSet<String> = std::iter::once("lib/lib.a".to_string())
            .chain(
                std::fs::read_dir(obj.join("arch").as_std_path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .map(|a| format!("arch/{a}/lib/lib.a")),
            )
            .collect();
        for lib in libs {
            // Members of a thin archive are named relative to the archive's directory.
            if let Ok(data) = std::fs::read(obj.join(&lib)) {
                let dir = lib.trim_end_matches("lib.a");
                objects.extend(
                    thin_members(&data)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|m| format!("{dir}{m}")),
                );
            }
        }
        let objects: Vec<String> = objects.into_iter().collect();
        let mut symbols: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let mut unrecorded = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            let p = Utf8Path::new(o);
            let cmd = obj
                .join(p.parent().map_or("".into(), |d| d.to_string()))
                .join(format!(".{}.cmd", p.file_name().unwrap_or(o)));
            match std::fs::read_to_string(&cmd) {
                Ok(text) => {
                    for s in cmd_symbols(&text) {
                        symbols.entry(s).or_default().push(i as u32);
                    }
                }
                Err(_) => unrecorded.push(o.clone()),
            }
        }
        Ok(BuiltinIndex {
            format: FORMAT,
            objects,
            symbols,
            unrecorded,
        })
    }

    pub fn store(&self, tree: &Utf8Path) -> Result<()> {
        let p = tree.join(FILE);
        std::fs::write(&p, serde_json::to_vec(self).expect("serializes"))
            .map_err(|e| Error::io("write", &p, e))
    }

    /// The record shipped in a Kbuild tree, if it has one of this format.
    pub fn load(tree: &Utf8Path) -> Option<Self> {
        let data = std::fs::read(tree.join(FILE)).ok()?;
        serde_json::from_slice::<Self>(&data)
            .ok()
            .filter(|i| i.format == FORMAT)
    }

    /// Built-in objects that depend on `sym`.
    pub fn dependents(&self, sym: &str) -> Vec<&str> {
        self.symbols
            .get(sym.strip_prefix("CONFIG_").unwrap_or(sym))
            .into_iter()
            .flatten()
            .filter_map(|i| self.objects.get(*i as usize).map(String::as_str))
            .collect()
    }
}

/// Directories of a source tree whose Makefiles Kbuild never reads for the kernel proper.
pub fn skip_dir(rel: &str, srcarch: &str) -> bool {
    matches!(
        rel,
        "Documentation" | "tools" | "samples" | "usr" | ".git" | "scripts"
    ) || (rel.starts_with("arch/")
        && rel.matches('/').count() == 1
        && rel != format!("arch/{srcarch}"))
}

/// Every kernel Makefile (`Makefile*`, `Kbuild*`, `*.mk`) below the source tree that Kbuild may
/// read while descending for this architecture, relative to the source tree.
pub fn makefiles(src: &Utf8Path, srcarch: &str) -> Vec<String> {
    let mut out = Vec::new();
    let walker = walkdir::WalkDir::new(src).into_iter().filter_entry(|e| {
        let Ok(rel) = e.path().strip_prefix(src) else {
            return true;
        };
        !(e.file_type().is_dir() && skip_dir(rel.to_str().unwrap_or(""), srcarch))
    });
    for e in walker.filter_map(std::result::Result::ok) {
        if !e.file_type().is_file() {
            continue;
        }
        let name = e.file_name().to_str().unwrap_or("");
        if (name.starts_with("Makefile") || name.starts_with("Kbuild") || name.ends_with(".mk"))
            && let Ok(rel) = e.path().strip_prefix(src)
            && let Some(rel) = rel.to_str()
            && (rel.contains('/') || rel.starts_with("Kbuild"))
        {
            out.push(rel.to_string());
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_thin_archive_names_and_fixdep_symbols() {
        let names = "init/main.o/\nmm/vmstat.o/\n";
        let mut a = b"!<thin>\n".to_vec();
        a.extend(format!("{:<16}{:<32}{:<10}`\n", "//", "", names.len()).as_bytes());
        a.extend(names.as_bytes());
        a.extend(format!("{:<16}{:<32}{:<10}`\n", "/0", "", 100).as_bytes());
        assert_eq!(
            thin_members(&a).unwrap(),
            ["init/main.o".to_string(), "mm/vmstat.o".to_string()]
        );
        assert!(thin_members(b"!<arch>\n").is_none());
        let cmd = "deps_mm/vmstat.o := \\\n  $(wildcard include/config/ZSMALLOC) \\\n  $(wildcard include/config/NUMA) \\\n  include/linux/mmzone.h \\\n  include/config/auto.conf \\\n";
        assert_eq!(
            cmd_symbols(cmd).into_iter().collect::<Vec<_>>(),
            ["NUMA", "ZSMALLOC"]
        );
    }
}
