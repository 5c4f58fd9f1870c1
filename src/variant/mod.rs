//! Configuration variants: the kernel's own Kconfig (`scripts/kconfig/conf` of a tree made by
//! `extmod kbuild-install`) run on the base `.config` plus a package's settings, into a directory
//! of extmod's, never into the Kbuild tree. The difference from the base is classified:
//!
//! - **module-local**: new `=m` symbols, and `=y`/value sub-options referenced only inside the
//!   directories of the modules being built;
//! - **kernel-affecting**: any other change of a `=y`, string, int or hex symbol (built-in code,
//!   struct layouts, global flags);
//! - **toolchain drift**: what Kconfig recomputes differently from the base even with no request
//!   (compiler, assembler, linker, pahole versions and capabilities of this machine);
//! - **not applied**: a request Kconfig did not take, with the reason.
//!
//! Variants are cached by their inputs under the object directory.

use crate::error::Error;
use crate::kbuild::KbuildTree;
use crate::package::KconfigReq;
use crate::symbols::Index;
use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::kconfig::{ConfOutputs, run_conf};
use kbuild_install::{Error as KError, Manifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

mod judge;

const FORMAT: u32 = 3;
const REPORT: &str = "variant.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    ModuleLocal,
    KernelAffecting,
    ToolchainDrift,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub symbol: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub class: Class,
    pub why: String,
    /// The built-in objects that make it kernel-affecting (fixdep dependents, or objects the
    /// Makefiles link or unlink).
    #[serde(default)]
    pub objects: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotApplied {
    pub request: String,
    pub got: Option<String>,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Variant {
    pub format: u32,
    pub dir: Utf8PathBuf,
    pub requests: Vec<String>,
    pub changes: Vec<Change>,
    pub drift: Vec<Change>,
    pub not_applied: Vec<NotApplied>,
    /// Symbols newly `=m` (their modules must be built with the package).
    pub new_modules: Vec<String>,
    /// Objects Kbuild's Makefiles link into vmlinux under the variant but not under the base,
    /// and the reverse (empty when the Makefiles could not be evaluated).
    #[serde(default)]
    pub builtin_added: Vec<String>,
    #[serde(default)]
    pub builtin_removed: Vec<String>,
}

impl Variant {
    pub fn kernel_affecting(&self) -> Vec<&Change> {
        self.changes
            .iter()
            .filter(|c| c.class == Class::KernelAffecting)
            .collect()
    }
}

use kbuild_install::config::parse as parse_config;

fn diff(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>, Option<String>)> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| (k.clone(), a.get(k).cloned(), b.get(k).cloned()))
        .collect()
}

fn hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    format!("{:x}", h.finalize())
}

pub struct Inputs<'a> {
    pub k: &'a KbuildTree,
    pub src: Option<&'a Utf8Path>,
    pub index: Option<&'a Index>,
    pub cache: &'a Utf8Path,
}

fn io<'a>(action: &'static str, p: &'a Utf8Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::Kbuild(KError::io(action, p, e))
}

/// The manifest of a tree that can make variants (made by `extmod kbuild-install`).
pub fn variant_manifest(k: &KbuildTree) -> Result<&Manifest, Error> {
    match &k.manifest {
        Some(m)
            if k.path.join("scripts/kconfig/conf").is_file()
                && k.path.join("Kconfig").is_file() =>
        {
            Ok(m)
        }
        _ => Err(Error::NoKconfig(k.path.clone())),
    }
}

/// Run Kconfig on `.config` text into `dir`, in the given modes (`olddefconfig` resolves new
/// symbols to their defaults; `syncconfig` writes auto.conf, autoconf.h and include/config/).
fn kconfig(
    k: &KbuildTree,
    m: &Manifest,
    config: &str,
    dir: &Utf8Path,
    modes: &[&str],
) -> Result<(), Error> {
    let outs = ConfOutputs {
        dir: dir.to_owned(),
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    std::fs::write(outs.config(), config).map_err(io("write", dir))?;
    for mode in modes {
        run_conf(&k.path, m, &outs, mode)?;
    }
    Ok(())
}

/// The base configuration recomputed on this machine (cached): its difference from the base
/// auto.conf is toolchain drift.
fn base_recomputed(inp: &Inputs, m: &Manifest) -> Result<BTreeMap<String, String>, Error> {
    let env = serde_json::to_vec(&m.toolchain_env).expect("serializes");
    let key = hash(&[
        inp.k.identity.as_bytes(),
        &env,
        inp.k.path.as_str().as_bytes(),
    ]);
    let dir = inp.cache.join(format!("base-{}", &key[..16]));
    let auto = dir.join("include/config/auto.conf");
    if !auto.is_file() {
        let config =
            std::fs::read_to_string(inp.k.path.join(".config")).map_err(io("read", &inp.k.path))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".base-{}-", std::process::id()))
            .tempdir_in(inp.cache)
            .map_err(io("create", inp.cache))?;
        let t = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf()).expect("UTF-8");
        // The base .config is complete (no new symbols): syncconfig alone recomputes it.
        kconfig(inp.k, m, &config, &t, &["syncconfig"])?;
        // Another run may have made it meanwhile: the same inputs, the same result.
        let name = dir.file_name().unwrap_or("base").to_string();
        let _ = kbuild_install::fsutil::replace_dir(tmp, &dir, inp.cache, &name);
    }
    Ok(parse_config(
        &std::fs::read_to_string(&auto).map_err(io("read", &auto))?,
    ))
}

/// `.config` text with the requests applied.
pub(crate) fn apply(config: &str, sets: &[KconfigReq]) -> String {
    let names: BTreeSet<String> = sets.iter().map(|r| r.symbol.clone()).collect();
    let mut out: String = config
        .lines()
        .filter(|l| {
            let sym = l
                .strip_prefix("CONFIG_")
                .and_then(|r| r.split('=').next())
                .or_else(|| {
                    l.strip_prefix("# CONFIG_")
                        .and_then(|r| r.strip_suffix(" is not set"))
                });
            sym.is_none_or(|s| !names.contains(s))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for r in sets {
        match r.value.as_deref().unwrap_or("m") {
            "n" => out.push_str(&format!("# CONFIG_{} is not set\n", r.symbol)),
            v => out.push_str(&format!("CONFIG_{}={v}\n", r.symbol)),
        }
    }
    out
}

/// Where the variant for `sets` is cached: keyed by the Kbuild tree, the toolchain environment,
/// the source tree and the requests.
fn location(
    k: &KbuildTree,
    m: &Manifest,
    src: Option<&Utf8Path>,
    sets: &[KconfigReq],
    cache: &Utf8Path,
) -> (Utf8PathBuf, Vec<String>, Vec<KconfigReq>) {
    let mut sorted = sets.to_vec();
    sorted.sort();
    let requests: Vec<String> = sorted.iter().map(|r| r.to_string()).collect();
    let env = serde_json::to_vec(&m.toolchain_env).expect("serializes");
    let key = hash(&[
        k.identity.as_bytes(),
        k.path.as_str().as_bytes(),
        &env,
        requests.join(" ").as_bytes(),
        src.map_or("", |s| s.as_str()).as_bytes(),
        // What the verdict rests on: the base build's record and the Makefiles to evaluate.
        format!(
            "{:?}{:?}",
            std::fs::metadata(k.path.join(kbuild_install::builtin::FILE))
                .ok()
                .map(|m| m.len()),
            crate::locality::makefile_root(k, src)
        )
        .as_bytes(),
        env!("CARGO_PKG_VERSION").as_bytes(),
        &FORMAT.to_le_bytes(),
    ]);
    (cache.join(&key[..24]), requests, sorted)
}

fn load(dir: &Utf8Path) -> Option<Variant> {
    let text = std::fs::read_to_string(dir.join(REPORT)).ok()?;
    serde_json::from_str::<Variant>(&text)
        .ok()
        .filter(|v| v.format == FORMAT)
}

/// The cached variant for `sets`, if it was made before.
pub fn cached(
    k: &KbuildTree,
    src: Option<&Utf8Path>,
    sets: &[KconfigReq],
    cache: &Utf8Path,
) -> Option<Variant> {
    let m = variant_manifest(k).ok()?;
    load(&location(k, m, src, sets, cache).0)
}

/// A request's value must be one `.config` value: `y`, `m`, `n`, a number, a plain word, or a
/// double-quoted string with `\\` escapes; never a line break (which would smuggle a second
/// setting into the variant's `.config`) or a stray quote.
pub fn check_request(r: &KconfigReq) -> Result<(), Error> {
    let Some(v) = r.value.as_deref() else {
        return Ok(());
    };
    let plain = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_+-.,/:@=".contains(c));
    let quoted = v.len() >= 2
        && v.starts_with('"')
        && v.ends_with('"')
        && !v.chars().any(char::is_control)
        && {
            let inner = &v[1..v.len() - 1];
            let mut esc = false;
            inner.chars().all(|c| {
                let ok = esc || c != '"';
                esc = !esc && c == '\\';
                ok
            }) && !esc
        };
    if plain || quoted {
        return Ok(());
    }
    Err(Error::PackageFile {
        path: "--set".into(),
        why: format!(
            "CONFIG_{}: value {:?} is not a Kconfig value (y, m, n, a number, a word, or a \"quoted string\" on one line)",
            r.symbol, v
        ),
    })
}

/// Generate (or reuse) the variant for `sets`.
pub fn generate(inp: &Inputs, sets: &[KconfigReq]) -> Result<Variant, Error> {
    for r in sets {
        check_request(r)?;
    }
    let m = variant_manifest(inp.k)?;
    std::fs::create_dir_all(inp.cache).map_err(io("create", inp.cache))?;
    let (dir, requests, sorted) = location(inp.k, m, inp.src, sets, inp.cache);
    if let Some(v) = load(&dir) {
        return Ok(v);
    }
    // Temporary directories of runs that were killed.
    for prefix in [".variant-", ".base-"] {
        kbuild_install::fsutil::clean_stale(inp.cache, prefix);
    }
    // One maker per entry: another run may be making it, or building against it.
    let _lock = kbuild_install::lock::exclusive(
        &dir.with_extension("lock"),
        "extmod making a configuration variant",
        kbuild_install::lock::Wait::Yes,
        &mut |_| {},
    )?;
    if let Some(v) = load(&dir) {
        return Ok(v);
    }
    let base_orig = parse_config(&inp.k.auto_conf);
    let config =
        std::fs::read_to_string(inp.k.path.join(".config")).map_err(io("read", &inp.k.path))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".variant-{}-", std::process::id()))
        .tempdir_in(inp.cache)
        .map_err(io("create", inp.cache))?;
    let t = Utf8PathBuf::from_path_buf(tmp.path().to_path_buf()).expect("UTF-8");
    // The base recompute (cached) and the variant are independent Kconfig runs: run both at once.
    let (base, made) = std::thread::scope(|scope| {
        let base = scope.spawn(|| base_recomputed(inp, m));
        let made = kconfig(
            inp.k,
            m,
            &apply(&config, &sorted),
            &t,
            // One run: olddefconfig also writes auto.conf, autoconf.h, rustc_cfg and the
            // per-symbol files when there is no auto.conf yet (a fresh directory), as
            // syncconfig would; conf's toolchain probes run once rather than twice.
            &["olddefconfig"],
        );
        (base.join().expect("base Kconfig thread"), made)
    });
    made?;
    let base = base?;
    let variant = parse_config(
        &std::fs::read_to_string(t.join("include/config/auto.conf")).map_err(io("read", &t))?,
    );

    let drift: Vec<Change> = diff(&base_orig, &base)
        .into_iter()
        .map(|(symbol, old, new)| Change {
            why: "recomputed by this machine's toolchain without any request".into(),
            objects: Vec::new(),
            symbol,
            old,
            new,
            class: Class::ToolchainDrift,
        })
        .collect();
    let drifted: BTreeSet<&String> = drift.iter().map(|c| &c.symbol).collect();
    let raw = diff(&base, &variant);
    let new_modules: Vec<String> = raw
        .iter()
        .filter(|(_, o, n)| o.is_none() && n.as_deref() == Some("m"))
        .map(|(s, _, _)| s.clone())
        .collect();

    let (changes, delta) = judge::classify(inp, &base, &variant, raw, &drifted);
    let not_applied = judge::not_applied(inp, &sorted, &variant);
    let v = Variant {
        format: FORMAT,
        dir: dir.clone(),
        requests,
        changes,
        drift,
        not_applied,
        new_modules,
        builtin_added: delta
            .as_ref()
            .map(|d| d.added.iter().cloned().collect())
            .unwrap_or_default(),
        builtin_removed: delta
            .as_ref()
            .map(|d| d.removed.iter().cloned().collect())
            .unwrap_or_default(),
    };
    let report = t.join(REPORT);
    std::fs::write(
        &report,
        serde_json::to_string_pretty(&v).expect("serializes"),
    )
    .map_err(io("write", &report))?;
    let name = dir.file_name().unwrap_or("variant").to_string();
    kbuild_install::fsutil::replace_dir(tmp, &dir, inp.cache, &name)?;
    Ok(v)
}

/// Copy a variant's outputs into `out` (which must not be inside the Kbuild or source tree).
pub fn export(v: &Variant, out: &Utf8Path) -> Result<(), Error> {
    for rel in [
        ".config",
        "include/config/auto.conf",
        "include/generated/autoconf.h",
        "include/generated/rustc_cfg",
    ] {
        let from = v.dir.join(rel);
        let to = out.join(rel);
        std::fs::create_dir_all(to.parent().expect("has a parent")).map_err(io("create", out))?;
        if from.is_file() {
            std::fs::copy(&from, &to).map_err(io("copy", &from))?;
        }
    }
    // The per-symbol files of include/config/ (fixdep's dependencies).
    let cfg = v.dir.join("include/config");
    for e in walkdir::WalkDir::new(&cfg)
        .into_iter()
        .filter_map(Result::ok)
    {
        if let Ok(rel) = e.path().strip_prefix(&cfg)
            && let Some(rel) = rel.to_str()
        {
            let to = out.join("include/config").join(rel);
            if e.file_type().is_dir() {
                std::fs::create_dir_all(&to).map_err(io("create", &to))?;
            } else if !to.exists() {
                std::fs::copy(e.path(), &to).map_err(io("copy", &to))?;
            }
        }
    }
    Ok(())
}

/// Human-readable classification.
pub fn report_lines(v: &Variant) -> Vec<String> {
    let mut out = Vec::new();
    let show = |c: &Change| {
        format!(
            "CONFIG_{} {} -> {}: {}",
            c.symbol,
            c.old.as_deref().unwrap_or("n"),
            c.new.as_deref().unwrap_or("n"),
            c.why
        )
    };
    for (class, label) in [
        (Class::ModuleLocal, "Local"),
        (Class::KernelAffecting, "Kernel"),
    ] {
        for c in v.changes.iter().filter(|c| c.class == class) {
            out.push(format!("{label:>12} {}", show(c)));
        }
    }
    for c in &v.drift {
        out.push(format!("{:>12} {}", "Toolchain", show(c)));
    }
    for n in &v.not_applied {
        out.push(format!("{:>12} {}: {}", "Not applied", n.request, n.why));
    }
    if v.changes.is_empty() && v.not_applied.is_empty() {
        out.push(format!(
            "{:>12} the base configuration already has it",
            "Unchanged"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_cannot_smuggle_lines() {
        let ok = [
            "m",
            "y",
            "n",
            "0x10",
            "-3",
            "lzo-rle",
            "\"a b\"",
            "\"q\\\"x\"",
            "\"\"",
        ];
        for v in ok {
            let r = KconfigReq {
                symbol: "X".into(),
                value: Some(v.into()),
            };
            assert!(check_request(&r).is_ok(), "{v}");
        }
        let bad = [
            "m\nCONFIG_MODVERSIONS=n",
            "\"a",
            "a b",
            "\"a\"b\"",
            "\"a\\\"",
            "x\r",
        ];
        for v in bad {
            let r = KconfigReq {
                symbol: "X".into(),
                value: Some(v.into()),
            };
            assert_eq!(check_request(&r).unwrap_err().exit_code(), 24, "{v:?}");
        }
    }

    #[test]
    fn requests_replace_base_lines() {
        let base = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\n";
        let sets = [
            KconfigReq::parse("CONFIG_B").unwrap(),
            KconfigReq::parse("A=n").unwrap(),
        ];
        let out = apply(base, &sets);
        assert_eq!(out, "CONFIG_C=m\nCONFIG_B=m\n# CONFIG_A is not set\n");
    }

    #[test]
    fn diff_lists_changed_symbols() {
        let a = parse_config("CONFIG_A=y\nCONFIG_B=m\n");
        let b = parse_config("CONFIG_A=y\nCONFIG_C=m\n");
        assert_eq!(
            diff(&a, &b),
            [
                ("B".to_string(), Some("m".to_string()), None),
                ("C".to_string(), None, Some("m".to_string()))
            ]
        );
    }
}
