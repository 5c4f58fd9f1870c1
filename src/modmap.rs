//! Which modules a symbol builds, as Kbuild computes it. The text index (`symbols`) only names
//! the candidate directories (those whose Makefiles mention `CONFIG_X`); make evaluates each of
//! them with the symbol set to `m` and to `n` on top of the configuration, and the modules that
//! appear only with `m` are the symbol's. A subdirectory that `m` makes Kbuild enter contributes
//! the modules its own symbols do not gate (`obj-m += foo.o` inside `obj-$(CONFIG_X) += sub/`).

use crate::kbuild_eval::{DirEval, Evaluator, Job, Module, TreeEval};
use crate::symbols::{Index, SymType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SymbolModules {
    pub modules: Vec<Module>,
    /// Candidate directories make could not evaluate, with make's message.
    pub errors: Vec<(String, String)>,
}

fn module_paths(e: &DirEval) -> BTreeSet<&str> {
    e.modules.iter().map(|m| m.path.as_str()).collect()
}

fn subdirs(e: &DirEval) -> BTreeSet<&String> {
    e.subdirs_y.iter().chain(&e.subdirs_m).collect()
}

/// The modules of each tristate symbol in `syms` (without `CONFIG_`), evaluated under `ev`'s
/// configuration; `base` is the walk of that configuration (its directories are reused).
///
/// Per candidate directory, make evaluates it with all the requested symbols that its Makefiles
/// mention set to `m`, and with all of them unset: the modules and subdirectories that differ
/// belong to those symbols. A module is given to the symbols whose own Makefile lines name it;
/// where the text names none (computed names) and for subdirectories, make evaluates the
/// directory once per symbol.
pub fn modules_of(
    index: &Index,
    ev: &Evaluator,
    base: &TreeEval,
    syms: &[String],
) -> BTreeMap<String, SymbolModules> {
    let r = Rounds {
        index,
        ev,
        base,
        trace: std::env::var_os("EXTMOD_EVAL_TRACE").is_some(),
    };
    let mut out: BTreeMap<String, SymbolModules> = syms
        .iter()
        .map(|s| (s.clone(), SymbolModules::default()))
        .collect();
    // Directory -> requested symbols its Makefiles mention.
    let mut by_dir: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in syms.iter().filter(|s| r.tristate(s)) {
        for d in index.mentions(s) {
            by_dir.entry(d.as_str()).or_default().push(s.as_str());
        }
    }
    let single = r.all_on_all_off(&by_dir, &mut out);
    let entered = r.one_at_a_time(&single, &mut out);
    r.entered_subdirectories(&entered, &by_dir, &mut out);
    for v in out.values_mut() {
        v.modules.sort_by(|a, b| a.path.cmp(&b.path));
        v.modules.dedup_by(|a, b| a.path == b.path);
    }
    out
}

/// A round's answers: job `i`'s, or the base walk's for directory `d`.
struct Evaluated<'a> {
    evals: Vec<DirEval>,
    base: &'a TreeEval,
}

impl Evaluated<'_> {
    fn get(&self, i: Option<usize>, d: &str) -> Option<&DirEval> {
        match i {
            Some(i) => self.evals.get(i),
            None => self.base.dirs.get(d),
        }
    }
}

/// What the rounds of evaluation share.
struct Rounds<'a> {
    index: &'a Index,
    ev: &'a Evaluator,
    base: &'a TreeEval,
    trace: bool,
}

impl Rounds<'_> {
    fn tristate(&self, s: &str) -> bool {
        self.index.sym_type(s) == Some(SymType::Tristate)
    }

    /// One evaluation job per needed flip of `sym` (to `=m`, to unset); `None` where the base
    /// walk already has the answer.
    fn flips(
        &self,
        dir: &str,
        list: &[&str],
        jobs: &mut Vec<Job>,
    ) -> (Option<usize>, Option<usize>) {
        let (ev, base) = (self.ev, self.base);
        let reached = base.dirs.contains_key(dir);
        let mut slot = |v: Option<&str>| {
            let same = reached
                && list
                    .iter()
                    .all(|s| ev.config.get(*s).map(String::as_str) == v);
            (!same).then(|| {
                jobs.push(Job {
                    dir: dir.to_string(),
                    flips: list
                        .iter()
                        .map(|s| (s.to_string(), v.map(str::to_string)))
                        .collect(),
                });
                jobs.len() - 1
            })
        };
        let on = slot(Some("m"));
        let off = slot(None);
        (on, off)
    }

    /// One round of evaluation; its answers, with the base walk's where no job was needed.
    fn evaluate(&self, round: u8, jobs: &[Job]) -> Evaluated<'_> {
        let t0 = std::time::Instant::now();
        let evals = self.ev.eval(jobs);
        if self.trace {
            eprintln!(
                "eval round {round}: {} jobs in {:?}",
                jobs.len(),
                t0.elapsed()
            );
        }
        Evaluated {
            evals,
            base: self.base,
        }
    }

    /// Round 1: in each directory, every requested symbol it mentions on, then off. Modules
    /// that appear go to the symbols whose Makefile lines name them; returns the (symbol,
    /// directory) pairs that need asking one symbol at a time (a module no line names, a
    /// subdirectory entered).
    fn all_on_all_off(
        &self,
        by_dir: &BTreeMap<&str, Vec<&str>>,
        out: &mut BTreeMap<String, SymbolModules>,
    ) -> BTreeSet<(String, String)> {
        let (index, ev, base, trace) = (self.index, self.ev, self.base, self.trace);
        let mut jobs: Vec<Job> = Vec::new();
        let mut slots: Vec<(&str, Option<usize>, Option<usize>)> = Vec::new();
        for (d, list) in by_dir {
            let (on, off) = self.flips(d, list, &mut jobs);
            slots.push((d, on, off));
        }
        let evals = self.evaluate(1, &jobs);
        let mut named: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        // Round 2 jobs: (symbol, directory) evaluated alone.
        let mut single: BTreeSet<(String, String)> = BTreeSet::new();
        for (d, on, off) in &slots {
            let list = &by_dir[d];
            let (Some(on_e), Some(off_e)) = (evals.get(*on, d), evals.get(*off, d)) else {
                continue;
            };
            for e in [on_e, off_e] {
                if let Some(err) = &e.error {
                    for s in list {
                        let entry = out.get_mut(*s).expect("requested");
                        if !entry.errors.iter().any(|(x, _)| x == d) {
                            entry.errors.push((d.to_string(), err.clone()));
                        }
                    }
                }
            }
            let off_mods = module_paths(off_e);
            let base_mods = base.dirs.get(*d).map(module_paths);
            for m in on_e
                .modules
                .iter()
                .filter(|m| !off_mods.contains(m.path.as_str()))
            {
                let owners: Vec<&str> = list
                    .iter()
                    .filter(|s| {
                        named
                            .entry(s)
                            .or_insert_with(|| index.modules(s))
                            .contains(&m.path)
                    })
                    .copied()
                    .collect();
                if owners.is_empty() {
                    if trace {
                        eprintln!("ownerless module {} in {d}", m.path);
                    }
                    let stem = m.path.rsplit('/').next().unwrap_or(&m.path);
                    for s in on_lines(ev, d, list, stem.trim_end_matches(".ko")) {
                        single.insert((s.to_string(), d.to_string()));
                    }
                }
                for s in owners {
                    // A symbol that is =m in the configuration builds only what the configuration
                    // builds in this directory.
                    let base_m = ev.config.get(s).map(String::as_str) == Some("m");
                    if base_m
                        && let Some(b) = &base_mods
                        && !b.contains(m.path.as_str())
                    {
                        continue;
                    }
                    out.get_mut(s).expect("requested").push(m);
                }
            }
            let off_subs = subdirs(off_e);
            for sub in subdirs(on_e).into_iter().filter(|s| !off_subs.contains(s)) {
                let gate: Vec<String> = index
                    .gates(sub)
                    .last()
                    .filter(|g| g.dir == *sub)
                    .map(|g| g.symbols.clone())
                    .unwrap_or_default();
                let via: Vec<&&str> = list
                    .iter()
                    .filter(|s| gate.iter().any(|g| g == **s))
                    .collect();
                if via.is_empty() {
                    if trace {
                        eprintln!("subdirectory {sub} of {d} entered without a gate line");
                    }
                    let name = sub.rsplit('/').next().unwrap_or(sub);
                    for s in on_lines(ev, d, list, &format!("{name}/")) {
                        single.insert((s.to_string(), d.to_string()));
                    }
                } else {
                    for s in via {
                        single.insert((s.to_string(), d.to_string()));
                    }
                }
            }
        }
        if trace {
            let mut per: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, d) in &single {
                *per.entry(d.as_str()).or_default() += 1;
            }
            let mut v: Vec<_> = per.into_iter().collect();
            v.sort_by_key(|x| std::cmp::Reverse(x.1));
            eprintln!("single jobs by directory: {:?}", &v[..v.len().min(15)]);
        }
        single
    }

    /// Round 2: one symbol set to m and unset, everything else as configured. Returns the
    /// subdirectories each symbol makes Kbuild enter (symbol, subdirectory, its directory).
    fn one_at_a_time(
        &self,
        single: &BTreeSet<(String, String)>,
        out: &mut BTreeMap<String, SymbolModules>,
    ) -> Vec<(String, String)> {
        let mut jobs2: Vec<Job> = Vec::new();
        let mut want2: Vec<(String, String, Option<usize>, Option<usize>)> = Vec::new();
        for (s, d) in single {
            let (on, off) = self.flips(d, &[s.as_str()], &mut jobs2);
            want2.push((s.clone(), d.clone(), on, off));
        }
        let evals2 = self.evaluate(2, &jobs2);
        let mut entered = Vec::new();
        for (s, d, on, off) in &want2 {
            let (Some(one), Some(off_e)) = (evals2.get(*on, d), evals2.get(*off, d)) else {
                continue;
            };
            let off_mods = module_paths(off_e);
            for m in one
                .modules
                .iter()
                .filter(|m| !off_mods.contains(m.path.as_str()))
            {
                out.get_mut(s).expect("requested").push(m);
            }
            let off_subs = subdirs(off_e);
            for sub in subdirs(one) {
                if !off_subs.contains(sub) {
                    entered.push((s.clone(), sub.clone()));
                }
            }
        }
        entered
    }

    /// Round 3: subdirectories a symbol makes Kbuild enter, with their own symbols off: what
    /// they build then is the symbol's.
    fn entered_subdirectories(
        &self,
        entered: &[(String, String)],
        by_dir: &BTreeMap<&str, Vec<&str>>,
        out: &mut BTreeMap<String, SymbolModules>,
    ) {
        let (index, ev, trace) = (self.index, self.ev, self.trace);
        let mut jobs3: Vec<Job> = Vec::new();
        let mut want3: Vec<(String, usize)> = Vec::new();
        for (s, sub) in entered {
            if by_dir.contains_key(sub.as_str()) {
                continue;
            }
            let mut flips: Vec<(String, Option<String>)> = index
                .mentioned_in(sub)
                .into_iter()
                .filter(|x| self.tristate(x) && *x != s)
                .map(|x| (x.clone(), None))
                .collect();
            flips.push((s.clone(), Some("m".into())));
            jobs3.push(Job {
                dir: sub.clone(),
                flips,
            });
            want3.push((s.clone(), jobs3.len() - 1));
        }
        let evals3 = ev.eval(&jobs3);
        if trace {
            eprintln!("eval round 3: {} jobs", jobs3.len());
        }
        for (s, i) in want3 {
            let e = &evals3[i];
            let entry = out.get_mut(&s).expect("requested");
            if let Some(err) = &e.error {
                entry.errors.push((e.dir.clone(), err.clone()));
            }
            for m in &e.modules {
                entry.push(m);
            }
        }
    }
}

/// The symbols of `list` that share a Makefile line of `dir` with `word` (a module's name, a
/// subdirectory): where make is asked about them one at a time. All of `list` when none does.
fn on_lines<'a>(ev: &Evaluator, dir: &str, list: &[&'a str], word: &str) -> Vec<&'a str> {
    let base = if dir == "." {
        ev.srctree.clone()
    } else {
        ev.srctree.join(dir)
    };
    let text = ["Kbuild", "Makefile"]
        .iter()
        .find_map(|f| std::fs::read_to_string(base.join(f)).ok())
        .unwrap_or_default()
        .replace("\\\n", " ");
    let word_stem = word.trim_end_matches('/');
    let found: Vec<&'a str> = list
        .iter()
        .filter(|s| {
            let sym = format!("CONFIG_{s}");
            text.lines().any(|l| {
                l.contains(word_stem)
                    && l.match_indices(&sym).any(|(i, _)| {
                        !l[i + sym.len()..]
                            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    })
            })
        })
        .copied()
        .collect();
    if found.is_empty() {
        list.to_vec()
    } else {
        found
    }
}

impl SymbolModules {
    fn push(&mut self, m: &Module) {
        if !self.modules.iter().any(|x| x.path == m.path) {
            self.modules.push(m.clone());
        }
    }
}

/// What `which`/`map` need of the base configuration's walk (cached apart from the walk so that a
/// warm query reads little).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WalkSummary {
    /// Directories Kbuild enters.
    pub reached: BTreeSet<String>,
    /// The modules the configuration builds.
    pub built: BTreeSet<String>,
    /// Directories make could not evaluate, with its message.
    pub errors: Vec<(String, String)>,
}

impl WalkSummary {
    fn of(t: &TreeEval) -> Self {
        WalkSummary {
            reached: t.dirs.keys().cloned().collect(),
            built: t.modules().map(|m| m.path.clone()).collect(),
            errors: t
                .errors()
                .into_iter()
                .map(|(d, e)| (d.to_string(), e.to_string()))
                .collect(),
        }
    }
}

/// The base configuration's walk (summarised) and the modules of the symbols asked about.
pub struct Kmap {
    pub base: WalkSummary,
    pub syms: BTreeMap<String, SymbolModules>,
    /// The full walk, read when the objects of a module no symbol asked about are wanted.
    walk: std::sync::OnceLock<Option<TreeEval>>,
    walk_path: Option<camino::Utf8PathBuf>,
}

impl Kmap {
    fn new(base: WalkSummary, syms: BTreeMap<String, SymbolModules>) -> Self {
        Kmap {
            base,
            syms,
            walk: std::sync::OnceLock::new(),
            walk_path: None,
        }
    }

    pub fn modules(&self, sym: &str) -> &[Module] {
        self.syms
            .get(sym.strip_prefix("CONFIG_").unwrap_or(sym))
            .map_or(&[], |s| s.modules.as_slice())
    }
    pub fn paths(&self, sym: &str) -> Vec<String> {
        self.modules(sym).iter().map(|m| m.path.clone()).collect()
    }
    /// The symbols whose modules include `module`.
    pub fn symbols_for(&self, module: &str) -> Vec<String> {
        self.syms
            .iter()
            .filter(|(_, s)| s.modules.iter().any(|m| m.path == module))
            .map(|(s, _)| s.clone())
            .collect()
    }
    /// The objects of a module a symbol asked about, or of one the base configuration builds.
    pub fn objects(&self, module: &str) -> Option<&[String]> {
        if let Some(m) = self
            .syms
            .values()
            .flat_map(|s| s.modules.iter())
            .find(|m| m.path == module)
        {
            return Some(m.objects.as_slice());
        }
        self.walk
            .get_or_init(|| {
                let data = std::fs::read(self.walk_path.as_ref()?).ok()?;
                serde_json::from_slice(&data).ok()
            })
            .as_ref()?
            .modules()
            .find(|m| m.path == module)
            .map(|m| m.objects.as_slice())
    }
}

/// The evaluator for K's base configuration, reading the Makefiles of `srctree`.
pub fn evaluator(k: &crate::kbuild::KbuildTree, srctree: &camino::Utf8Path) -> Evaluator {
    Evaluator {
        srctree: srctree.to_owned(),
        srcarch: k.srcarch.clone(),
        make_vars: k.make_vars.clone(),
        config: kbuild_install::config::parse(&k.auto_conf),
    }
}

fn key(index: &Index, ev: &Evaluator) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        ev.srctree.as_str(),
        &ev.srcarch,
        &ev.make_vars.join(" "),
        &kbuild_install::config::render(&ev.config),
        &index.digest(),
        env!("CARGO_PKG_VERSION"),
        crate::kbuild_eval::PROLOGUE,
        &crate::kbuild_eval::lists_section(&ev.srctree).unwrap_or_default(),
        "map-4",
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    format!("{:x}", h.finalize())[..20].to_string()
}

fn store<T: Serialize>(cache: &camino::Utf8Path, path: &camino::Utf8Path, value: &T) {
    if std::fs::create_dir_all(cache).is_ok()
        && let Ok(tmp) = tempfile::NamedTempFile::new_in(cache)
        && serde_json::to_writer(std::io::BufWriter::new(tmp.as_file()), value).is_ok()
    {
        let _ = tmp.persist(path);
    }
}

/// The map of every tristate symbol (cached by configuration and Makefile state): `map-*.json`
/// for the whole table, `map-*.lines` (one symbol per line) and `summary-*.json` for quick
/// queries.
pub fn full(index: &Index, ev: &Evaluator) -> Kmap {
    let cache = crate::cache::dir("kbuild-eval");
    let k = key(index, ev);
    let path = cache.join(format!("map-{k}.json"));
    let summary_path = cache.join(format!("summary-{k}.json"));
    if let Ok(data) = std::fs::read(&path)
        && let Ok(syms) = serde_json::from_slice::<BTreeMap<String, SymbolModules>>(&data)
        && let Ok(sdata) = std::fs::read(&summary_path)
        && let Ok(summary) = serde_json::from_slice::<WalkSummary>(&sdata)
    {
        return Kmap::new(summary, syms);
    }
    let base = crate::kbuild_eval::cached_walk(ev, &index.digest(), &cache);
    let all: Vec<String> = index.tristates().cloned().collect();
    let syms = modules_of(index, ev, &base, &all);
    store(&cache, &path, &syms);
    let lines: String = syms
        .iter()
        .filter_map(|(s, m)| Some(format!("{s}\t{}\n", serde_json::to_string(m).ok()?)))
        .collect();
    let _ = kbuild_install::fsutil::write_atomic(
        &cache.join(format!("map-{k}.lines")),
        lines.as_bytes(),
    );
    let summary = WalkSummary::of(&base);
    store(&cache, &summary_path, &summary);
    Kmap::new(summary, syms)
}

/// The map of some symbols: from the full map when it is cached, else evaluated for them alone.
pub fn for_symbols(index: &Index, ev: &Evaluator, syms: &[String]) -> Kmap {
    let cache = crate::cache::dir("kbuild-eval");
    let k = key(index, ev);
    let syms: Vec<String> = syms
        .iter()
        .map(|s| s.strip_prefix("CONFIG_").unwrap_or(s).to_string())
        .collect();
    let walk_path = crate::kbuild_eval::walk_path(ev, &index.digest(), &cache);
    if let Ok(text) = std::fs::read_to_string(cache.join(format!("map-{k}.lines")))
        && let Ok(sdata) = std::fs::read(cache.join(format!("summary-{k}.json")))
        && let Ok(summary) = serde_json::from_slice::<WalkSummary>(&sdata)
    {
        let mut found = BTreeMap::new();
        for line in text.lines() {
            if let Some((s, json)) = line.split_once('\t')
                && syms.iter().any(|x| x == s)
                && let Ok(m) = serde_json::from_str::<SymbolModules>(json)
            {
                found.insert(s.to_string(), m);
            }
        }
        let mut km = Kmap::new(summary, found);
        km.walk_path = Some(walk_path);
        return km;
    }
    let base = crate::kbuild_eval::cached_walk(ev, &index.digest(), &cache);
    let map = modules_of(index, ev, &base, &syms);
    let km = Kmap::new(WalkSummary::of(&base), map);
    let _ = km.walk.set(Some(base));
    km
}
