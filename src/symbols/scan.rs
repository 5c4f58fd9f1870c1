//! Reading Kconfig files and Makefiles as text for the [`Index`].

use super::{Cond, Entry, Index, SymType, mtime};
use camino::Utf8Path;
use regex::Regex;
use std::sync::LazyLock;
use walkdir::WalkDir;

static CONFIG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$").unwrap());
static TYPE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(bool|tristate|string|int|hex|def_bool|def_tristate)\b").unwrap()
});
static OBJ: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
            r"^\s*(?:obj|libs|core|drivers)-(?:\$\((?:subst\s+m,y,)?\$?\(?CONFIG_([A-Za-z0-9_]+)\)?(?::m=y)?\)|(y|m))\s*(?:\+=|:=|=)\s*(.*)$",
        )
        .unwrap()
});

static MENTION: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"CONFIG_([A-Za-z0-9_]+)").unwrap());

/// Directories of the source tree that hold no kernel Makefiles of interest.
fn skip_dir(rel: &str, srcarch: &str) -> bool {
    matches!(
        rel,
        "Documentation" | "tools" | "scripts" | "samples" | "usr" | ".git"
    ) || (rel.starts_with("arch/")
        && rel.matches('/').count() == 1
        && rel != format!("arch/{srcarch}"))
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

impl Index {
    /// Read every Kconfig file and Makefile of the source tree (skipping what holds no kernel
    /// Makefiles of interest).
    pub fn build(srctree: &Utf8Path, srcarch: &str) -> Self {
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
            if let Ok(rel) = entry.path().strip_prefix(srctree) {
                idx.inputs
                    .push((rel.to_string_lossy().into_owned(), mtime(entry.path())));
            }
            let rel_dir = entry
                .path()
                .parent()
                .and_then(|p| p.strip_prefix(srctree).ok())
                .and_then(|p| p.to_str())
                .unwrap_or("")
                .to_string();
            if is_kconfig {
                idx.read_kconfig(&text);
            } else {
                idx.read_makefile(&text, &rel_dir, srcarch);
            }
        }
        idx
    }

    /// A Kconfig file: each `config X` with its type, and its `depends on` with the file's
    /// enclosing `if` blocks.
    fn read_kconfig(&mut self, text: &str) {
        let mut current: Option<String> = None;
        let mut in_config: Option<String> = None;
        let mut ifs: Vec<String> = Vec::new();
        for line in text.lines() {
            let t = line.trim();
            if let Some(c) = CONFIG.captures(line) {
                current = Some(c[1].to_string());
                in_config = current.clone();
                self.deps
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
            if !line.starts_with(char::is_whitespace) && !t.is_empty() && !t.starts_with('#') {
                in_config = None;
            }
            if let (Some(sym), Some(e)) = (&in_config, t.strip_prefix("depends on ")) {
                self.deps
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
                let slot = self.types.entry(sym.clone()).or_insert(SymType::Unknown);
                if *slot == SymType::Unknown {
                    *slot = ty;
                }
                current = None;
            }
        }
        if let Some(sym) = current {
            self.types.entry(sym).or_insert(SymType::Unknown);
        }
    }

    /// A Makefile: the symbols it mentions, and its `obj-...` lines (continuations joined).
    fn read_makefile(&mut self, text: &str, rel_dir: &str, srcarch: &str) {
        for c in MENTION.captures_iter(text) {
            self.mentions
                .entry(c[1].to_string())
                .or_default()
                .insert(if rel_dir.is_empty() {
                    ".".to_string()
                } else {
                    rel_dir.to_string()
                });
        }
        let mut depth = 0usize;
        for line in joined_lines(text) {
            let line = line.split('#').next().unwrap_or("");
            let t = line.trim_start();
            if ["ifeq", "ifneq", "ifdef", "ifndef"]
                .iter()
                .any(|k| t.starts_with(k))
            {
                depth += 1;
                continue;
            }
            if t.starts_with("endif") {
                depth = depth.saturating_sub(1);
                continue;
            }
            let line = line.replace("$(SRCARCH)", srcarch);
            if let Some(c) = OBJ.captures(&line) {
                let cond = match (c.get(1), c.get(2).map(|m| m.as_str())) {
                    (Some(sym), _) => Cond::Sym(sym.as_str().to_string()),
                    (None, Some("m")) => Cond::Module,
                    _ => Cond::Always,
                };
                let is_top_var = !line.trim_start().starts_with("obj-");
                for t in c[3].split_whitespace() {
                    if !(t.ends_with(".o") || t.ends_with('/')) || t.contains('$') {
                        continue;
                    }
                    // Top-level `libs-y := lib/` and arch `core-y += arch/x86/foo/`.
                    let (dir, target) = if is_top_var {
                        let full = t.trim_end_matches('/');
                        match full.rsplit_once('/') {
                            Some((d, last)) => (d.to_string(), format!("{last}/")),
                            None => (String::new(), t.to_string()),
                        }
                    } else {
                        (rel_dir.to_string(), t.to_string())
                    };
                    if let Cond::Sym(s) = &cond {
                        self.sym_dirs
                            .entry(s.clone())
                            .or_default()
                            .insert(dir.clone());
                    }
                    self.dirs.entry(dir).or_default().push(Entry {
                        target,
                        cond: cond.clone(),
                        guarded: depth > 0,
                    });
                }
                continue;
            }
        }
    }
}
