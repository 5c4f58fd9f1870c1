//! The Kbuild tree (K) modules are built against: a tree made by `extmod kbuild-install`, one
//! made by the kernel's `install-extmod-build`, a distribution headers package, or a full object
//! directory.

use crate::error::Error;
use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::paths::canonical;
use kbuild_install::tree::config_value;
use kbuild_install::{Error as KError, Manifest};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Made by `extmod kbuild-install` (has a manifest).
    Extmod,
    /// Made by `scripts/package/install-extmod-build`.
    InstallExtmodBuild,
    /// A distribution headers package with a wrapper Makefile (Debian's linux-headers-*).
    DistroHeaders,
    /// A kernel object directory (`make O=`), or an in-source build.
    ObjTree,
}

#[derive(Debug, Clone)]
pub struct KbuildTree {
    pub path: Utf8PathBuf,
    pub kind: Kind,
    /// The release the kernel reports and its modules carry (UTS_RELEASE).
    pub kernelrelease: String,
    /// `include/config/kernel.release` (the source version plus local version when Kbuild
    /// computed it): what the source tree's version is checked against.
    pub recorded_release: String,
    pub make_vars: Vec<String>,
    /// `include/config/auto.conf`.
    pub auto_conf: String,
    /// Its values by symbol (without `CONFIG_`).
    values: kbuild_install::config::Config,
    /// Relative `.o` paths of the modules the base build made, when the tree records them.
    pub modules_order: Option<Vec<String>>,
    /// Directories whose entries make up the tree, highest priority first (one for most kinds;
    /// the arch directory then the common directory for split distribution packages).
    pub layers: Vec<Utf8PathBuf>,
    /// Hash of what a module build reads from the tree (config, symbol versions, release).
    pub identity: String,
    /// The manifest of a tree made by `extmod kbuild-install`.
    pub manifest: Option<Manifest>,
    /// The kernel's SRCARCH (`x86`, `arm64`, ...).
    pub srcarch: String,
}

fn read_opt(p: &Utf8Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

impl KbuildTree {
    pub fn open(path: &Utf8Path) -> Result<Self, Error> {
        let not = || Error::Kbuild(KError::NotKbuildTree(path.to_owned()));
        if !path.is_dir() {
            return Err(not());
        }
        let path = canonical(path)?;
        let makefile = read_opt(&path.join("Makefile")).ok_or_else(not)?;
        let auto_conf = read_opt(&path.join("include/config/auto.conf")).ok_or_else(not)?;
        let symvers = std::fs::read(path.join("Module.symvers")).map_err(|_| not())?;
        let recorded = read_opt(&path.join("include/config/kernel.release"))
            .map(|s| s.trim().to_string())
            .ok_or_else(not)?;
        // The release modules carry in their vermagic and the kernel reports (`uname -r`, where
        // modprobe looks) is UTS_RELEASE. It is kernel.release, except in packages built with
        // KERNELRELEASE given to make: Debian 12's 6.1 headers record `6.1.192` there and
        // `6.1.0-57-amd64` in utsrelease.h, and its modules live in lib/modules/6.1.0-57-amd64.
        let kernelrelease = read_opt(&path.join("include/generated/utsrelease.h"))
            .as_deref()
            .and_then(uts_release)
            .unwrap_or_else(|| recorded.clone());
        let manifest = manifest_of(&path, &auto_conf)?;
        let mut layers = vec![path.clone()];
        let kind = if manifest.is_some() {
            Kind::Extmod
        } else if path.join("source").is_symlink() || path.join("Kconfig").is_file() {
            Kind::ObjTree
        } else if !makefile.contains("\nVERSION =") {
            // A wrapper Makefile: the rest of the tree lives where it points.
            if let Some(common) = wrapper_target(&makefile) {
                layers.push(common);
            }
            Kind::DistroHeaders
        } else {
            Kind::InstallExtmodBuild
        };
        let has_build = layers
            .iter()
            .any(|l| l.join("scripts/Makefile.build").is_file())
            || (kind == Kind::ObjTree && path.join("source/scripts/Makefile.build").is_file());
        if !has_build {
            return Err(not());
        }
        let make_vars = match &manifest {
            Some(m) => m.make_vars(),
            None => {
                let mut v = vec![format!("ARCH={}", arch_of_config(&auto_conf))];
                // Not recorded in such trees: the caller's, when given.
                if let Ok(cross) = std::env::var("CROSS_COMPILE")
                    && !cross.is_empty()
                {
                    v.push(format!("CROSS_COMPILE={cross}"));
                }
                v
            }
        };
        // As `.o` paths, whichever generation of Kbuild wrote it.
        let modules_order = read_opt(&path.join("modules.order")).map(|t| {
            kbuild_install::tree::module_stems(&t)
                .map(|s| format!("{s}.o"))
                .collect()
        });
        let mut h = Sha256::new();
        h.update(kernelrelease.as_bytes());
        h.update(auto_conf.as_bytes());
        h.update(&symvers);
        h.update(make_vars.join(" ").as_bytes());
        let values = kbuild_install::config::parse(&auto_conf);
        let srcarch = match &manifest {
            Some(m) => m.srcarch.clone(),
            None => make_vars
                .iter()
                .find_map(|v| v.strip_prefix("ARCH="))
                .map_or_else(
                    || "x86".to_string(),
                    |a| match a {
                        "x86_64" | "i386" => "x86".to_string(),
                        a => a.to_string(),
                    },
                ),
        };
        Ok(KbuildTree {
            path,
            kind,
            kernelrelease,
            recorded_release: recorded,
            make_vars,
            auto_conf,
            values,
            modules_order,
            layers,
            identity: format!("{:x}", h.finalize()),
            manifest,
            srcarch,
        })
    }

    /// The base value of a symbol (`y`, `m`, a string or number), `None` when unset.
    pub fn value(&self, sym: &str) -> Option<&str> {
        let sym = sym.strip_prefix("CONFIG_").unwrap_or(sym);
        self.values.get(sym).map(String::as_str)
    }

    /// The C compiler modules are built with: the recorded CC, else `$(CROSS_COMPILE)gcc` with
    /// CROSS_COMPILE from the environment (trees without a manifest do not record it).
    pub fn compiler(&self) -> String {
        match &self.manifest {
            Some(m) => m.cc.clone(),
            None => format!("{}gcc", std::env::var("CROSS_COMPILE").unwrap_or_default()),
        }
    }

    /// The compiler must generate code for the tree's architecture: `cc -dumpmachine` names its
    /// target (`aarch64-linux-gnu`), which maps to one Kbuild SRCARCH.
    ///
    /// With `cache` (a directory of D), the answer is read from there, by the compiler
    /// binary ([`crate::fresh::tool_identity`]): one process less in every later run (a fifth of a
    /// no-op). A new answer is returned, with where to keep it once the run may write D.
    pub fn check_compiler_target(
        &self,
        cc: &str,
        cache: Option<&Utf8Path>,
    ) -> Result<Option<(Utf8PathBuf, String)>, Error> {
        let kept = cache.and_then(|dir| {
            let id = crate::fresh::tool_identity(cc)?;
            let key = format!("{:x}", sha2::Sha256::digest(id.as_bytes()));
            Some(dir.join(format!("dumpmachine-{}", &key[..16])))
        });
        let mut new = None;
        let triple = match kept.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            Some(t) => t,
            None => {
                let Ok(out) = std::process::Command::new(cc)
                    .arg("-dumpmachine")
                    .stdin(std::process::Stdio::null())
                    .output()
                else {
                    return Ok(None);
                };
                let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if out.status.success() && !t.is_empty() {
                    new = kept.map(|p| (p, t.clone()));
                }
                t
            }
        };
        let Some(arch) = srcarch_of_triple(&triple) else {
            return Ok(new);
        };
        if arch != self.srcarch {
            return Err(Error::CompilerTarget {
                cc: cc.to_string(),
                triple,
                tree: self.path.clone(),
                srcarch: self.srcarch.clone(),
            });
        }
        Ok(new)
    }

    /// A warning when the kernel is outside the versions extmod is tested with.
    pub fn untested_version(&self) -> Option<String> {
        untested_warning(&self.kernelrelease)
    }

    /// A note when modules will lack the BTF the kernel's own have: Kbuild generates module
    /// BTF (`CONFIG_DEBUG_INFO_BTF_MODULES`) against `vmlinux` and skips it when the tree has
    /// none (Debian 12's 6.1 headers ship no vmlinux; its 6.12 headers do).
    pub fn btf_note(&self) -> Option<String> {
        (self.value("DEBUG_INFO_BTF_MODULES") == Some("y")
            && !self.layers.iter().any(|l| l.join("vmlinux").is_file()))
        .then(|| {
            format!(
                "no BTF in the modules: CONFIG_DEBUG_INFO_BTF_MODULES=y but the Kbuild tree `{}` has no vmlinux to generate it against",
                self.path
            )
        })
    }

    /// Whether the base build made `<rel>.ko` (`None`: the tree does not say).
    pub fn built_module(&self, ko: &str) -> Option<bool> {
        let o = format!("{}.o", ko.strip_suffix(".ko").unwrap_or(ko));
        self.modules_order.as_ref().map(|order| order.contains(&o))
    }
}

/// The warning for a release outside [`TESTED`] (a warning, not a refusal).
fn untested_warning(release: &str) -> Option<String> {
    let version = major_minor(release)?;
    let (low, high) = (major_minor(TESTED.0)?, major_minor(TESTED.1)?);
    (version < low || version > high).then(|| {
        format!(
            "kernel {release} is outside the versions extmod is tested with ({} to {}); check its modules before shipping them",
            TESTED.0, TESTED.1
        )
    })
}

/// `UTS_RELEASE` of `include/generated/utsrelease.h`.
fn uts_release(text: &str) -> Option<String> {
    let rest = text.split("#define UTS_RELEASE \"").nth(1)?;
    Some(rest.split('"').next()?.to_string()).filter(|r| !r.is_empty())
}

/// The name the kernel knows a module by (`modprobe`, `lsmod`, modinfo `depends`): its file
/// name without `.ko`, `-` as `_` (`drivers/net/wireless/foo-bar.ko` → `foo_bar`).
pub fn module_name(path: &str) -> String {
    path.rsplit('/')
        .next()
        .unwrap_or(path)
        .trim_end_matches(".ko")
        .replace('-', "_")
}

/// The manifest of a tree made by `extmod kbuild-install`, checked against the tree: a manifest
/// that does not parse, or a `.config` whose hash differs from the recorded one (edited or
/// truncated after the tree was made), is an error rather than a silently different tree.
/// Trees without a manifest get `Ok(None)`; their `.config` (when present) must still agree with
/// auto.conf.
fn manifest_of(tree: &Utf8Path, auto_conf: &str) -> Result<Option<Manifest>, Error> {
    let path = tree.join(kbuild_install::manifest::MANIFEST);
    let dot_config = tree.join(".config");
    let manifest = if path.symlink_metadata().is_ok() {
        let m = Manifest::load(tree).map_err(|e| KError::BadManifest {
            path: path.clone(),
            why: match e {
                KError::Io { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })?;
        let actual = kbuild_install::manifest::sha256_file(&dot_config).map_err(|_| {
            KError::BadManifest {
                path: path.clone(),
                why: format!("`{dot_config}` is missing"),
            }
        })?;
        if actual != m.config_sha256 {
            return Err(KError::ConfigMismatch {
                path: dot_config,
                against: path,
                why: "its sha256 differs from the one recorded when the tree was made (edited or truncated)".into(),
            }
            .into());
        }
        Some(m)
    } else {
        None
    };
    if let Ok(text) = std::fs::read_to_string(&dot_config) {
        kbuild_install::tree::check_config_pair(&text, auto_conf).map_err(|why| {
            KError::ConfigMismatch {
                path: dot_config.clone(),
                against: tree.join("include/config/auto.conf"),
                why,
            }
        })?;
    }
    Ok(manifest)
}

/// The oldest and newest kernel series the test suite builds and loads modules for.
pub const TESTED: (&str, &str) = ("6.1", "7.3");

/// `(major, minor)` of a release (`6.12.118+deb12-amd64` → `(6, 12)`).
pub fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Kbuild's ARCH (= SRCARCH) for a configuration, from the architecture symbol every arch's
/// Kconfig defines (`CONFIG_ARM64=y` → `arm64`); the host's when none is recognised.
fn arch_of_config(auto_conf: &str) -> String {
    const ARCHES: &[(&str, &str)] = &[
        ("X86", "x86"),
        ("ARM64", "arm64"),
        ("ARM", "arm"),
        ("MIPS", "mips"),
        ("RISCV", "riscv"),
        ("PPC", "powerpc"),
        ("S390", "s390"),
        ("LOONGARCH", "loongarch"),
    ];
    ARCHES
        .iter()
        .find(|(sym, _)| config_value(auto_conf, sym) == Some("y"))
        .map(|(_, a)| a.to_string())
        .unwrap_or_else(|| match std::env::consts::ARCH {
            "x86_64" | "x86" => "x86".into(),
            "aarch64" => "arm64".into(),
            a => a.to_string(),
        })
}

/// Kbuild's SRCARCH for a GNU target triple's CPU (`aarch64-linux-gnu` → `arm64`); `None` for
/// CPUs not listed.
fn srcarch_of_triple(triple: &str) -> Option<&'static str> {
    let cpu = triple.split('-').next()?;
    Some(match cpu {
        "x86_64" | "i386" | "i486" | "i586" | "i686" => "x86",
        "aarch64" | "aarch64_be" => "arm64",
        c if c.starts_with("arm") => "arm",
        c if c.starts_with("mips") => "mips",
        c if c.starts_with("riscv") => "riscv",
        c if c.starts_with("powerpc") || c.starts_with("ppc") => "powerpc",
        "s390x" | "s390" => "s390",
        "loongarch64" => "loongarch",
        _ => return None,
    })
}

/// The directory a distribution wrapper Makefile delegates to (`-C <dir>` or `include <dir>/Makefile`).
fn wrapper_target(makefile: &str) -> Option<Utf8PathBuf> {
    for line in makefile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "-C")
            && let Some(dir) = words.get(i + 1)
            && dir.starts_with('/')
        {
            return Some(Utf8PathBuf::from(*dir));
        }
        if words.first() == Some(&"include")
            && let Some(p) = words.get(1).and_then(|p| p.strip_suffix("/Makefile"))
            && p.starts_with('/')
        {
            return Some(Utf8PathBuf::from(p));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_from_the_configuration() {
        assert_eq!(arch_of_config("CONFIG_64BIT=y\nCONFIG_X86=y\n"), "x86");
        assert_eq!(arch_of_config("CONFIG_ARM64=y\n"), "arm64");
        // CONFIG_ARM is not a prefix match of CONFIG_ARM64.
        assert_eq!(
            arch_of_config("CONFIG_ARM64=y\nCONFIG_ARM_AMBA=y\n"),
            "arm64"
        );
        assert_eq!(arch_of_config("CONFIG_ARM=y\n"), "arm");
        assert_eq!(arch_of_config("CONFIG_MIPS=y\n"), "mips");
    }

    #[test]
    fn uts_release_is_read_from_the_header() {
        assert_eq!(
            uts_release("#define UTS_RELEASE \"6.1.0-57-amd64\"\n").as_deref(),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(uts_release("/* nothing */"), None);
    }

    #[test]
    fn versions_outside_the_tested_range_are_named() {
        for inside in [
            "6.1.0-57-amd64",
            "6.12.118+deb12-amd64",
            "7.3.4+deb13-amd64",
            "6.6.0",
        ] {
            assert_eq!(untested_warning(inside), None, "{inside}");
        }
        let w = untested_warning("5.15.0-100-generic").unwrap();
        assert!(
            w.contains("5.15.0-100-generic") && w.contains("(6.1 to 7.3)"),
            "{w}"
        );
        assert!(untested_warning("7.4.0").is_some());
    }

    #[test]
    fn release_versions() {
        assert_eq!(major_minor("6.12.118+deb12-amd64"), Some((6, 12)));
        assert_eq!(major_minor("7.3.0-rc1"), Some((7, 3)));
        assert_eq!(major_minor("6.1"), Some((6, 1)));
        assert_eq!(major_minor("x"), None);
        assert!((6, 1) <= major_minor("6.1.192").unwrap());
        assert!(major_minor("6.13.1").unwrap() > (6, 12));
    }

    #[test]
    fn compiler_targets() {
        assert_eq!(srcarch_of_triple("x86_64-linux-gnu"), Some("x86"));
        assert_eq!(srcarch_of_triple("aarch64-linux-gnu"), Some("arm64"));
        assert_eq!(srcarch_of_triple("arm-linux-gnueabihf"), Some("arm"));
        assert_eq!(srcarch_of_triple("mipsel-openwrt-linux-musl"), Some("mips"));
        assert_eq!(srcarch_of_triple("weird"), None);
    }
}
