//! `extmod audit`: check a package set against the kernel — modules no package owns, module
//! dependencies that cross into packages outside a package's DEPENDS, KCONFIG that changes
//! built-in code, modules that rely on a symbol's default, FILES the Makefiles disagree with, and
//! AUTOLOAD names that are not in FILES.

use crate::error::Error;
use crate::kbuild::KbuildTree;
use crate::package::{self, KconfigReq};
use crate::symbols::{Index, SymType};
use camino::Utf8Path;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A package as the audit sees it (TOML packages have no AUTOLOAD).
#[derive(Debug, Clone)]
pub struct AuditPackage {
    pub name: String,
    pub kconfig: Vec<KconfigReq>,
    pub files: Vec<String>,
    pub depends: Vec<String>,
    pub autoload: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
}

/// What a finding is about; serialized as its kebab-case name (`missing-dependency`).
/// Declared in the order of those names, which is the order findings are sorted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// AUTOLOAD names a module that is not among the package's FILES.
    AutoloadNotInFiles,
    /// A module comes only through a symbol's default or another package.
    DefaultReliance,
    /// The package's KCONFIG builds a module FILES does not list.
    FilesExtra,
    /// FILES names a module no Makefile line builds.
    FilesMissing,
    /// KCONFIG would change the kernel itself.
    KernelAffecting,
    /// A module needs one in a package outside the DEPENDS closure, or in none.
    MissingDependency,
    /// A KCONFIG symbol this kernel does not have.
    UnknownSymbol,
    /// A module the base build made that no package owns.
    Unpackaged,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    pub kind: Kind,
    pub package: Option<String>,
    /// What the finding is about, where one thing is: the module (unpackaged) or the
    /// `CONFIG_` symbol (kernel-affecting).
    pub subject: Option<String>,
    pub message: String,
}

/// Load a package set: extmod's TOML, or OpenWrt's table (tab-separated, its header starts with `source`, `package`).
pub fn load(path: &Utf8Path) -> Result<Vec<AuditPackage>, Error> {
    let bad = |why: String| Error::PackageFile {
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    if text.starts_with("source\tpackage\t") {
        return parse_openwrt_table(&text).map_err(bad);
    }
    Ok(package::parse(&text)
        .map_err(bad)?
        .into_iter()
        .map(|p| AuditPackage {
            name: p.name,
            kconfig: p.kconfig,
            files: p.files,
            depends: p.depends,
            autoload: Vec::new(),
        })
        .collect())
}

pub(crate) fn parse_openwrt_table(text: &str) -> Result<Vec<AuditPackage>, String> {
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let col = |n: &str| {
        head.iter()
            .position(|h| *h == n)
            .ok_or_else(|| format!("no `{n}` column"))
    };
    let (c_pkg, c_deps, c_kc, c_files, c_cond, c_auto) = (
        col("package")?,
        col("depends_kmods")?,
        col("kconfig_6.12")?,
        col("files_6.12")?,
        col("files_conditional_6.12")?,
        col("autoload_6.12")?,
    );
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let kconfig = get(c_kc)
            .split_whitespace()
            .filter_map(|k| KconfigReq::parse(k).ok())
            .collect();
        let files = get(c_files)
            .split_whitespace()
            .chain(get(c_cond).split_whitespace())
            .filter(|f| f.ends_with(".ko") && !f.contains('$'))
            .map(str::to_string)
            .collect();
        let depends = get(c_deps)
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        // `prio;boot;mod1,mod2`
        let autoload = get(c_auto)
            .split(';')
            .nth(2)
            .unwrap_or("")
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        out.push(AuditPackage {
            name: get(c_pkg).to_string(),
            kconfig,
            files,
            depends,
            autoload,
        });
    }
    Ok(out)
}

/// Module dependencies by module name, from a `modules.dep` (depmod's) or the `.ko` files of a
/// directory (their modinfo `depends=`).
pub fn module_deps(dir: &Utf8Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("modules.dep")) {
        for line in text.lines() {
            if let Some((m, deps)) = line.split_once(':') {
                let deps = deps
                    .split_whitespace()
                    .map(|d| {
                        crate::kbuild::module_name(
                            d.trim_end_matches(".xz")
                                .trim_end_matches(".zst")
                                .trim_end_matches(".gz"),
                        )
                    })
                    .collect();
                out.insert(
                    crate::kbuild::module_name(
                        m.trim_end_matches(".xz")
                            .trim_end_matches(".zst")
                            .trim_end_matches(".gz"),
                    ),
                    deps,
                );
            }
        }
        return out;
    }
    for e in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
    {
        let Some(p) = e.path().to_str() else { continue };
        if p.ends_with(".ko")
            && let Ok(Some(deps)) = kbuild_install::elf::modinfo_value(Utf8Path::new(p), "depends")
        {
            out.insert(
                crate::kbuild::module_name(p),
                deps.split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
    }
    out
}

pub struct Inputs<'a> {
    pub k: &'a KbuildTree,
    pub index: &'a Index,
    /// Kbuild's module map (every tristate symbol).
    pub kmap: &'a crate::modmap::Kmap,
    pub src: &'a Utf8Path,
    /// Module dependencies (empty when no module directory was given).
    pub deps: &'a BTreeMap<String, Vec<String>>,
}

/// Every finding for a package set, sorted by level, package and kind.
pub fn audit(inp: &Inputs, packages: &[AuditPackage]) -> Result<Vec<Finding>, Error> {
    let mut findings = Vec::new();
    let by_name: BTreeMap<&str, &AuditPackage> =
        packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let owns = package_findings(inp, packages, &mut findings);
    kernel_affecting(inp, packages, &by_name, &mut findings);
    missing_dependencies(inp, packages, &by_name, &owns, &mut findings);
    unpackaged(inp, &owns, &mut findings);
    findings.sort_by(|a, b| (a.level, &a.package, a.kind).cmp(&(b.level, &b.package, b.kind)));
    Ok(findings)
}

/// Each package on its own: unknown symbols, FILES against what its KCONFIG builds, reliance
/// on defaults, AUTOLOAD names. Returns what each package owns: FILES, else what its symbols
/// build.
fn package_findings<'p>(
    inp: &Inputs,
    packages: &'p [AuditPackage],
    findings: &mut Vec<Finding>,
) -> BTreeMap<&'p str, BTreeSet<String>> {
    let mut owns: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for p in packages {
        let predicted: BTreeSet<String> = p
            .kconfig
            .iter()
            .filter(|r| r.value.as_deref().is_none_or(|v| v == "m"))
            .flat_map(|r| inp.kmap.paths(&r.symbol))
            .collect();
        let files: BTreeSet<String> = p.files.iter().cloned().collect();
        owns.insert(
            &p.name,
            if files.is_empty() {
                predicted.clone()
            } else {
                files.clone()
            },
        );
        let named: BTreeSet<&str> = p.kconfig.iter().map(|r| r.symbol.as_str()).collect();
        for r in &p.kconfig {
            if inp.index.sym_type(&r.symbol).is_none() {
                findings.push(Finding {
                    level: Level::Warning,
                    kind: Kind::UnknownSymbol,
                    package: Some(p.name.clone()),
                    subject: Some(format!("CONFIG_{}", r.symbol)),
                    message: format!(
                        "CONFIG_{} is not a Kconfig symbol of this kernel: `extmod build` refuses it (exit 20) unless the package sets ignore_unknown; OpenWrt's Kconfig merge drops it",
                        r.symbol
                    ),
                });
            }
        }
        if !files.is_empty() && !predicted.is_empty() {
            for f in files.difference(&predicted) {
                let builders = inp.kmap.symbols_for(f);
                if builders.is_empty() {
                    findings.push(Finding { level: Level::Error, kind: Kind::FilesMissing, package: Some(p.name.clone()), subject: None,
                        message: format!("FILES names {f}, which no Makefile line builds (ERROR: module '{f}' is missing.)") });
                } else if !builders.iter().any(|b| named.contains(b.as_str())) {
                    findings.push(Finding { level: Level::Warning, kind: Kind::DefaultReliance, package: Some(p.name.clone()), subject: None,
                        message: format!("{f} is built by {} which the package's KCONFIG does not name: it relies on that symbol's default",
                            builders.iter().map(|b| format!("CONFIG_{b}")).collect::<Vec<_>>().join(" or ")) });
                }
            }
            for m in predicted.difference(&files) {
                findings.push(Finding {
                    level: Level::Warning,
                    kind: Kind::FilesExtra,
                    package: Some(p.name.clone()),
                    subject: None,
                    message: format!("its KCONFIG also builds {m}, which FILES does not list"),
                });
            }
        }
        if p.kconfig.is_empty() && !files.is_empty() {
            let builders: BTreeSet<String> =
                files.iter().flat_map(|f| inp.kmap.symbols_for(f)).collect();
            findings.push(Finding {
                level: Level::Warning,
                kind: Kind::DefaultReliance,
                package: Some(p.name.clone()),
                subject: None,
                message: format!(
                    "no KCONFIG: its modules come from {} only through defaults and other packages",
                    if builders.is_empty() {
                        "symbols extmod cannot find".to_string()
                    } else {
                        builders
                            .iter()
                            .map(|b| format!("CONFIG_{b}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            });
        }
        let file_names: BTreeSet<String> = owns[p.name.as_str()]
            .iter()
            .map(|f| crate::kbuild::module_name(f))
            .collect();
        for a in &p.autoload {
            if !file_names.contains(&crate::kbuild::module_name(a)) {
                findings.push(Finding {
                    level: Level::Warning,
                    kind: Kind::AutoloadNotInFiles,
                    package: Some(p.name.clone()),
                    subject: None,
                    message: format!("AUTOLOAD names `{a}`, which is not among its FILES"),
                });
            }
        }
    }
    owns
}

/// Kernel-affecting KCONFIG (static classification: what extmod variant would find, without
/// Kconfig's select/default propagation).
fn kernel_affecting(
    inp: &Inputs,
    packages: &[AuditPackage],
    by_name: &BTreeMap<&str, &AuditPackage>,
    findings: &mut Vec<Finding>,
) {
    let mut candidates: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for p in packages {
        for r in &p.kconfig {
            let Some(v) = r.value.as_deref() else {
                continue;
            };
            if v == "n" || v == "m" || inp.k.value(&r.symbol) == Some(v) {
                continue;
            }
            match inp.index.sym_type(&r.symbol) {
                Some(SymType::Tristate) => findings.push(Finding {
                    level: Level::Error,
                    kind: Kind::KernelAffecting,
                    package: Some(p.name.clone()),
                    subject: Some(format!("CONFIG_{}", r.symbol)),
                    message: format!(
                        "KCONFIG CONFIG_{}={v} builds a tristate into vmlinux (base: {})",
                        r.symbol,
                        inp.k.value(&r.symbol).unwrap_or("n")
                    ),
                }),
                Some(_) => candidates
                    .entry(r.symbol.clone())
                    .or_default()
                    .push(&p.name),
                None => {}
            }
        }
    }
    // The same rule as `extmod variant`: the base build's fixdep record and Kbuild's evaluation
    // of the Makefiles (each symbol set on its own, without Kconfig's propagation).
    let locality = crate::locality::Locality::for_tree(inp.k);
    let requests: Vec<(String, Option<String>)> = candidates
        .iter()
        .map(|(sym, pkgs)| {
            let v = by_name[pkgs[0]]
                .kconfig
                .iter()
                .find(|r| r.symbol == *sym)
                .and_then(|r| r.value.clone());
            (sym.clone(), v)
        })
        .collect();
    let deltas = if locality.has_record() && !requests.is_empty() {
        let ev = crate::modmap::evaluator(inp.k, inp.src);
        crate::locality::targeted_deltas(inp.index, &ev, &requests)
    } else {
        Vec::new()
    };
    for (i, (sym, pkgs)) in candidates.iter().enumerate() {
        let verdicts = locality.judge(std::slice::from_ref(sym), deltas.get(i), Some(inp.index));
        let why = match verdicts.get(sym) {
            Some(crate::locality::Verdict::Kernel(why, _))
            | Some(crate::locality::Verdict::Unjudged(why)) => why.clone(),
            _ => continue,
        };
        for pname in pkgs {
            findings.push(Finding {
                level: Level::Error,
                kind: Kind::KernelAffecting,
                package: Some(pname.to_string()),
                subject: Some(format!("CONFIG_{sym}")),
                message: format!(
                    "KCONFIG CONFIG_{sym}={} changes the kernel: {why}",
                    by_name[pname]
                        .kconfig
                        .iter()
                        .find(|r| r.symbol == *sym)
                        .and_then(|r| r.value.clone())
                        .unwrap_or_default(),
                ),
            });
        }
    }
}

/// Module dependencies that cross into packages outside the DEPENDS closure.
fn missing_dependencies(
    inp: &Inputs,
    packages: &[AuditPackage],
    by_name: &BTreeMap<&str, &AuditPackage>,
    owns: &BTreeMap<&str, BTreeSet<String>>,
    findings: &mut Vec<Finding>,
) {
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    for (p, mods) in owns {
        for m in mods {
            owner.entry(crate::kbuild::module_name(m)).or_insert(p);
        }
    }
    let closure = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.to_string()];
        while let Some(n) = todo.pop() {
            if seen.insert(n.clone())
                && let Some(p) = by_name.get(n.as_str())
            {
                todo.extend(p.depends.iter().cloned());
            }
        }
        seen
    };
    for p in packages {
        let reach = closure(&p.name);
        for m in &owns[p.name.as_str()] {
            for d in inp
                .deps
                .get(&crate::kbuild::module_name(m))
                .into_iter()
                .flatten()
            {
                match owner.get(d) {
                    Some(o) if reach.contains(*o) => {}
                    Some(o) => findings.push(Finding {
                        level: Level::Error,
                        kind: Kind::MissingDependency,
                        package: Some(p.name.clone()),
                        subject: None,
                        message: format!(
                            "{m} needs module `{d}`, which is in package {o}, not in its DEPENDS"
                        ),
                    }),
                    None => findings.push(Finding {
                        level: Level::Error,
                        kind: Kind::MissingDependency,
                        package: Some(p.name.clone()),
                        subject: None,
                        message: format!("{m} needs module `{d}`, which no package provides"),
                    }),
                }
            }
        }
    }
}

/// Built modules no package owns.
fn unpackaged(inp: &Inputs, owns: &BTreeMap<&str, BTreeSet<String>>, findings: &mut Vec<Finding>) {
    let owned: BTreeSet<&String> = owns.values().flatten().collect();
    for o in inp.k.modules_order.iter().flatten() {
        let ko = format!("{}.ko", o.trim_end_matches(".o"));
        if !owned.contains(&ko) {
            findings.push(Finding {
                level: Level::Warning,
                kind: Kind::Unpackaged,
                package: None,
                subject: Some(ko.clone()),
                message: format!("unpackaged kernel module found: {ko}"),
            });
        }
    }
}

/// A catch-all package definition (TOML) owning every unpackaged module.
pub fn catch_all(name: &str, findings: &[Finding]) -> String {
    let files: Vec<String> = findings
        .iter()
        .filter(|f| f.kind == Kind::Unpackaged)
        .filter_map(|f| f.subject.as_deref())
        // A JSON string is a valid TOML basic string: quotes and control characters escaped.
        .map(|f| format!("  {},", serde_json::Value::from(f)))
        .collect();
    format!(
        "[[package]]\nname = {}\nkconfig = [\"CONFIG_MODULES\"]\nfiles = [\n{}\n]\n",
        serde_json::Value::from(name),
        files.join("\n")
    )
}

/// Package counts per finding kind, and the symbols behind kernel-affecting packages.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Packages with no kernel-affecting finding: buildable without changing the kernel.
    pub without_kernel_change: usize,
    pub kernel_affecting: usize,
    /// Symbol -> number of packages it makes kernel-affecting, most first.
    pub kernel_affecting_symbols: Vec<(String, usize)>,
    pub missing_dependency: usize,
    pub files_disagree: usize,
    pub default_reliance: usize,
    pub autoload_not_in_files: usize,
    pub unpackaged_modules: usize,
}

pub fn summary(packages: &[AuditPackage], findings: &[Finding]) -> Summary {
    let with = |kinds: &[Kind]| {
        findings
            .iter()
            .filter(|f| kinds.contains(&f.kind))
            .filter_map(|f| f.package.as_deref())
            .collect::<BTreeSet<_>>()
            .len()
    };
    let mut syms: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.kind == Kind::KernelAffecting) {
        if let (Some(p), Some(sym)) = (f.package.as_deref(), f.subject.clone()) {
            syms.entry(sym).or_default().insert(p);
        }
    }
    let mut kernel_affecting_symbols: Vec<(String, usize)> =
        syms.into_iter().map(|(s, p)| (s, p.len())).collect();
    kernel_affecting_symbols.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let kernel_affecting = with(&[Kind::KernelAffecting]);
    Summary {
        without_kernel_change: packages.len() - kernel_affecting,
        kernel_affecting,
        kernel_affecting_symbols,
        missing_dependency: with(&[Kind::MissingDependency]),
        files_disagree: with(&[Kind::FilesMissing, Kind::FilesExtra]),
        default_reliance: with(&[Kind::DefaultReliance]),
        autoload_not_in_files: with(&[Kind::AutoloadNotInFiles]),
        unpackaged_modules: findings
            .iter()
            .filter(|f| f.kind == Kind::Unpackaged)
            .count(),
    }
}

pub fn summary_lines(s: &Summary) -> Vec<String> {
    let top: Vec<String> = s
        .kernel_affecting_symbols
        .iter()
        .take(10)
        .map(|(sym, n)| format!("{sym} ({n})"))
        .collect();
    vec![
        format!(
            "  packages buildable without changing the kernel: {}",
            s.without_kernel_change
        ),
        format!(
            "  kernel-affecting packages: {} (most by {})",
            s.kernel_affecting,
            top.join(", ")
        ),
        format!(
            "  packages with missing dependency declarations: {}",
            s.missing_dependency
        ),
        format!(
            "  packages whose FILES disagree with the Makefiles: {}",
            s.files_disagree
        ),
        format!(
            "  packages relying on a symbol's default: {}",
            s.default_reliance
        ),
        format!(
            "  packages with AUTOLOAD names not in FILES: {}",
            s.autoload_not_in_files
        ),
        format!("  unpackaged modules: {}", s.unpackaged_modules),
    ]
}
