//! Kbuild's own answer to "what does this directory build": GNU make reads the directory's
//! Makefile and `scripts/Makefile.lib` (since 6.13 also the list expansion of
//! `scripts/Makefile.build`, see [`lists_section`]) exactly as `scripts/Makefile.build obj=<dir>` does, under a
//! given configuration, and prints obj-y/obj-m, the subdirectories it descends into and the parts
//! of every composite object (`real-search`, the same expansion that writes `<module>.mod`).
//! Many directories share one make process (their variables are reset between them), and the
//! batches run on all cores. A directory make cannot evaluate is reported with make's message.

use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::config::{self, Config};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A module as Kbuild computes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// `drivers/block/zram/zram.ko`
    pub path: String,
    /// Its objects, as Kbuild writes them into `<module>.mod` (`fs/xfs/libxfs/xfs_ag.o`).
    pub objects: Vec<String>,
}

/// One directory under one configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEval {
    pub dir: String,
    /// Objects linked into `built-in.a` or `lib.a` (composite objects replaced by their parts).
    pub builtin: Vec<String>,
    pub modules: Vec<Module>,
    /// Subdirectories entered through `obj-y` (their built-in code is linked).
    pub subdirs_y: Vec<String>,
    /// Subdirectories entered through `obj-m` only.
    pub subdirs_m: Vec<String>,
    /// Why make could not evaluate the directory.
    pub error: Option<String>,
}

/// A directory to evaluate, with symbols set differently from the configuration
/// (`None`: not set).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Job {
    pub dir: String,
    pub flips: Vec<(String, Option<String>)>,
}

impl Job {
    pub fn plain(dir: &str) -> Self {
        Job {
            dir: dir.to_string(),
            flips: Vec::new(),
        }
    }
}

/// A batch's job ids, what make printed for them (by position), and make's error.
type BatchResult = (Vec<usize>, BTreeMap<usize, DirEval>, Option<String>);

/// Evaluates Makefiles of a source tree under one configuration.
pub struct Evaluator {
    /// Where the Makefiles are (the source tree, or a Kbuild tree that ships them).
    pub srctree: Utf8PathBuf,
    pub srcarch: String,
    pub make_vars: Vec<String>,
    pub config: Config,
}

/// The makefile text every evaluation starts with; part of every cache key built on it.
mod walk;
pub use walk::{TreeEval, cached_walk, walk_path};

pub(crate) const PROLOGUE: &str = r#".DEFAULT_GOAL := __extmod_done
__extmod_done: ; @:
include $(EXTMOD_AUTOCONF)
obj :=
include $(srctree)/scripts/Kbuild.include
include $(srctree)/scripts/Makefile.compiler
# Kbuild.include defines it since 6.2; 6.1's Makefile.build computed the same file itself.
ifeq ($(origin kbuild-file),undefined)
kbuild-file = $(or $(wildcard $(src)/Kbuild),$(src)/Makefile)
endif
__extmod_lists := obj-y obj-m lib-y lib-m always-y always-m targets subdir-y subdir-m extra-y \
  asflags-y ccflags-y cppflags-y ldflags-y rustflags-y subdir-asflags-y subdir-ccflags-y \
  EXTRA_AFLAGS EXTRA_CFLAGS EXTRA_CPPFLAGS EXTRA_LDFLAGS hostprogs userprogs
define __extmod_begin
obj := $(1)
src := $(if $(filter .,$(1)),$(srctree),$(srctree)/$(1))
$(foreach v,$(__extmod_lists),$(eval $(v) :=))
endef
__extmod_pre = $(if $(filter .,$(obj)),,$(obj)/)
define __extmod_end
$(info @@D $(1))
$(info @@Y $(addprefix $(__extmod_pre),$(__extmod_ysub)))
$(info @@N $(addprefix $(__extmod_pre),$(__extmod_msub)))
$(info @@O $(filter %.o,$(real-obj-y)) $(lib-y))
$(foreach m,$(obj-m),$(info @@M $(m) $(addprefix $(__extmod_pre),$(call real-search,$(patsubst $(__extmod_pre)%,%,$(m)),.o,-objs -y -m))))
$(foreach v,$(filter %-y %-m %-objs %- %-n,$(.VARIABLES)),$(eval undefine $(v)))
endef
"#;

fn job_text(id: usize, job: &Job, base: &Config) -> String {
    let mut t = String::new();
    for (s, v) in &job.flips {
        match v {
            Some(v) => t.push_str(&format!("CONFIG_{s} := {v}\n")),
            None => t.push_str(&format!("undefine CONFIG_{s}\n")),
        }
    }
    t.push_str(&format!(
        "$(eval $(call __extmod_begin,{}))\ninclude $(kbuild-file)\n__extmod_ysub := $(filter %/,$(obj-y))\n__extmod_msub := $(filter %/,$(obj-m))\ninclude $(srctree)/scripts/Makefile.lib\ninclude $(EXTMOD_LISTS)\n$(eval $(call __extmod_end,{id}))\n",
        job.dir
    ));
    for (s, _) in &job.flips {
        match base.get(s) {
            Some(v) => t.push_str(&format!("CONFIG_{s} := {v}\n")),
            None => t.push_str(&format!("undefine CONFIG_{s}\n")),
        }
    }
    t
}

/// `a/b/../c` → `a/c` (a `..` above the top is dropped, as Kbuild's object paths never
/// climb out of the tree).
pub fn normalize(path: &str) -> String {
    collapse(path, false).unwrap_or_default()
}

/// `a/b/../c` → `a/c`; `None` when it climbs above the top.
pub fn normalize_within(path: &str) -> Option<String> {
    collapse(path, true)
}

fn collapse(path: &str, strict: bool) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() && strict {
                    return None;
                }
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

fn parse_output(stdout: &str, jobs: &[Job]) -> BTreeMap<usize, DirEval> {
    let mut out: BTreeMap<usize, DirEval> = BTreeMap::new();
    let mut cur: Option<usize> = None;
    let words = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_string).collect() };
    for line in stdout.lines() {
        let Some((tag, rest)) = line.split_at_checked(4) else {
            continue;
        };
        let rest = rest.trim_start();
        match tag {
            "@@D " => {
                let id: usize = rest.trim().parse().unwrap_or(usize::MAX);
                if let Some(job) = jobs.get(id) {
                    out.insert(
                        id,
                        DirEval {
                            dir: job.dir.clone(),
                            ..DirEval::default()
                        },
                    );
                    cur = Some(id);
                } else {
                    cur = None;
                }
            }
            _ => {
                let Some(e) = cur.and_then(|id| out.get_mut(&id)) else {
                    continue;
                };
                match tag {
                    "@@Y " => {
                        e.subdirs_y = words(rest).iter().map(|d| normalize(d)).collect();
                    }
                    "@@N " => {
                        e.subdirs_m = words(rest)
                            .iter()
                            .map(|d| normalize(d))
                            .filter(|d| !e.subdirs_y.contains(d))
                            .collect();
                    }
                    "@@O " => e.builtin = words(rest),
                    "@@M " => {
                        let w = words(rest);
                        if let Some((m, parts)) = w.split_first() {
                            let mut seen = BTreeSet::new();
                            let objects = parts
                                .iter()
                                .filter(|p| seen.insert(p.to_string()))
                                .cloned()
                                .collect();
                            e.modules.push(Module {
                                path: format!("{}.ko", m.trim_end_matches(".o")),
                                objects,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

fn make_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("warning:"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    let tail = lines
        .iter()
        .rev()
        .take(2)
        .rev()
        .cloned()
        .collect::<Vec<_>>();
    if tail.is_empty() {
        "make failed without a message".to_string()
    } else {
        tail.join(" / ")
    }
}

impl Evaluator {
    /// make reading `mk` with Kbuild's variables, in `cwd`.
    fn make(
        &self,
        mk: &std::path::Path,
        scratch: &Utf8Path,
        cwd: &std::path::Path,
    ) -> duct::Expression {
        let mut args: Vec<String> = vec![
            "-rR".into(),
            "-s".into(),
            "--no-print-directory".into(),
            "-f".into(),
            mk.display().to_string(),
            format!("srctree={}", self.srctree),
            "objtree=.".into(),
            format!("SRCARCH={}", self.srcarch),
            format!("EXTMOD_AUTOCONF={scratch}/auto.conf"),
            format!("EXTMOD_LISTS={scratch}/lists.mk"),
            "KBUILD_EXTMOD=".into(),
        ];
        args.extend(self.make_vars.iter().cloned());
        if !self.make_vars.iter().any(|v| v.starts_with("ARCH=")) {
            args.push(format!("ARCH={}", self.srcarch));
        }
        duct::cmd("make", &args)
            .dir(cwd)
            .env_remove("MAKEFLAGS")
            .env_remove("MAKELEVEL")
            .env_remove("MFLAGS")
    }

    /// The top Makefile's `head` for the top directory: the architecture's core-y, libs-y and
    /// drivers-y, as the in-tree build computes `ARCH_CORE`, `ARCH_LIB`, `ARCH_DRIVERS`.
    fn root_head() -> String {
        format!(
            "{PROLOGUE}core-y :=\ndrivers-y :=\nlibs-y := lib/\ninclude $(srctree)/arch/$(SRCARCH)/Makefile\nARCH_CORE := $(core-y)\nARCH_LIB := $(filter %/, $(libs-y))\nARCH_DRIVERS := $(drivers-y) $(drivers-m)\n"
        )
    }

    /// Make variables whose value the top Makefile or `scripts/Makefile.btf` computes
    /// differently for external builds, as the in-tree build has them, under this
    /// configuration (`NAME=value`):
    /// - `ARCH_CORE`, `ARCH_LIB`, `ARCH_DRIVERS`: the architecture's directories the top
    ///   `Kbuild` descends into, exported only in-tree (see [`crate::generation`]);
    /// - with `CONFIG_DEBUG_INFO_BTF`, `MODULE_PAHOLE_FLAGS` (6.12) and `RESOLVE_BTFIDS_FLAGS`
    ///   (7.x), where Makefile.btf defines them: external builds add a distilled base BTF
    ///   (`.BTF.base`) the in-tree modules do not have.
    pub fn intree_vars(&self) -> Result<Vec<String>, String> {
        let scratch = tempfile::Builder::new()
            .prefix("extmod-eval-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let sp = Utf8Path::from_path(scratch.path()).ok_or("temporary directory is not UTF-8")?;
        let mut text = Self::root_head();
        text.push_str("$(info @@ARCH_CORE=$(strip $(ARCH_CORE)))\n$(info @@ARCH_LIB=$(strip $(ARCH_LIB)))\n$(info @@ARCH_DRIVERS=$(strip $(ARCH_DRIVERS)))\n");
        text.push_str(
            "ifeq ($(CONFIG_DEBUG_INFO_BTF),y)\n-include $(srctree)/scripts/Makefile.btf\n\
             $(foreach v,MODULE_PAHOLE_FLAGS RESOLVE_BTFIDS_FLAGS,$(if $(filter $(v),$(.VARIABLES)),$(info @@$(v)=$(strip $($(v))))))\n\
             endif\n",
        );
        let mk = sp.join("arch.mk");
        std::fs::write(sp.join("auto.conf"), config::render(&self.config))
            .and_then(|_| std::fs::write(sp.join("lists.mk"), ""))
            .and_then(|_| std::fs::write(&mk, text))
            .map_err(|e| format!("{sp}: {e}"))?;
        let fin = kbuild_install::process::run(
            self.make(mk.as_std_path(), sp, scratch.path()),
            "make (architecture directories)",
            true,
        )
        .map_err(|e| e.to_string())?;
        if !fin.status.success() {
            return Err(make_error(&fin.stderr));
        }
        Ok(fin
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("@@"))
            .map(str::to_string)
            .collect())
    }
    fn kbuild_file(&self, dir: &str) -> bool {
        let d = if dir == "." {
            self.srctree.clone()
        } else {
            self.srctree.join(dir)
        };
        d.join("Kbuild").is_file() || d.join("Makefile").is_file()
    }

    /// Run one make process over `jobs` (ids are their positions); `head` goes before them.
    fn run_batch(
        &self,
        scratch: &Utf8Path,
        head: &str,
        jobs: &[Job],
    ) -> (BTreeMap<usize, DirEval>, Option<String>) {
        let mut text = String::from(head);
        text.push_str("__extmod_done_prologue := 1\n");
        for (i, j) in jobs.iter().enumerate() {
            text.push_str(&job_text(i, j, &self.config));
        }
        let dir = match tempfile::Builder::new().prefix("eval-").tempdir_in(scratch) {
            Ok(d) => d,
            Err(e) => return (BTreeMap::new(), Some(format!("{scratch}: {e}"))),
        };
        let mk = dir.path().join("batch.mk");
        if let Err(e) = std::fs::write(&mk, text) {
            return (BTreeMap::new(), Some(format!("{}: {e}", mk.display())));
        }
        let expr = self.make(&mk, scratch, dir.path());
        match kbuild_install::process::run(expr, "make (Makefile evaluation)", true) {
            Ok(fin) => {
                let out = parse_output(&fin.stdout, jobs);
                let err = (!fin.status.success()).then(|| make_error(&fin.stderr));
                (out, err)
            }
            Err(e) => (BTreeMap::new(), Some(e.to_string())),
        }
    }

    /// Evaluate every job; results in job order. Batches run in parallel; a failed batch is
    /// retried one directory at a time so that only the directories make rejects carry an error.
    pub fn eval(&self, jobs: &[Job]) -> Vec<DirEval> {
        let mut results: Vec<Option<DirEval>> = vec![None; jobs.len()];
        let Ok(scratch) = tempfile::Builder::new().prefix("extmod-eval-").tempdir() else {
            return jobs
                .iter()
                .map(|j| DirEval {
                    dir: j.dir.clone(),
                    error: Some("cannot create a temporary directory".into()),
                    ..DirEval::default()
                })
                .collect();
        };
        let scratch_path = Utf8PathBuf::from_path_buf(scratch.path().to_path_buf())
            .unwrap_or_else(|_| Utf8PathBuf::from("/tmp"));
        let _ = std::fs::write(scratch_path.join("auto.conf"), config::render(&self.config));
        let _ = std::fs::write(
            scratch_path.join("lists.mk"),
            lists_section(&self.srctree).unwrap_or_default(),
        );
        let mut runnable = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            if self.kbuild_file(&j.dir) {
                runnable.push(i);
            } else {
                results[i] = Some(DirEval {
                    dir: j.dir.clone(),
                    error: Some(format!("no Kbuild or Makefile in {}", j.dir)),
                    ..DirEval::default()
                });
            }
        }
        let (root, rest): (Vec<usize>, Vec<usize>) =
            runnable.into_iter().partition(|i| jobs[*i].dir == ".");
        // The top directory needs the architecture's core-y/libs-y/drivers-y.
        let root_head = Self::root_head();
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 16);
        let chunk = rest.len().div_ceil(workers).max(64);
        let mut groups: Vec<(String, Vec<usize>)> = rest
            .chunks(chunk)
            .map(|c| (PROLOGUE.to_string(), c.to_vec()))
            .collect();
        for r in root {
            groups.push((root_head.clone(), vec![r]));
        }
        let sp = &scratch_path;
        let done: Vec<BatchResult> = std::thread::scope(|scope| {
            let handles: Vec<_> = groups
                .iter()
                .map(|(head, ids)| {
                    scope.spawn(move || {
                        let batch: Vec<Job> = ids.iter().map(|i| jobs[*i].clone()).collect();
                        let (out, err) = self.run_batch(sp, head, &batch);
                        (ids.clone(), out, err)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("evaluation thread"))
                .collect()
        });
        let mut retry = Vec::new();
        for (ids, out, err) in done {
            match err {
                None => {
                    for (k, e) in out {
                        results[ids[k]] = Some(e);
                    }
                    for i in ids {
                        if results[i].is_none() {
                            retry.push(i);
                        }
                    }
                }
                Some(e) if ids.len() == 1 => {
                    results[ids[0]] = Some(DirEval {
                        dir: jobs[ids[0]].dir.clone(),
                        error: Some(e),
                        ..DirEval::default()
                    });
                }
                Some(_) => retry.extend(ids),
            }
        }
        // One directory per make process, on all cores.
        if !retry.is_empty() {
            for (i, e) in self.one_by_one(&scratch_path, jobs, &retry, workers) {
                results[i] = Some(e);
            }
        }
        results
            .into_iter()
            .zip(jobs)
            .map(|(r, j)| {
                r.unwrap_or_else(|| DirEval {
                    dir: j.dir.clone(),
                    error: Some("make printed nothing for it".into()),
                    ..DirEval::default()
                })
            })
            .collect()
    }

    /// Evaluate `ids` one directory per make process (after a batch failed), on `workers`
    /// threads.
    fn one_by_one(
        &self,
        sp: &Utf8Path,
        jobs: &[Job],
        retry: &[usize],
        workers: usize,
    ) -> Vec<(usize, DirEval)> {
        let root_head = Self::root_head();
        let root_head = root_head.as_str();
        let chunk = retry.len().div_ceil(workers).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = retry
                .chunks(chunk)
                .map(|ids| {
                    scope.spawn(move || {
                        ids.iter()
                            .map(|i| {
                                let head = if jobs[*i].dir == "." {
                                    root_head
                                } else {
                                    PROLOGUE
                                };
                                let (mut out, err) =
                                    self.run_batch(sp, head, std::slice::from_ref(&jobs[*i]));
                                let mut e = out.remove(&0).unwrap_or_else(|| DirEval {
                                    dir: jobs[*i].dir.clone(),
                                    ..DirEval::default()
                                });
                                if err.is_some() {
                                    e.error = err;
                                }
                                (*i, e)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("evaluation thread"))
                .collect()
        })
    }
}

/// Since 6.13 the expansion of the lists (`obj-m` with its directory, composite objects into
/// their parts: `real-search`, `multi-obj-m`, ...) is no longer in `scripts/Makefile.lib` but in
/// `scripts/Makefile.build`, between its inclusion of Makefile.lib and its rules. That part of
/// the tree's own Makefile.build, from "Figure out what we need to build" up to its check that
/// `obj` is set, is what the evaluation includes after Makefile.lib; `None` when Makefile.lib
/// still does the expansion (up to 6.12) or the markers are not found.
pub fn lists_section(srctree: &Utf8Path) -> Option<String> {
    // Asked for every cache key and every evaluation: read once per source tree and run.
    static SEEN: std::sync::Mutex<BTreeMap<Utf8PathBuf, Option<String>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut seen = SEEN.lock().expect("lists section cache");
    seen.entry(srctree.to_owned())
        .or_insert_with(|| read_lists_section(srctree))
        .clone()
}

fn read_lists_section(srctree: &Utf8Path) -> Option<String> {
    let lib = std::fs::read_to_string(srctree.join("scripts/Makefile.lib")).ok()?;
    if lib.contains("real-search =") {
        return None;
    }
    let build = std::fs::read_to_string(srctree.join("scripts/Makefile.build")).ok()?;
    let start = build.find("# Figure out what we need to build from the various variables")?;
    let len = build[start..].find("\nifndef obj\n")?;
    Some(build[start..start + len + 1].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_make_output() {
        let jobs = vec![Job::plain("fs/xfs")];
        let out = "noise\n@@D 0\n@@Y fs/xfs/sub/\n@@N fs/xfs/sub/ fs/xfs/m/\n@@O fs/xfs/a.o\n@@M fs/xfs/xfs.o fs/xfs/libxfs/xfs_ag.o fs/xfs/x.o fs/xfs/x.o\n";
        let e = &parse_output(out, &jobs)[&0];
        assert_eq!(e.subdirs_y, ["fs/xfs/sub"]);
        assert_eq!(e.subdirs_m, ["fs/xfs/m"]);
        assert_eq!(e.builtin, ["fs/xfs/a.o"]);
        assert_eq!(e.modules[0].path, "fs/xfs/xfs.ko");
        assert_eq!(
            e.modules[0].objects,
            ["fs/xfs/libxfs/xfs_ag.o", "fs/xfs/x.o"]
        );
        assert_eq!(normalize("drivers/a/../b/./c.o"), "drivers/b/c.o");
        assert_eq!(normalize("../a"), "a");
        assert_eq!(normalize_within("drivers/a/../b"), Some("drivers/b".into()));
        assert_eq!(normalize_within("a/../../b"), None);
    }
}
