//! Whether a configuration change stays inside modules, judged from the base build's own record
//! (shared by `extmod variant`, `extmod build` and `extmod audit`):
//!
//! - **fixdep**: a built-in object (linked into vmlinux) whose compilation depended on
//!   `include/config/SYM` would be compiled differently: kernel-affecting, naming the objects;
//! - **Makefiles**: Kbuild's evaluation of the Makefiles under the changed configuration must link
//!   the same built-in objects as under the base (`obj-$(subst m,y,$(CONFIG_VLAN_8021Q)) +=
//!   vlan_core.o` adds one for `=m`).
//!
//! A tree without the record (distribution headers, trees made before it existed) cannot be
//! judged: every change is then reported as such.

use crate::kbuild::{KbuildTree, Kind};
use crate::kbuild_eval::{Evaluator, TreeEval};
use crate::symbols::Index;
use kbuild_install::builtin::BuiltinIndex;
use kbuild_install::config::Config;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Local,
    /// Why, and the built-in objects concerned.
    Kernel(String, Vec<String>),
    /// The tree has no record to judge by.
    Unjudged(String),
}

/// The built-in objects that differ between two walks (added, removed).
#[derive(Debug, Clone, Default)]
pub struct BuiltinDelta {
    pub added: BTreeSet<String>,
    pub removed: BTreeSet<String>,
    /// Directories make could not evaluate under the changed configuration.
    pub unevaluated: Vec<String>,
}

impl BuiltinDelta {
    pub fn between(base: &TreeEval, changed: &TreeEval) -> Self {
        let a = base.builtin_objects();
        let b = changed.builtin_objects();
        BuiltinDelta {
            added: b.difference(&a).cloned().collect(),
            removed: a.difference(&b).cloned().collect(),
            unevaluated: changed
                .errors()
                .iter()
                .map(|(d, _)| d.to_string())
                .collect(),
        }
    }
}

pub struct Locality {
    record: Option<BuiltinIndex>,
}

fn shown(list: &[String]) -> String {
    let head: Vec<&str> = list.iter().take(3).map(String::as_str).collect();
    if list.len() > 3 {
        format!("{} and {} more", head.join(", "), list.len() - 3)
    } else {
        head.join(", ")
    }
}

impl Locality {
    /// The record shipped in a tree made by `extmod kbuild-install`, or read from an object tree.
    pub fn for_tree(k: &KbuildTree) -> Self {
        let record = BuiltinIndex::load(&k.path).or_else(|| {
            (k.kind == Kind::ObjTree)
                .then(|| BuiltinIndex::from_objtree(&k.path).ok())
                .flatten()
        });
        Locality { record }
    }

    pub fn has_record(&self) -> bool {
        self.record.is_some()
    }

    /// The verdict for each changed symbol. `delta` is the difference of the built-in object sets
    /// (None: the Makefiles could not be evaluated).
    pub fn judge(
        &self,
        changed: &[String],
        delta: Option<&BuiltinDelta>,
        index: Option<&Index>,
    ) -> BTreeMap<String, Verdict> {
        let mut out = BTreeMap::new();
        let Some(record) = &self.record else {
            for s in changed {
                out.insert(
                    s.clone(),
                    Verdict::Unjudged(
                        "the Kbuild tree has no record of the base build's built-in objects (extmod-builtin.json): cannot be judged"
                            .into(),
                    ),
                );
            }
            return out;
        };
        // Which changed symbols the Makefiles of each added/removed object's directory mention.
        let moved: Vec<String> = delta
            .map(|d| d.added.iter().chain(&d.removed).cloned().collect())
            .unwrap_or_default();
        for s in changed {
            let mut deps: Vec<String> = record
                .dependents(s)
                .into_iter()
                .map(str::to_string)
                .collect();
            // Objects of the directories whose Makefiles use the symbol first (mm/ for ZSMALLOC).
            if let Some(i) = index {
                let near: BTreeSet<&String> = i.mentions(s).collect();
                deps.sort_by_key(|o| !near.contains(&crate::symbols::module_dir(o).to_string()));
            }
            if !deps.is_empty() {
                out.insert(
                    s.clone(),
                    Verdict::Kernel(
                        format!(
                            "built-in objects were compiled depending on it (fixdep): {}",
                            shown(&deps)
                        ),
                        deps,
                    ),
                );
                continue;
            }
            let Some(d) = delta else {
                out.insert(
                    s.clone(),
                    Verdict::Kernel(
                        "the Makefiles could not be evaluated to check which objects are built in"
                            .into(),
                        Vec::new(),
                    ),
                );
                continue;
            };
            let mine: Vec<String> = moved
                .iter()
                .filter(|o| {
                    let dir = crate::symbols::module_dir(o).to_string();
                    index.is_none_or(|i| {
                        i.mentions(s)
                            .any(|m| *m == dir || dir.starts_with(&format!("{m}/")))
                    })
                })
                .cloned()
                .collect();
            if !mine.is_empty() {
                let verb = if mine.iter().any(|o| d.added.contains(o)) {
                    "links into vmlinux"
                } else {
                    "removes from vmlinux"
                };
                out.insert(
                    s.clone(),
                    Verdict::Kernel(
                        format!("Kbuild's Makefiles then {verb}: {}", shown(&mine)),
                        mine,
                    ),
                );
            } else {
                out.insert(s.clone(), Verdict::Local);
            }
        }
        // Built-in objects changed, but no symbol's Makefiles explain it: every change is suspect.
        if !moved.is_empty()
            && !out
                .values()
                .any(|v| matches!(v, Verdict::Kernel(_, o) if o.iter().any(|x| moved.contains(x))))
        {
            for s in changed {
                if out.get(s) == Some(&Verdict::Local) {
                    out.insert(
                        s.clone(),
                        Verdict::Kernel(
                            format!(
                                "the variant changes the built-in objects: {}",
                                shown(&moved)
                            ),
                            moved.clone(),
                        ),
                    );
                }
            }
        }
        out
    }
}

/// The built-in object delta of a configuration against the base, by walking both.
/// `inputs` identifies the state of the Makefiles (the text index's digest).
pub fn delta_for(inputs: &str, base_ev: &Evaluator, config: &Config) -> BuiltinDelta {
    let cache = crate::cache::dir("kbuild-eval");
    let base = crate::kbuild_eval::cached_walk(base_ev, inputs, &cache);
    let ev = Evaluator {
        srctree: base_ev.srctree.clone(),
        srcarch: base_ev.srcarch.clone(),
        make_vars: base_ev.make_vars.clone(),
        config: config.clone(),
    };
    let changed = crate::kbuild_eval::cached_walk(&ev, inputs, &cache);
    BuiltinDelta::between(&base, &changed)
}

/// Where the Makefiles to evaluate are: the source tree, else a Kbuild tree that ships them.
pub fn makefile_root(
    k: &KbuildTree,
    src: Option<&camino::Utf8Path>,
) -> Option<camino::Utf8PathBuf> {
    match src {
        Some(s) => Some(s.to_owned()),
        None => (k.path.join("kernel/Makefile").is_file() && k.path.join("Kbuild").is_file())
            .then(|| k.path.clone()),
    }
}

/// The built-in object delta of setting each symbol on its own (`(symbol, value)`, `None`:
/// unset) on top of the base, evaluating only the built-in directories whose Makefiles mention
/// it (a subdirectory newly entered through obj-y is named as `dir/`).
pub fn targeted_deltas(
    index: &Index,
    base_ev: &Evaluator,
    requests: &[(String, Option<String>)],
) -> Vec<BuiltinDelta> {
    let cache = crate::cache::dir("kbuild-eval");
    let base = crate::kbuild_eval::cached_walk(base_ev, &index.digest(), &cache);
    let mut jobs = Vec::new();
    let mut owner = Vec::new();
    for (i, (s, v)) in requests.iter().enumerate() {
        for d in index.mentions(s).filter(|d| base.builtin_dirs.contains(*d)) {
            jobs.push(crate::kbuild_eval::Job {
                dir: d.clone(),
                flips: vec![(s.clone(), v.clone())],
            });
            owner.push(i);
        }
    }
    let evals = base_ev.eval(&jobs);
    let mut out = vec![BuiltinDelta::default(); requests.len()];
    for ((e, i), job) in evals.iter().zip(owner).zip(&jobs) {
        let Some(b) = base.dirs.get(&job.dir) else {
            continue;
        };
        let d = &mut out[i];
        if e.error.is_some() {
            d.unevaluated.push(job.dir.clone());
            continue;
        }
        let norm = |v: &[String]| -> BTreeSet<String> {
            v.iter().map(|o| crate::kbuild_eval::normalize(o)).collect()
        };
        let (was, now) = (norm(&b.builtin), norm(&e.builtin));
        d.added.extend(now.difference(&was).cloned());
        d.removed.extend(was.difference(&now).cloned());
        for sub in e.subdirs_y.iter().filter(|x| !b.subdirs_y.contains(x)) {
            d.added.insert(format!("{sub}/"));
        }
        for sub in b.subdirs_y.iter().filter(|x| !e.subdirs_y.contains(x)) {
            d.removed.insert(format!("{sub}/"));
        }
    }
    out
}
