//! Kbuild's descent from the top directory under one configuration, and its cache.

use super::{DirEval, Evaluator, Job, Module, PROLOGUE, lists_section, normalize};
use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::config;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

impl Evaluator {
    /// Descend from the top directory as Kbuild does, one level per round.
    pub fn walk(&self) -> TreeEval {
        let mut tree = TreeEval::default();
        let mut level = vec![".".to_string()];
        tree.builtin_dirs.insert(".".to_string());
        while !level.is_empty() {
            let jobs: Vec<Job> = level.iter().map(|d| Job::plain(d)).collect();
            if std::env::var_os("EXTMOD_EVAL_TRACE").is_some() {
                eprintln!("walk level: {} directories", jobs.len());
            }
            let mut next = Vec::new();
            for e in self.eval(&jobs) {
                let builtin = tree.builtin_dirs.contains(&e.dir);
                for s in e.subdirs_y.iter().chain(&e.subdirs_m) {
                    if builtin && e.subdirs_y.contains(s) {
                        tree.builtin_dirs.insert(s.clone());
                    }
                    if !tree.dirs.contains_key(s) && !next.contains(s) && !level.contains(s) {
                        next.push(s.clone());
                    }
                }
                tree.dirs.insert(e.dir.clone(), e);
            }
            level = next;
        }
        tree
    }
}

/// The whole tree under one configuration, as Kbuild descends it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TreeEval {
    pub dirs: BTreeMap<String, DirEval>,
    /// Directories whose built-in objects are linked into vmlinux (entered by obj-y all the way).
    pub builtin_dirs: BTreeSet<String>,
}

impl TreeEval {
    /// Every module the configuration builds.
    pub fn modules(&self) -> impl Iterator<Item = &Module> {
        self.dirs.values().flat_map(|d| d.modules.iter())
    }

    /// Every object linked into vmlinux.
    pub fn builtin_objects(&self) -> BTreeSet<String> {
        self.builtin_dirs
            .iter()
            .filter_map(|d| self.dirs.get(d))
            .flat_map(|d| d.builtin.iter().map(|o| normalize(o)))
            .collect()
    }

    /// Directories make could not evaluate, with the reason.
    pub fn errors(&self) -> Vec<(&str, &str)> {
        self.dirs
            .values()
            .filter_map(|d| d.error.as_deref().map(|e| (d.dir.as_str(), e)))
            .collect()
    }
}

/// Where the walk of `ev`'s configuration is cached.
pub fn walk_path(ev: &Evaluator, inputs: &str, cache: &Utf8Path) -> Utf8PathBuf {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        ev.srctree.as_str(),
        &ev.srcarch,
        &ev.make_vars.join(" "),
        &config::render(&ev.config),
        inputs,
        env!("CARGO_PKG_VERSION"),
        PROLOGUE,
        &lists_section(&ev.srctree).unwrap_or_default(),
        "walk-1",
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let key = format!("{:x}", h.finalize());
    cache.join(format!("walk-{}.json", &key[..20]))
}

/// A cached walk: keyed by the Makefiles' state (`inputs`, e.g. the text index's digest), the
/// configuration and how make is called.
pub fn cached_walk(ev: &Evaluator, inputs: &str, cache: &Utf8Path) -> TreeEval {
    let path = walk_path(ev, inputs, cache);
    if let Ok(data) = std::fs::read(&path)
        && let Ok(t) = serde_json::from_slice::<TreeEval>(&data)
    {
        return t;
    }
    let t = ev.walk();
    if std::fs::create_dir_all(cache).is_ok()
        && let Ok(tmp) = tempfile::NamedTempFile::new_in(cache)
        && serde_json::to_writer(std::io::BufWriter::new(tmp.as_file()), &t).is_ok()
    {
        let _ = tmp.persist(&path);
    }
    t
}
