//! The build engine: plans packages, builds them with `make -C <overlay> M=<dir> <goals>` in
//! split object directories sharing one jobserver, stages the results, and emits [`Event`]s.

use crate::error::{Error, code};
use crate::events::{Event, PackageResult, Phases, Refusal, Status};
use crate::generation::Generation;
use crate::kbuild::{KbuildTree, Kind};
use crate::modinst::{InstalledModule, Installer};
use crate::overlay::{self, Layers};
use crate::package::{KconfigReq, Package};
use crate::symbols::{Index, SymType, module_dir};
use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::process::{self, check_interrupted, interrupted};
use kbuild_install::tree::{SourceTree, release_matches};
use kbuild_install::{Error as KError, elf};
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock, mpsc};
use std::time::{Instant, UNIX_EPOCH};

const STATE: &str = "state.json";
/// modpost as the in-tree build runs it (see [`write_modpost`]), in `D/<package>/`.
const MODPOST: &str = "modpost-intree";
const STATE_FORMAT: u32 = 4;
/// More make slots than this would only fill the jobserver pipe (64 KiB) and block.
const MAX_JOBS: usize = 1024;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub kbuild: Utf8PathBuf,
    pub srctree: Utf8PathBuf,
    pub objdir: Utf8PathBuf,
    pub dest: Utf8PathBuf,
    pub packages: Vec<Package>,
    pub jobs: Option<usize>,
    pub keep_going: bool,
    pub dry_run: bool,
    /// Build packages whose variant changes built-in code (labelled as not matching).
    pub allow_kernel_change: bool,
    /// make's jobserver, when extmod runs under make (from a `+` recipe line).
    pub inherited_jobserver: Option<jobserver::Client>,
    /// Run modpost as for an external module (`-e`: no `intree: Y` modinfo).
    pub external: bool,
    /// The `modules_install` steps (strip, sign, compress, depmod).
    pub install: crate::modinst::InstallOptions,
    /// Also install every package's modules into one tree (`INSTALL_MOD_PATH`) with depmod.
    pub install_mod_path: Option<Utf8PathBuf>,
    /// Fail at once when another run holds a package's lock, instead of waiting.
    pub no_wait: bool,
}

/// One `make` call: the modules of a package in one directory.
#[derive(Debug, Clone)]
struct Unit {
    dir: String,
    goals: Vec<String>,
}

#[derive(Debug, Clone)]
struct Job {
    pkg: Package,
    modules: Vec<String>,
    units: Vec<Unit>,
    key: String,
    notes: Vec<String>,
    variant: Option<crate::variant::Variant>,
    /// Directories the build writes into: the units' and those of every object of the modules
    /// (composite parts in subdirectories or `../`); real directories in the overlay.
    write_dirs: BTreeSet<String>,
    /// Inputs whose content changed since the last build (real paths): their dependent outputs
    /// are removed before make runs.
    changed: Vec<String>,
}

enum Plan {
    Done(PackageResult),
    Build(Job),
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    format: u32,
    key: String,
    modules: Vec<String>,
    /// Files the build read (real paths), with size, mtime, inode and content hash.
    inputs: Vec<crate::fresh::Input>,
    /// The build's notes (e.g. the --allow-kernel-change label), repeated when fresh.
    #[serde(default)]
    notes: Vec<String>,
    /// The staged files, as `modules_install` left them.
    installed: Vec<InstalledModule>,
}

/// Make variables (`NAME=value`), or why they could not be had.
type MakeVars = Result<Vec<String>, String>;

struct Ctx {
    k: KbuildTree,
    src: SourceTree,
    objdir: Utf8PathBuf,
    dest: Utf8PathBuf,
    index: OnceLock<Index>,
    allow_kernel_change: bool,
    dry_run: bool,
    external: bool,
    installer: Installer,
    /// Trees make runs with read-only (S, K, the trees K was made from), where possible.
    protected: Vec<Utf8PathBuf>,
    /// How this kernel's Kbuild places external module builds.
    generation: Generation,
    /// `ARCH_CORE=...` etc. by configuration (`None`: the base), for 6.13+ builds.
    arch_dirs: Mutex<HashMap<Option<Utf8PathBuf>, MakeVars>>,
}

impl Ctx {
    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            Index::cached(&self.src.path, &self.k.srcarch, &crate::cache::dir("index"))
        })
    }
    /// Kbuild's answer for the modules of `syms` under the base configuration, or under a
    /// variant's (its `auto.conf`).
    fn kmap(&self, syms: &[String], variant: Option<&Utf8Path>) -> crate::modmap::Kmap {
        crate::modmap::for_symbols(self.index(), &self.evaluator(variant), syms)
    }
    /// Kbuild's Makefile evaluation under the base configuration or a variant's.
    fn evaluator(&self, variant: Option<&Utf8Path>) -> crate::kbuild_eval::Evaluator {
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
    fn generation_vars(&self, job: &Job) -> MakeVars {
        let btf = !self.external && self.k.value("DEBUG_INFO_BTF") == Some("y");
        if !self.generation.needs_arch_dirs() && !btf {
            return Ok(Vec::new());
        }
        let key = job.variant.as_ref().map(|v| v.dir.clone());
        let mut cache = self.arch_dirs.lock().expect("arch dirs lock");
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
    fn pkg_dir(&self, name: &str) -> Utf8PathBuf {
        self.objdir.join(name)
    }
    fn tree(&self, name: &str) -> Utf8PathBuf {
        self.objdir.join(name).join("tree")
    }
    /// Where make writes the package's objects (the overlay up to 6.12).
    fn out(&self, name: &str) -> Utf8PathBuf {
        self.generation
            .out_root(&self.tree(name), &self.pkg_dir(name))
    }
    fn staged(&self, name: &str) -> Utf8PathBuf {
        self.dest.join(name)
    }
    fn modules_dir(&self, root: &Utf8Path) -> Utf8PathBuf {
        root.join("lib/modules")
            .join(&self.k.kernelrelease)
            .join("kernel")
    }
}

fn refusal(code: u8, cause: String, hint: &str) -> Refusal {
    Refusal {
        code,
        cause,
        hint: hint.to_string(),
    }
}

/// Run a build; returns one result per package, in dependency order.
pub fn run(
    opts: &BuildOptions,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<Vec<PackageResult>, Error> {
    if opts.packages.is_empty() {
        return Err(Error::NoPackages);
    }
    let objdir = kbuild_install::install::absolute(&opts.objdir)?;
    let dest = kbuild_install::install::absolute(&opts.dest)?;
    for p in [&opts.kbuild, &opts.srctree, &objdir, &dest] {
        crate::error::check_kbuild_path(p)?;
    }
    let k = KbuildTree::open(&opts.kbuild)?;
    let src = SourceTree::open(&opts.srctree)?;
    if !release_matches(&k.recorded_release, &src.kernelversion) {
        return Err(KError::VersionMismatch {
            srctree: src.path.clone(),
            src_version: src.kernelversion.clone(),
            objtree: k.path.clone(),
            obj_release: k.recorded_release.clone(),
        }
        .into());
    }
    // D and OUT are written and cleaned: never inside S, K or the trees K was made from, never
    // holding them, and apart from each other.
    let objdir = kbuild_install::tree::resolve(&objdir)?;
    let dest = kbuild_install::tree::resolve(&dest)?;
    let protected = crate::guard::protected(&k, Some(src.path.as_path()));
    for p in [&objdir, &dest] {
        crate::guard::check_outside(p, &protected)?;
    }
    crate::guard::check_apart(&objdir, &dest)?;
    let cc = k.compiler();
    for (tool, role) in [
        ("make", "GNU make"),
        (cc.as_str(), "the kernel's C compiler (CC)"),
    ] {
        which::which(tool).map_err(|_| KError::MissingTool {
            tool: tool.to_string(),
            role,
        })?;
    }
    k.check_compiler_target(&cc)?;
    if let Some(w) = k.untested_version() {
        emit(Event::Warning(w));
    }
    let install_root = match &opts.install_mod_path {
        Some(p) => Some(output_dir(p, &protected, &objdir, &dest)?),
        None => None,
    };
    let installer = Installer::resolve(&k, &opts.install)?;
    let packages = crate::package::order(opts.packages.clone())?;
    let generation = Generation::of_release(&k.kernelrelease);
    let ctx = Ctx {
        k,
        src,
        objdir,
        dest,
        index: OnceLock::new(),
        allow_kernel_change: opts.allow_kernel_change,
        dry_run: opts.dry_run,
        external: opts.external,
        installer,
        protected: protected.into_iter().map(|(p, _)| p).collect(),
        generation,
        arch_dirs: Mutex::new(HashMap::new()),
    };

    // Locks (per package, in D and OUT) before reading any state; a dry run writes nothing.
    let _locks = if opts.dry_run {
        None
    } else {
        for d in [&ctx.objdir, &ctx.dest] {
            std::fs::create_dir_all(d).map_err(|e| KError::DestNotWritable {
                path: d.to_path_buf(),
                source: e,
            })?;
        }
        let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
        let locks =
            crate::runlock::take(&ctx.k.path, &ctx.objdir, &ctx.dest, &names, opts.no_wait)?;
        crate::runlock::clean_stale(&ctx.dest, &names);
        Some(locks)
    };

    // Plan. A package whose dependency is rebuilt in this run is rebuilt after it.
    let mut stat_cache = crate::fresh::Cache::default();
    let mut plans = Vec::new();
    let mut rebuilt: BTreeSet<String> = BTreeSet::new();
    for pkg in &packages {
        let force = pkg.depends.iter().any(|d| rebuilt.contains(d));
        let p = plan(&ctx, pkg, &mut stat_cache, force)?;
        if matches!(p, Plan::Build(_)) {
            rebuilt.insert(pkg.name.clone());
        }
        plans.push(p);
    }
    let to_build = plans.iter().filter(|p| matches!(p, Plan::Build(_))).count();
    emit(Event::Planned {
        packages: plans.len(),
        to_build,
    });

    if opts.dry_run {
        let mut out = Vec::new();
        for p in plans {
            let r = match p {
                Plan::Done(r) => r,
                Plan::Build(job) => {
                    let mut r = PackageResult::new(&job.pkg.name, Status::Planned);
                    r.commands = job
                        .units
                        .iter()
                        .map(|u| command_line(&ctx, &job, u, &[]))
                        .collect();
                    r.modules = job.modules.clone();
                    r.notes = job.notes.clone();
                    r
                }
            };
            emit(Event::Finished(Box::new(r.clone())));
            out.push(r);
        }
        return Ok(out);
    }
    let results = execute(&ctx, plans, opts, emit)?;
    if let Some(root) = &install_root {
        install_all(&ctx, root, &results)?;
    }
    Ok(results)
}

fn package_key(ctx: &Ctx, pkg: &Package) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(pkg).expect("package serializes"));
    h.update(ctx.k.identity.as_bytes());
    h.update(ctx.k.path.as_str().as_bytes());
    h.update(ctx.src.path.as_str().as_bytes());
    // A package built with --allow-kernel-change is not fresh for a run without it.
    h.update([u8::from(ctx.allow_kernel_change), u8::from(ctx.external)]);
    h.update(ctx.installer.identity.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(STATE_FORMAT.to_le_bytes());
    // Make variables from the environment reach the command lines (KCFLAGS, LLVM, CC, ...).
    for (k, v) in crate::guard::command_line_env() {
        h.update(format!("{k}={v}\0").as_bytes());
    }
    format!("{:x}", h.finalize())
}

fn plan(
    ctx: &Ctx,
    pkg: &Package,
    cache: &mut crate::fresh::Cache,
    force: bool,
) -> Result<Plan, Error> {
    let key = package_key(ctx, pkg);
    // Fresh: same inputs (by content) as the last successful build, and its staged modules
    // still there.
    let mut changed = Vec::new();
    if let Ok(text) = std::fs::read_to_string(ctx.pkg_dir(&pkg.name).join(STATE))
        && let Ok(state) = serde_json::from_str::<State>(&text)
        && state.format == STATE_FORMAT
        && state.key == key
    {
        changed = crate::fresh::changed(&state.inputs, cache);
        let staged = ctx.staged(&pkg.name);
        if !force
            && changed.is_empty()
            && state
                .installed
                .iter()
                .all(|m| staged.join(&m.path).is_file())
        {
            let mut r = PackageResult::new(&pkg.name, Status::Fresh);
            r.modules = state.modules;
            r.notes = state.notes;
            r.installed = state.installed;
            r.staged = Some(ctx.staged(&pkg.name));
            return Ok(Plan::Done(r));
        }
    }
    let refused = |r: Refusal| {
        let mut res = PackageResult::new(&pkg.name, Status::Refused);
        res.refusal = Some(r);
        Ok(Plan::Done(res))
    };
    let index = ctx.index();
    let mut modules = BTreeSet::new();
    let mut notes = Vec::new();
    // Requests the base configuration does not satisfy: they need a variant.
    let mut needs_variant = Vec::new();
    // Tristate symbols whose modules the package builds (checked against the base build when
    // the base already builds them).
    let mut module_syms = Vec::new();
    // OpenWrt's Kconfig merge ignores symbols this kernel does not have (`ignore_unknown`).
    let unknown: Vec<String> = pkg
        .kconfig
        .iter()
        .filter(|r| {
            pkg.ignore_unknown
                && r.value.as_deref() != Some("n")
                && index.sym_type(&r.symbol).is_none()
                && ctx.k.value(&r.symbol).is_none()
        })
        .map(|r| r.to_string())
        .collect();
    // Every symbol that would enable the package's modules is unknown (OpenWrt: an empty
    // package), or nothing is left to build at all.
    let plain: Vec<String> = pkg
        .kconfig
        .iter()
        .filter(|r| r.value.is_none())
        .map(|r| r.to_string())
        .collect();
    let all_plain_unknown = !plain.is_empty() && plain.iter().all(|p| unknown.contains(p));
    let nothing_left = unknown.len() == pkg.kconfig.len() && pkg.files.is_empty();
    if !unknown.is_empty() && (all_plain_unknown || nothing_left) {
        return refused(refusal(
            code::UNKNOWN_SYMBOL,
            format!(
                "none of its kconfig symbols is a Kconfig symbol of this kernel ({}): {}",
                ctx.src.kernelversion,
                unknown.join(", ")
            ),
            "OpenWrt generates such a package empty; check the symbols against the kernel version",
        ));
    }
    for req in &pkg.kconfig {
        if let Err(e) = crate::variant::check_request(req) {
            return refused(refusal(
                code::BAD_PACKAGES,
                e.to_string().replace("package file `--set`: ", ""),
                "write one value per kconfig entry",
            ));
        }
        let sym = &req.symbol;
        let base = ctx.k.value(sym);
        let ty = index.sym_type(sym);
        if unknown.contains(&req.to_string()) {
            notes.push(format!(
                "{req} ignored: not a Kconfig symbol of this kernel ({})",
                ctx.src.kernelversion
            ));
            continue;
        }
        if ty.is_none() && base.is_none() && req.value.as_deref() == Some("n") {
            // Kconfig ignores settings of symbols this kernel does not have (OpenWrt packages
            // carry such `=n` entries across kernel versions).
            notes.push(format!(
                "CONFIG_{sym}=n ignored: not a symbol of this kernel"
            ));
            continue;
        }
        if ty.is_none() && base.is_none() {
            return refused(refusal(
                code::UNKNOWN_SYMBOL,
                format!(
                    "CONFIG_{sym} is not a Kconfig symbol of this kernel ({})",
                    ctx.src.kernelversion
                ),
                "check the spelling; `grep -r 'config NAME' --include='Kconfig*'` in the source tree finds symbols",
            ));
        }
        let tristate = ty == Some(SymType::Tristate);
        // A bare symbol asks for a module (tristate) or for the option to be on (bool).
        let wanted = req
            .value
            .clone()
            .unwrap_or_else(|| if tristate { "m".into() } else { "y".into() });
        if req.value.is_none() && tristate && base == Some("y") {
            return refused(refusal(
                code::BUILT_IN,
                format!(
                    "CONFIG_{sym} is built into the base kernel (=y): its code is in vmlinux, not in a module"
                ),
                "nothing to build; the running kernel already has it",
            ));
        }
        if req.value.is_none() && !tristate && pkg.kconfig.len() == 1 && pkg.files.is_empty() {
            return refused(refusal(
                code::NO_MODULE,
                format!(
                    "CONFIG_{sym} is a {} option: it builds no module",
                    ty.map_or("non-tristate".to_string(), |t| format!("{t:?}")
                        .to_lowercase())
                ),
                "name the tristate symbol that builds the module (e.g. CONFIG_BLK_DEV_LOOP for loop.ko)",
            ));
        }
        let satisfied = if wanted == "n" {
            base.is_none()
        } else {
            base == Some(wanted.as_str())
        };
        if !satisfied {
            needs_variant.push(KconfigReq {
                symbol: sym.clone(),
                value: Some(wanted.clone()),
            });
        }
        if wanted == "m" {
            module_syms.push(sym.clone());
        }
    }
    let mut variant = None;
    if !needs_variant.is_empty() {
        if crate::variant::variant_manifest(&ctx.k).is_err() {
            let list: Vec<String> = needs_variant.iter().map(|r| r.to_string()).collect();
            return refused(refusal(
                code::NEEDS_VARIANT,
                format!(
                    "{} not in the base configuration, and the Kbuild tree cannot make configuration variants",
                    list.join(", ")
                ),
                "make the Kbuild tree with `extmod kbuild-install` (it ships Kconfig and conf)",
            ));
        }
        let reqs: Vec<KconfigReq> = pkg
            .kconfig
            .iter()
            .map(|r| {
                needs_variant
                    .iter()
                    .find(|n| n.symbol == r.symbol)
                    .cloned()
                    .unwrap_or_else(|| r.clone())
            })
            .filter(|r| r.value.is_some() || needs_variant.iter().any(|n| n.symbol == r.symbol))
            .collect();
        let v = crate::variant::generate(
            &crate::variant::Inputs {
                k: &ctx.k,
                src: Some(&ctx.src.path),
                index: Some(index),
                // A dry run writes nothing into D: its variants go to the user's cache.
                cache: &if ctx.dry_run {
                    crate::cache::dir("variants")
                } else {
                    ctx.objdir.join(".variants")
                },
            },
            &reqs,
        );
        // A variant that cannot be made fails this package only.
        let v = match v {
            Ok(v) => v,
            Err(Error::Kbuild(KError::Interrupted)) => return Err(KError::Interrupted.into()),
            Err(e) => {
                let mut res = PackageResult::new(&pkg.name, Status::Failed);
                res.error = Some(format!("cannot make its configuration variant: {e}"));
                return Ok(Plan::Done(res));
            }
        };
        if !v.not_applied.is_empty() {
            let why: Vec<String> = v
                .not_applied
                .iter()
                .map(|n| format!("{}: {}", n.request, n.why))
                .collect();
            return refused(refusal(
                code::NOT_APPLIED,
                format!("Kconfig did not apply {}", why.join("; ")),
                "enable the missing dependencies in the package's kconfig, or ask for a value the symbol can take",
            ));
        }
        // Toolchain drift compiles the module with values the kernel was not built with.
        let affecting: Vec<&crate::variant::Change> = v
            .kernel_affecting()
            .into_iter()
            .chain(v.drift.iter())
            .collect();
        if !affecting.is_empty() {
            let list: Vec<String> = affecting
                .iter()
                .map(|c| {
                    format!(
                        "CONFIG_{} {} -> {} ({})",
                        c.symbol,
                        c.old.as_deref().unwrap_or("n"),
                        c.new.as_deref().unwrap_or("n"),
                        c.why
                    )
                })
                .collect();
            if !ctx.allow_kernel_change {
                return refused(refusal(
                    code::KERNEL_AFFECTING,
                    format!(
                        "the configuration variant changes the kernel itself: {}",
                        list.join("; ")
                    ),
                    "the modules would not match the running kernel; --allow-kernel-change builds them anyway, labelled",
                ));
            }
            notes.push(format!(
                "built with --allow-kernel-change: does NOT match the running kernel: {}",
                list.join("; ")
            ));
        }
        for s in &v.new_modules {
            if !module_syms.contains(s) {
                notes.push(if pkg.files.is_empty() {
                    format!(
                        "CONFIG_{s}=m is enabled by the variant (selected); its modules are built too"
                    )
                } else {
                    format!(
                        "CONFIG_{s}=m is enabled by the variant (selected); only the package's files are built"
                    )
                });
                module_syms.push(s.clone());
            }
        }
        variant = Some(v);
    }
    let km = ctx.kmap(
        &module_syms,
        variant
            .as_ref()
            .map(|v: &crate::variant::Variant| v.dir.as_path()),
    );
    for sym in &module_syms {
        let derived = km.paths(sym);
        let in_base = ctx.k.value(sym) == Some("m");
        let mut found = false;
        for m in derived {
            if in_base && ctx.k.built_module(&m) == Some(false) {
                notes.push(format!(
                    "CONFIG_{sym}: Makefiles name {m}, but the base build did not make it; left out"
                ));
                continue;
            }
            found = true;
            if pkg.files.is_empty() {
                modules.insert(m);
            }
        }
        if !found && pkg.files.is_empty() {
            return refused(refusal(
                code::NO_MODULE,
                format!(
                    "CONFIG_{sym} builds no module that extmod can find in the kernel's Makefiles"
                ),
                "name the module with `files` in a package file",
            ));
        }
    }
    for f in &pkg.files {
        // A module no Makefile of its directory mentions cannot be built: say so before make.
        let dir = module_dir(f);
        let obj = format!(
            "{}.o",
            f.rsplit('/').next().unwrap_or(f).trim_end_matches(".ko")
        );
        let mentioned = ["Makefile", "Kbuild"].iter().any(|mk| {
            std::fs::read_to_string(ctx.src.path.join(&dir).join(mk))
                .is_ok_and(|t| t.contains(&obj))
        });
        if !mentioned {
            return refused(refusal(
                code::NO_MODULE,
                format!("no Makefile in {dir}/ builds {obj}: module '{f}' is missing"),
                "check the path in `files` against the kernel tree (`extmod which CONFIG_X` lists what a symbol builds)",
            ));
        }
    }
    modules.extend(pkg.files.iter().cloned());
    if modules.is_empty() {
        return refused(refusal(
            code::NO_MODULE,
            format!("package {} builds no module", pkg.name),
            "give it a kconfig symbol that is =m in the base config, or `files`",
        ));
    }
    let mut by_dir: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &modules {
        let dir = module_dir(m).to_string();
        let goal = Utf8Path::new(m).file_name().unwrap_or(m).to_string();
        by_dir.entry(dir).or_default().push(goal);
    }
    let mut units: Vec<Unit> = by_dir
        .into_iter()
        .map(|(dir, goals)| Unit { dir, goals })
        .collect();
    // Providers first: each unit's modpost must see the exports of the package's other units
    // it uses (crypto/des_generic.ko needs lib/crypto/libdes.ko, drivers/block/zram/zram.ko
    // needs mm/zsmalloc.ko). A first guess, which saves make runs: libraries, then core
    // directories, then the rest (stable sort); a unit modpost sends back is retried later.
    units.sort_by_key(|u| unit_rank(&u.dir));
    let mut write_dirs: BTreeSet<String> = units.iter().map(|u| u.dir.clone()).collect();
    for m in &modules {
        let objects = km.objects(m).map_or_else(
            || vec![format!("{}.o", m.trim_end_matches(".ko"))],
            <[String]>::to_vec,
        );
        for o in objects {
            let o = o.split(' ').next().unwrap_or(&o);
            if let Some(d) = normalize(module_dir(o).as_str()) {
                write_dirs.insert(d);
            }
        }
    }
    Ok(Plan::Build(Job {
        pkg: pkg.clone(),
        modules: modules.into_iter().collect(),
        units,
        key,
        notes,
        variant,
        write_dirs,
        changed,
    }))
}

/// Build order of a package's directories: libraries (0), core code other modules build on
/// (1), everything else (2).
fn unit_rank(dir: &str) -> u8 {
    let top = dir.split('/').next().unwrap_or(dir);
    if top == "lib" || dir.contains("/lib/") || dir.ends_with("/lib") {
        0
    } else if ["mm", "kernel", "crypto", "block", "security"].contains(&top)
        || dir.starts_with("net/core")
        || dir.starts_with("drivers/base")
    {
        1
    } else {
        2
    }
}

/// `a/b/../c` → `a/c`; `None` when it climbs above the top.
fn normalize(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

fn make_args(ctx: &Ctx, job: &Job, unit: &Unit, extra_symbols: &[Utf8PathBuf]) -> Vec<String> {
    let name = &job.pkg.name;
    let mut args = ctx
        .generation
        .placement(&ctx.tree(name), &ctx.out(name), &unit.dir);
    args.extend(ctx.k.make_vars.iter().cloned());
    args.extend(ctx.generation_vars(job).unwrap_or_default());
    if !ctx.external {
        args.push(format!(
            "MODPOST={}",
            ctx.pkg_dir(&job.pkg.name).join(MODPOST)
        ));
    }
    // Module BTF: pahole's `-j` makes its output depend on thread timing (pahole < 1.27), and
    // scripts/Makefile.btf drops `-j` when KBUILD_BUILD_TIMESTAMP is set, as reproducible
    // builds (Debian's among them) do. Nothing else in a module build reads it.
    if ctx.k.value("DEBUG_INFO_BTF_MODULES") == Some("y")
        && std::env::var_os("KBUILD_BUILD_TIMESTAMP").is_none()
    {
        args.push("KBUILD_BUILD_TIMESTAMP=@0".into());
    }
    if !extra_symbols.is_empty() {
        let list: Vec<&str> = extra_symbols.iter().map(|p| p.as_str()).collect();
        args.push(format!("KBUILD_EXTRA_SYMBOLS={}", list.join(" ")));
    }
    args.extend(ctx.generation.goals(&unit.dir, &unit.goals));
    args
}

fn command_line(ctx: &Ctx, job: &Job, unit: &Unit, extra: &[Utf8PathBuf]) -> String {
    process::display("make", &make_args(ctx, job, unit, extra))
}

/// The jobserver shared by every make: our own with N slots, or make's when run under make.
struct Slots {
    client: jobserver::Client,
    implicit_free: AtomicBool,
    /// How the slots are shared, for the report.
    what: String,
    /// At most this many package threads at once (each holds or waits for one slot).
    workers: usize,
}

enum Token {
    Implicit,
    Acquired(#[allow(dead_code)] jobserver::Acquired),
}

impl Slots {
    fn new(jobs: Option<usize>, inherited: Option<jobserver::Client>) -> Result<Self, Error> {
        if jobs.is_none()
            && let Some(client) = inherited
        {
            return Ok(Slots {
                client,
                implicit_free: AtomicBool::new(true),
                what: "make's jobserver".into(),
                workers: std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .max(2),
            });
        }
        let n = jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .clamp(1, MAX_JOBS);
        let client =
            jobserver::Client::new(n).map_err(|e| KError::io("create jobserver for", "make", e))?;
        Ok(Slots {
            client,
            implicit_free: AtomicBool::new(false),
            what: format!("a jobserver of {n} slots"),
            workers: n,
        })
    }

    fn acquire(&self) -> std::io::Result<Token> {
        if self
            .implicit_free
            .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Ok(Token::Implicit);
        }
        // Poll rather than block: a blocked read is not woken when the implicit slot comes
        // back, nor by Ctrl-C.
        loop {
            match self.client.try_acquire() {
                Ok(Some(a)) => return Ok(Token::Acquired(a)),
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                    return self.client.acquire().map(Token::Acquired);
                }
                Err(e) => return Err(e),
            }
            if interrupted() {
                return Err(std::io::Error::other("interrupted"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            if self
                .implicit_free
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Ok(Token::Implicit);
            }
        }
    }

    fn release(&self, t: Token) {
        if let Token::Implicit = t {
            self.implicit_free.store(true, Ordering::SeqCst);
        }
    }
}

fn execute(
    ctx: &Ctx,
    plans: Vec<Plan>,
    opts: &BuildOptions,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<Vec<PackageResult>, Error> {
    let slots = Slots::new(opts.jobs, opts.inherited_jobserver.clone())?;
    emit(Event::Jobs {
        what: slots.what.clone(),
    });
    let names: Vec<String> = plans
        .iter()
        .map(|p| match p {
            Plan::Done(r) => r.name.clone(),
            Plan::Build(j) => j.pkg.name.clone(),
        })
        .collect();
    let mut results: Vec<Option<PackageResult>> = vec![None; plans.len()];
    let mut pending: Vec<(usize, Job)> = Vec::new();
    // Providers the base build lacks (built through a variant) are chained to their dependents
    // with KBUILD_EXTRA_SYMBOLS, whether they are built in this run or fresh from an earlier one.
    let mut chain: HashMap<String, Utf8PathBuf> = HashMap::new();
    for (i, p) in plans.into_iter().enumerate() {
        match p {
            Plan::Done(r) => {
                if r.status == Status::Fresh
                    && r.modules
                        .iter()
                        .any(|m| ctx.k.built_module(m) == Some(false))
                {
                    chain.insert(r.name.clone(), ctx.pkg_dir(&r.name).join("Module.symvers"));
                }
                emit(Event::Finished(Box::new(r.clone())));
                results[i] = Some(r);
            }
            Plan::Build(job) => pending.push((i, job)),
        }
    }
    let pos: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i))
        .collect();
    let symvers: Mutex<HashMap<String, Utf8PathBuf>> = Mutex::new(chain);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, PackageResult)>();
    std::thread::scope(|scope| {
        let mut running = 0usize;
        loop {
            // Start every job whose dependencies are settled.
            let mut i = 0;
            while i < pending.len() && running < slots.workers {
                let deps: Vec<Option<Status>> = pending[i]
                    .1
                    .pkg
                    .depends
                    .iter()
                    .map(|d| results[pos[d]].as_ref().map(|r| r.status))
                    .collect();
                if deps.iter().any(Option::is_none) {
                    i += 1;
                    continue;
                }
                let (idx, job) = pending.remove(i);
                let failed_dep = job.pkg.depends.iter().find(|d| {
                    !matches!(
                        results[pos[*d]].as_ref().map(|r| r.status),
                        Some(Status::Built | Status::Fresh)
                    )
                });
                if let Some(d) = failed_dep.cloned() {
                    let mut r = PackageResult::new(&job.pkg.name, Status::Skipped);
                    r.error = Some(format!("dependency `{d}` was not built"));
                    emit(Event::Finished(Box::new(r.clone())));
                    results[idx] = Some(r);
                    continue;
                }
                if stop.load(Ordering::SeqCst) || interrupted() {
                    let mut r = PackageResult::new(&job.pkg.name, Status::Skipped);
                    r.error = Some(
                        "not started after an earlier failure (use --keep-going to build the rest)"
                            .into(),
                    );
                    emit(Event::Finished(Box::new(r.clone())));
                    results[idx] = Some(r);
                    continue;
                }
                // Providers the base build lacks are chained through KBUILD_EXTRA_SYMBOLS.
                let extra: Vec<Utf8PathBuf> = {
                    let s = symvers.lock().unwrap();
                    job.pkg
                        .depends
                        .iter()
                        .filter_map(|d| s.get(d).cloned())
                        .collect()
                };
                let tx = tx.clone();
                let (slots, symvers, stop) = (&slots, &symvers, &stop);
                running += 1;
                scope.spawn(move || {
                    let token = slots.acquire();
                    let r = match token {
                        // Waiting for a slot may outlast an interrupt or a failure.
                        Ok(t) if stop.load(Ordering::SeqCst) || interrupted() => {
                            slots.release(t);
                            let mut r = PackageResult::new(&job.pkg.name, Status::Skipped);
                            r.error = Some(if interrupted() {
                                "not started: interrupted".into()
                            } else {
                                "not started after an earlier failure (use --keep-going to build the rest)".into()
                            });
                            r
                        }
                        Ok(t) => {
                            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                build_package(ctx, &job, &extra, slots, emit)
                            }));
                            slots.release(t);
                            built.unwrap_or_else(|_| {
                                let mut r = PackageResult::new(&job.pkg.name, Status::Failed);
                                r.error = Some("internal error: the build thread panicked".into());
                                r
                            })
                        }
                        Err(e) => {
                            let mut r = PackageResult::new(&job.pkg.name, Status::Failed);
                            r.error = Some(format!("cannot take a jobserver slot: {e}"));
                            r
                        }
                    };
                    if r.status == Status::Built
                        && job
                            .modules
                            .iter()
                            .any(|m| ctx.k.built_module(m) == Some(false))
                    {
                        symvers.lock().unwrap().insert(
                            job.pkg.name.clone(),
                            ctx.pkg_dir(&job.pkg.name).join("Module.symvers"),
                        );
                    }
                    if r.status == Status::Failed && !opts.keep_going {
                        stop.store(true, Ordering::SeqCst);
                    }
                    let _ = tx.send((idx, r));
                });
            }
            if running == 0 {
                break;
            }
            let (idx, r) = rx.recv().expect("a worker reports");
            running -= 1;
            emit(Event::Finished(Box::new(r.clone())));
            results[idx] = Some(r);
        }
    });
    check_interrupted()?;
    Ok(results
        .into_iter()
        .map(|r| r.expect("every package settled"))
        .collect())
}

fn build_package(
    ctx: &Ctx,
    job: &Job,
    extra: &[Utf8PathBuf],
    slots: &Slots,
    emit: &(dyn Fn(Event) + Sync),
) -> PackageResult {
    let start = Instant::now();
    let name = &job.pkg.name;
    let mut r = PackageResult::new(name, Status::Failed);
    r.modules = job.modules.clone();
    r.notes = job.notes.clone();
    let log_path = ctx.pkg_dir(name).join("build.log");
    r.log = Some(log_path.clone());
    let started = std::time::SystemTime::now();
    // Providers chained into this package: its dependencies', then its own earlier units'.
    let deps_extra = extra;
    let mut extra = extra.to_vec();
    let mut phases = Phases::default();
    let outcome = (|| -> Result<Vec<InstalledModule>, String> {
        let setup_start = Instant::now();
        ctx.generation_vars(job)?;
        prepare_tree(ctx, job).map_err(|e| e.to_string())?;
        phases.setup = setup_start.elapsed().as_secs_f64();
        let mut log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot write `{log_path}`: {e}"))?;
        // Units run in the package's order; one whose modpost misses symbols that a unit still
        // to come exports (by the base Module.symvers) waits for it: modpost names the needs.
        let mut pending: std::collections::VecDeque<&Unit> = job.units.iter().collect();
        let mut deferred = 0;
        while let Some(unit) = pending.pop_front() {
            let args = make_args(ctx, job, unit, &extra);
            let line = process::display("make", &args);
            r.commands.push(line.clone());
            emit(Event::Started {
                package: name.clone(),
                command: line.clone(),
            });
            let _ = writeln!(log, "$ {line}");
            let make_start = Instant::now();
            let (first_out, modpost_at, after_modpost) =
                (Cell::new(None), Cell::new(None), Cell::new(None));
            let (status, text) = run_make(&args, &line, slots, &ctx.protected, &mut log, &|l| {
                let now = Some(Instant::now());
                if l.starts_with("MODPOST") {
                    modpost_at.set(now);
                } else if modpost_at.get().is_some() {
                    if after_modpost.get().is_none() {
                        after_modpost.set(now);
                    }
                } else if first_out.get().is_none() {
                    first_out.set(now);
                }
                emit(Event::Output {
                    package: name.clone(),
                    line: l.to_string(),
                })
            })?;
            phases.add_make(
                make_start,
                first_out.get(),
                modpost_at.get(),
                after_modpost.get(),
                Instant::now(),
            );
            if interrupted() {
                return Err("interrupted".into());
            }
            match status {
                Some(s) if s.success() => {
                    deferred = 0;
                    // Later units see this one's exports when the base list lacks or filters them.
                    // (With in-tree modpost the base list lacks every module of the package.)
                    let fresh_exports = job.variant.is_some()
                        || !ctx.external
                        || unit.goals.iter().any(|g| {
                            ctx.k.built_module(&format!("{}/{g}", unit.dir)) == Some(false)
                        });
                    if fresh_exports {
                        extra.push(unit_symvers(ctx, name, unit)?);
                    }
                }
                _ if deferred < pending.len() && needs_later_unit(ctx, &text, &pending) => {
                    let _ = writeln!(
                        log,
                        "# {}: needs exports of a later unit of this package; built after it",
                        unit.dir
                    );
                    r.commands.pop();
                    deferred += 1;
                    pending.push_back(unit);
                }
                other => {
                    let why = explain_failure(&text, ctx);
                    let st = other.map_or("did not finish".to_string(), |s| s.to_string());
                    return Err(format!("`make` failed ({st}): {why}"));
                }
            }
        }
        let stage_start = Instant::now();
        let installed = stage(ctx, job, deps_extra, started).map_err(|e| {
            let hint = e
                .hint()
                .map(|h| format!(" (hint: {h})"))
                .unwrap_or_default();
            format!("{e}{hint}")
        })?;
        phases.stage = stage_start.elapsed().as_secs_f64();
        Ok(installed)
    })();
    r.seconds = start.elapsed().as_secs_f64();
    match outcome {
        Ok(installed) => {
            r.status = Status::Built;
            r.staged = Some(ctx.staged(name));
            r.installed = installed;
            r.phases = Some(phases);
            r.notes.extend(ctx.installer.notes.iter().cloned());
            r.notes.extend(ctx.k.btf_note());
        }
        Err(e) => r.error = Some(e),
    }
    r
}

/// Run one make with the shared jobserver, copying its output to `log` and Kbuild's progress
/// lines to `progress`; its status (`None` when it could not be waited for) and output.
fn run_make(
    args: &[String],
    line: &str,
    slots: &Slots,
    protected: &[Utf8PathBuf],
    log: &mut std::fs::File,
    progress: &dyn Fn(&str),
) -> Result<(Option<std::process::ExitStatus>, String), String> {
    let client = slots.client.clone();
    let protected = protected.to_vec();
    let expr = kbuild_install::selftest::make_expr("make", args).before_spawn(move |cmd| {
        client.configure_make(cmd);
        // S and K read-only for make and everything it runs.
        let paths: Vec<&Utf8Path> = protected.iter().map(|p| p.as_path()).collect();
        kbuild_install::sandbox::protect(cmd, &paths);
        Ok(())
    });
    let (reader, _guard) =
        process::start_reader(expr).map_err(|e| format!("cannot start `{line}`: {e}"))?;
    let mut reader = std::io::BufReader::new(reader);
    let mut buf = String::new();
    let mut text = String::new();
    loop {
        buf.clear();
        match reader.read_line(&mut buf) {
            Ok(0) => break,
            Ok(_) => {
                let _ = log.write_all(buf.as_bytes());
                text.push_str(&buf);
                let l = buf.trim_end();
                if is_progress_line(l) {
                    progress(l.trim());
                }
            }
            // A non-UTF-8 line: keep going.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
            Err(e) => return Err(format!("reading `{line}`: {e}")),
        }
    }
    let handle = reader.into_inner();
    Ok((handle.try_wait().ok().flatten().map(|o| o.status), text))
}

/// Whether modpost failed only for symbols that modules of `pending` units export in the base
/// build's Module.symvers.
fn needs_later_unit(ctx: &Ctx, log: &str, pending: &std::collections::VecDeque<&Unit>) -> bool {
    static UNDEF: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"ERROR: modpost: "([^"]+)" \[[^\]]+\] undefined!"#).unwrap());
    let needed: BTreeSet<&str> = UNDEF
        .captures_iter(log)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    if needed.is_empty() {
        return false;
    }
    let later: BTreeSet<String> = pending
        .iter()
        .flat_map(|u| {
            u.goals
                .iter()
                .map(move |g| format!("{}/{}", u.dir, g.trim_end_matches(".ko")))
        })
        .collect();
    let Ok(base) = std::fs::read_to_string(ctx.k.path.join("Module.symvers")) else {
        return false;
    };
    let exported_later: BTreeSet<&str> = base
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_, sym, module) = (f.next()?, f.next()?, f.next()?);
            later.contains(module).then_some(sym)
        })
        .collect();
    needed.iter().all(|s| exported_later.contains(s))
}

/// Create (or reuse) the package's overlay; drop outputs that are about to be rebuilt so that
/// staged hardlinks never see an in-place write.
fn prepare_tree(ctx: &Ctx, job: &Job) -> Result<(), KError> {
    let dir = ctx.pkg_dir(&job.pkg.name);
    let tree = ctx.tree(&job.pkg.name);
    // The overlay is reused only for the same package inputs and the same layout: the
    // directories written, the variant, and the source listing of those directories (a new or
    // removed file, or a new subdirectory, must not leave a stale link or miss a source).
    let layout = {
        let mut h = Sha256::new();
        h.update(job.key.as_bytes());
        for d in &job.write_dirs {
            h.update(d.as_bytes());
            let mut names: Vec<String> = std::fs::read_dir(ctx.src.path.join(d))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            h.update(names.join("/").as_bytes());
        }
        if let Some(v) = &job.variant {
            h.update(v.dir.as_str().as_bytes());
        }
        format!("{:x}", h.finalize())
    };
    let layout_file = dir.join("layout");
    let same_layout = std::fs::read_to_string(&layout_file).is_ok_and(|l| l == layout);
    // Outputs that depend on a changed input go first (make would keep an object newer than
    // a replacement with an older mtime), then the state: an interrupted run builds again.
    let out = ctx.out(&job.pkg.name);
    crate::fresh::remove_stale(&out, &job.write_dirs, &job.changed);
    let _ = std::fs::remove_file(dir.join(STATE));
    if !same_layout || !tree.is_dir() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| KError::io("remove", &dir, e))?;
        }
        let module_dirs = job.write_dirs.clone();
        let only = (ctx.k.kind == Kind::ObjTree).then_some(overlay::OBJTREE_NAMES);
        let mut overrides = BTreeMap::new();
        if let Some(v) = &job.variant {
            // The variant's configuration, as the C code and make see it.
            overrides.insert("include/config".to_string(), v.dir.join("include/config"));
            for f in ["autoconf.h", "rustc_cfg"] {
                overrides.insert(
                    format!("include/generated/{f}"),
                    v.dir.join("include/generated").join(f),
                );
            }
            overrides.insert(".config".to_string(), v.dir.join(".config"));
        }
        if job.variant.is_some() || !ctx.external {
            // Modules the base already has are rebuilt here: modpost must not see their old
            // exports next to the new ones (without `-e`, or with a variant's new exports).
            let base = std::fs::read_to_string(ctx.k.path.join("Module.symvers"))
                .map_err(|e| KError::io("read", ctx.k.path.join("Module.symvers"), e))?;
            let ours: BTreeSet<&str> = job
                .modules
                .iter()
                .map(|m| m.trim_end_matches(".ko"))
                .collect();
            let filtered: String = base
                .lines()
                .filter(|l| l.split('\t').nth(2).is_none_or(|m| !ours.contains(m)))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::create_dir_all(&dir).map_err(|e| KError::io("create", &dir, e))?;
            let path = dir.join("base.Module.symvers");
            std::fs::write(&path, filtered).map_err(|e| KError::io("write", &path, e))?;
            overrides.insert("Module.symvers".to_string(), path);
        }
        let layers = Layers {
            kbuild: &ctx.k.layers,
            kbuild_only: only,
            src: &ctx.src.path,
            overrides: &overrides,
            hidden: ctx.generation.hides(),
        };
        overlay::create(&tree, &layers, &module_dirs)?;
        if !ctx.external {
            write_modpost(&dir)?;
        }
        crate::runlock::mark(&dir, &job.pkg.name)?;
        std::fs::write(&layout_file, &layout).map_err(|e| KError::io("write", &layout_file, e))?;
    }
    for m in &job.modules {
        let _ = std::fs::remove_file(out.join(m));
    }
    std::fs::create_dir_all(&out).map_err(|e| KError::io("create", &out, e))?;
    for f in ctx.generation.local_outputs() {
        let p = out.join(f);
        if !p.exists() {
            std::fs::write(&p, "").map_err(|e| KError::io("write", &p, e))?;
        }
    }
    Ok(())
}

/// The exports of one unit's modules, as later units and the package's Module.symvers take
/// them: `<out>/<dir>/Module.symvers` (since 6.13 copied there from the one the build wrote
/// at the output root, which the next unit's build rewrites).
fn unit_symvers(ctx: &Ctx, name: &str, unit: &Unit) -> Result<Utf8PathBuf, String> {
    let out = ctx.out(name);
    let path = out.join(&unit.dir).join("Module.symvers");
    let written = ctx.generation.written_symvers(&out, &unit.dir);
    if written != path {
        std::fs::copy(&written, &path)
            .map_err(|e| format!("cannot copy `{written}` to `{path}`: {e}"))?;
    }
    Ok(path)
}

/// Kbuild's `scripts/Makefile.modpost` passes `-e` (external module) to modpost for every `M=`
/// build; the in-tree build does not, and only then does modpost write `MODULE_INFO(intree,
/// "Y")` into `<mod>.mod.c`. `MODPOST=` on make's command line replaces the command (it is also a
/// prerequisite, so it must be one file): this script drops `-e` and runs the tree's modpost.
/// The base Module.symvers the overlay gives modpost lacks the package's own modules, so they
/// are not "exported twice". The tree's modpost is found beside the script (make runs in the
/// output directory since 6.13).
fn write_modpost(pkg_dir: &Utf8Path) -> Result<(), KError> {
    let path = pkg_dir.join(MODPOST);
    let script = "#!/bin/sh\n\
# Written by extmod: modpost as the in-tree build runs it (without -e).\n\
for a do shift; [ \"$a\" = -e ] || set -- \"$@\" \"$a\"; done\n\
exec \"${0%/*}/tree/scripts/mod/modpost\" \"$@\"\n";
    std::fs::write(&path, script).map_err(|e| KError::io("write", &path, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| KError::io("chmod", &path, e))
}

/// Kbuild's short-format progress lines (`  CC [M]  drivers/net/dummy.o`).
fn is_progress_line(l: &str) -> bool {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\s{2}[A-Z][A-Z0-9_]{1,8}(\s\[M\])?\s+\S").unwrap());
    RE.is_match(l)
}

/// A failure in words: modpost's complaints explained, else the first compiler errors.
fn explain_failure(log: &str, ctx: &Ctx) -> String {
    static UNDEF: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"ERROR: modpost: "([^"]+)" \[([^\]]+)\] undefined!"#).unwrap()
    });
    static TWICE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"ERROR: modpost: (.*exported twice.*)").unwrap());
    let mut out = Vec::new();
    for c in UNDEF.captures_iter(log).take(5) {
        out.push(format!(
            "module {} needs symbol `{}`, which neither the base kernel's Module.symvers nor a dependency provides{}",
            &c[2],
            &c[1],
            provider_hint(ctx, &c[1])
        ));
    }
    static LICENSE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"ERROR: modpost: (missing MODULE_LICENSE\(\) in \S+)").unwrap()
    });
    for c in LICENSE.captures_iter(log).take(3) {
        out.push(format!(
            "{} (the object was compiled as built-in code: its CONFIG symbol is not =m in the configuration this build saw)",
            &c[1]
        ));
    }
    for c in TWICE.captures_iter(log).take(3) {
        out.push(format!(
            "{} (the module duplicates code the kernel already has)",
            &c[1]
        ));
    }
    static READ_ONLY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?m)[`'‘]([^'’`\n]+)[’'`]: Read-only file system|(\S+): Read-only file system")
            .unwrap()
    });
    for c in READ_ONLY.captures_iter(log).take(3) {
        out.push(format!(
            "the build tried to write `{}` (in the package's tree `{}`), which leads into a tree extmod keeps read-only (the source tree, the Kbuild tree or the trees it was made from); nothing was written there",
            c.get(1).or(c.get(2)).map_or("", |m| m.as_str()),
            ctx.objdir
        ));
    }
    if out.is_empty() {
        out = log
            .lines()
            .filter(|l| {
                l.contains("error:")
                    || l.contains("Error ")
                    || l.starts_with("ERROR")
                    || l.contains("No rule to make target")
            })
            .take(4)
            .map(str::to_string)
            .collect();
    }
    if out.is_empty() {
        out.push(log.lines().rev().take(3).collect::<Vec<_>>().join(" | "));
    }
    out.join("; ")
}

/// Which package built so far exports `sym`.
fn provider_hint(ctx: &Ctx, sym: &str) -> String {
    let Ok(rd) = ctx.objdir.read_dir_utf8() else {
        return String::new();
    };
    for e in rd.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path().join("Module.symvers"))
            && text.lines().any(|l| l.split('\t').nth(1) == Some(sym))
        {
            return format!(
                " (package `{}` exports it: add it to `depends`)",
                e.file_name()
            );
        }
    }
    String::new()
}

/// Stage into `OUT/<package>` atomically and record the state for the next run.
fn stage(
    ctx: &Ctx,
    job: &Job,
    extra: &[Utf8PathBuf],
    started: std::time::SystemTime,
) -> Result<Vec<InstalledModule>, Error> {
    check_interrupted()?;
    let name = &job.pkg.name;
    let out = ctx.out(name);
    let tmp = tempfile::Builder::new()
        .prefix(&kbuild_install::fsutil::temp_prefix(name, "staging"))
        .tempdir_in(&ctx.dest)
        .map_err(|e| KError::io("create", &ctx.dest, e))?;
    let root = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf()).expect("UTF-8 destination");
    let kernel = ctx.modules_dir(&root);
    let mut symvers = String::new();
    for unit in &job.units {
        if let Ok(t) = std::fs::read_to_string(out.join(&unit.dir).join("Module.symvers")) {
            symvers.push_str(&t);
        }
    }
    let mut installed = Vec::new();
    for m in &job.modules {
        let from = out.join(m);
        if !from.is_file() {
            return Err(KError::io(
                "find built module",
                &from,
                std::io::Error::other("make did not produce it"),
            )
            .into());
        }
        elf::modinfo(&from)?;
        check_interrupted()?;
        installed.push(ctx.installer.install(&from, &root, &kernel, m)?);
    }
    let log_path = ctx.pkg_dir(name).join("build.log");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log_path)
        .map_err(|e| KError::io("write", &log_path, e))?;
    ctx.installer
        .depmod(&ctx.k, &root, &job.modules, false, &mut log)?;
    let sv = root.join("Module.symvers");
    std::fs::write(&sv, &symvers).map_err(|e| KError::io("write", &sv, e))?;
    crate::runlock::mark(&root, name)?;
    let pkg_symvers = ctx.pkg_dir(name).join("Module.symvers");
    std::fs::write(&pkg_symvers, &symvers).map_err(|e| KError::io("write", &pkg_symvers, e))?;
    check_interrupted()?;
    kbuild_install::fsutil::replace_dir(tmp, &ctx.staged(name), &ctx.dest, name)?;
    let inputs = inputs(&out, &ctx.tree(name), job, extra, &ctx.k.compiler());
    // An input changed while make ran: the modules may not reflect it, so no state is written
    // and the next run builds again.
    let started_ns = started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    if inputs.iter().any(|i| i.mtime > started_ns) {
        return Ok(installed);
    }
    let state = State {
        format: STATE_FORMAT,
        key: job.key.clone(),
        modules: job.modules.clone(),
        inputs,
        notes: job.notes.clone(),
        installed: installed.clone(),
    };
    let path = ctx.pkg_dir(name).join(STATE);
    std::fs::write(
        &path,
        serde_json::to_string(&state).expect("state serializes"),
    )
    .map_err(|e| KError::io("write", &path, e))?;
    Ok(installed)
}

/// `--install-mod-path`: every built or fresh package's modules in one tree, as `make
/// modules_install INSTALL_MOD_PATH=<root>` would leave it (modules.order in the base build's
/// order, modules.builtin{,.modinfo} of the Kbuild tree, depmod), replaced whole.
fn install_all(ctx: &Ctx, root: &Utf8Path, results: &[PackageResult]) -> Result<(), Error> {
    check_interrupted()?;
    std::fs::create_dir_all(root).map_err(|e| KError::io("create", root, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".extmod-install-")
        .tempdir_in(root)
        .map_err(|e| KError::io("create", root, e))?;
    let tmp_root = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf()).expect("UTF-8 path");
    let modlib = tmp_root.join("lib/modules").join(&ctx.k.kernelrelease);
    let mut modules = Vec::new();
    for r in results {
        let Some(staged) = &r.staged else { continue };
        for m in &r.installed {
            let from = staged.join(&m.path);
            let to = tmp_root.join(&m.path);
            std::fs::create_dir_all(to.parent().expect("module has a directory"))
                .map_err(|e| KError::io("create", &to, e))?;
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(|e| KError::io("copy", &from, e))?;
            }
            modules.push(m.module.clone());
        }
    }
    for f in ["modules.builtin", "modules.builtin.modinfo"] {
        let from = ctx.k.path.join(f);
        if from.is_file() {
            std::fs::create_dir_all(&modlib).map_err(|e| KError::io("create", &modlib, e))?;
            std::fs::copy(&from, modlib.join(f)).map_err(|e| KError::io("copy", &from, e))?;
        }
    }
    let log_path = ctx.objdir.join("install.log");
    let mut log =
        std::fs::File::create(&log_path).map_err(|e| KError::io("write", &log_path, e))?;
    ctx.installer
        .depmod(&ctx.k, &tmp_root, &modules, true, &mut log)?;
    // Only lib/modules/<release> is ours to replace; the rest of the root is left alone.
    let final_dir = root.join("lib/modules").join(&ctx.k.kernelrelease);
    let parent = final_dir.parent().expect("has a parent").to_owned();
    std::fs::create_dir_all(&parent).map_err(|e| KError::io("create", &parent, e))?;
    let staged = tempfile::Builder::new()
        .prefix(&format!(".{}.new-", ctx.k.kernelrelease))
        .tempdir_in(&parent)
        .map_err(|e| KError::io("create", &parent, e))?;
    std::fs::remove_dir(staged.path()).map_err(|e| KError::io("remove", &parent, e))?;
    std::fs::rename(&modlib, staged.path()).map_err(|e| KError::io("move", &modlib, e))?;
    kbuild_install::fsutil::replace_dir(staged, &final_dir, &parent, &ctx.k.kernelrelease)?;
    Ok(())
}

/// An extra output directory (`--install-mod-path`): checked like D and OUT (outside S, K and
/// the trees K was made from, apart from D and OUT).
fn output_dir(
    p: &Utf8Path,
    protected: &[(Utf8PathBuf, &'static str)],
    objdir: &Utf8Path,
    dest: &Utf8Path,
) -> Result<Utf8PathBuf, Error> {
    crate::error::check_kbuild_path(p)?;
    let p = kbuild_install::tree::resolve(&kbuild_install::install::absolute(p)?)?;
    crate::guard::check_outside(&p, protected)?;
    crate::guard::check_apart(objdir, &p)?;
    crate::guard::check_apart(dest, &p)?;
    Ok(p)
}

/// Every file the build read, from Kbuild's `.cmd` files in the output root `out` (make's
/// directory: relative names are relative to it), plus the module directories' Makefiles.
fn inputs(
    out: &Utf8Path,
    tree: &Utf8Path,
    job: &Job,
    extra: &[Utf8PathBuf],
    cc: &str,
) -> Vec<crate::fresh::Input> {
    let mut files: BTreeSet<String> = extra.iter().map(|p| p.to_string()).collect();
    for dir in &job.write_dirs {
        for mk in ["Makefile", "Kbuild"] {
            files.insert(tree.join(dir).join(mk).to_string());
        }
        let Ok(rd) = out.join(dir).read_dir_utf8() else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name();
            if !(n.starts_with('.') && n.ends_with(".o.cmd")) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            files.extend(crate::fresh::cmd_deps(&text));
        }
    }
    // The compiler itself: another gcc at the same path is another build.
    if let Ok(p) = which::which(cc)
        && let Some(p) = p.to_str()
    {
        files.insert(p.to_string());
    }
    let real: BTreeSet<Utf8PathBuf> = files
        .into_iter()
        .filter_map(|f| {
            let full = if f.starts_with('/') {
                Utf8PathBuf::from(&f)
            } else {
                out.join(&f)
            };
            // Recorded by real path: the next run's check then stats each header once for all
            // packages, without walking the overlay's symlinks.
            let real = kbuild_install::tree::canonical(&full).ok()?;
            // Files the build itself wrote (`dummy.mod.c`, ...) are outputs, not inputs.
            (!real.starts_with(tree) && !real.starts_with(out)).then_some(real)
        })
        .collect();
    crate::fresh::record(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_directories_are_built_first() {
        let mut dirs = vec!["drivers/block/zram", "mm", "crypto", "lib/crypto", "fs/nls"];
        dirs.sort_by_key(|d| unit_rank(d));
        assert_eq!(
            dirs,
            ["lib/crypto", "mm", "crypto", "drivers/block/zram", "fs/nls"]
        );
    }

    #[test]
    fn progress_lines_are_kbuilds_short_output() {
        assert!(is_progress_line("  CC [M]  drivers/net/dummy.o"));
        assert!(is_progress_line("  MODPOST drivers/net/Module.symvers"));
        assert!(is_progress_line("  LD [M]  drivers/net/dummy.ko"));
        assert!(!is_progress_line("make: Entering directory '/x'"));
        assert!(!is_progress_line("drivers/net/dummy.c:1:1: error: x"));
    }
}
