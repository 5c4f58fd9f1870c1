//! What every step of a build shares: the trees, the output directories, the Kbuild
//! generation and the caches of Kbuild's answers.

use super::job::Job;
use crate::events::Refusal;
use crate::generation::Generation;
use crate::kbuild::KbuildTree;
use crate::modinst::Installer;
use crate::symbols::Index;
use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::tree::SourceTree;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Make variables (`NAME=value`), or why they could not be had.
pub(super) type MakeVars = Result<Vec<String>, String>;

pub(super) struct Ctx {
    pub(super) k: KbuildTree,
    pub(super) src: SourceTree,
    pub(super) objdir: Utf8PathBuf,
    pub(super) dest: Utf8PathBuf,
    pub(super) index: OnceLock<Index>,
    pub(super) allow_kernel_change: bool,
    pub(super) dry_run: bool,
    pub(super) external: bool,
    pub(super) installer: Installer,
    /// Trees make runs with read-only (S, K, the trees K was made from), where possible.
    pub(super) protected: Vec<Utf8PathBuf>,
    /// `--cc-launcher`: put before the compiler on make's command line (in no freshness key).
    pub(super) cc_launcher: Option<String>,
    /// How this kernel's Kbuild places external module builds.
    pub(super) generation: Generation,
    /// Kbuild's in-tree values of `ARCH_CORE`, the BTF flags, ... by configuration (`None`:
    /// the base), see [`Ctx::generation_vars`].
    pub(super) intree_vars: Mutex<HashMap<Option<Utf8PathBuf>, MakeVars>>,
    /// Kbuild's compiler probes answered once per build (see [`super::probes`]).
    pub(super) probes: Option<super::probes::Probes>,
}
impl Ctx {
    pub(super) fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            Index::cached(&self.src.path, &self.k.srcarch, &crate::cache::dir("index"))
        })
    }
    /// Kbuild's answer for the modules of `syms` under the base configuration, or under a
    /// variant's (its `auto.conf`).
    pub(super) fn kmap(&self, syms: &[String], variant: Option<&Utf8Path>) -> crate::modmap::Kmap {
        crate::modmap::for_symbols(self.index(), &self.evaluator(variant), syms)
    }
    /// Kbuild's Makefile evaluation under the base configuration or a variant's.
    pub(super) fn evaluator(&self, variant: Option<&Utf8Path>) -> crate::kbuild_eval::Evaluator {
        let mut ev = crate::modmap::evaluator(&self.k, &self.src.path);
        if let Some(dir) = variant
            && let Ok(text) = std::fs::read_to_string(dir.join("include/config/auto.conf"))
        {
            ev.config = kbuild_install::config::parse(&text);
        }
        ev
    }
    /// The make variables a build of `job` needs beyond the Kbuild tree's own, with their
    /// in-tree values (see [`crate::kbuild_eval::Evaluator::intree_vars`]): since 6.13 the
    /// architecture's directories that the top Makefile gives the top Kbuild only in-tree; with
    /// BTF, pahole's and resolve_btfids' flags without the external-only distilled base
    /// (unless `--external`).
    pub(super) fn generation_vars(&self, job: &Job) -> MakeVars {
        let btf = !self.external && self.k.value("DEBUG_INFO_BTF") == Some("y");
        if !self.generation.needs_arch_dirs() && !btf {
            return Ok(Vec::new());
        }
        let key = job.variant.as_ref().map(|v| v.dir.clone());
        let mut cache = self.intree_vars.lock().expect("in-tree variables lock");
        let vars = cache
            .entry(key.clone())
            .or_insert_with(|| {
                self.evaluator(key.as_deref())
                    .intree_vars()
                    .map_err(|e| format!("cannot evaluate the architecture's Makefile: {e}"))
            })
            .clone()?;
        Ok(vars
            .into_iter()
            .filter(|v| {
                if v.starts_with("ARCH_") {
                    self.generation.needs_arch_dirs()
                } else {
                    btf
                }
            })
            .collect())
    }
    pub(super) fn pkg_dir(&self, name: &str) -> Utf8PathBuf {
        self.objdir.join(name)
    }
    pub(super) fn tree(&self, name: &str) -> Utf8PathBuf {
        self.objdir.join(name).join("tree")
    }
    /// Where make writes the package's objects (the overlay up to 6.12).
    pub(super) fn out(&self, name: &str) -> Utf8PathBuf {
        self.generation
            .out_root(&self.tree(name), &self.pkg_dir(name))
    }
    pub(super) fn staged(&self, name: &str) -> Utf8PathBuf {
        self.dest.join(name)
    }
    pub(super) fn modules_dir(&self, root: &Utf8Path) -> Utf8PathBuf {
        root.join("lib/modules")
            .join(&self.k.kernelrelease)
            .join("kernel")
    }
    /// The environment a launcher needs so that its cache serves every package: ccache's base
    /// directory is D, so the absolute paths of each package's overlay (its own directory in D)
    /// hash alike. A value the user set wins.
    pub(super) fn launcher_env(&self) -> Vec<(&'static str, String)> {
        let is_ccache = self
            .cc_launcher
            .as_deref()
            .is_some_and(|l| l.rsplit('/').next() == Some("ccache"));
        if is_ccache && std::env::var_os("CCACHE_BASEDIR").is_none() {
            vec![("CCACHE_BASEDIR", self.objdir.to_string())]
        } else {
            Vec::new()
        }
    }
}

pub(super) fn refusal(code: u8, cause: String, hint: &str) -> Refusal {
    Refusal {
        code,
        cause,
        hint: hint.to_string(),
    }
}
