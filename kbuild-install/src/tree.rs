//! Inspecting kernel trees: the source tree (S), a built object tree (O), and the files Kbuild
//! leaves there (`include/config/auto.conf.cmd`, `kernel.release`, `.config`).

use crate::error::{Error, Result};
use crate::paths::canonical;
use camino::{Utf8Path, Utf8PathBuf};
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::LazyLock;

pub(crate) fn read(path: &Utf8Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))
}

/// Check that `.config` and `include/config/auto.conf` agree: every line of auto.conf is
/// `CONFIG_X=value` and every such value is in `.config`. A truncated or edited `.config`, or a
/// damaged auto.conf, fails here instead of deep inside make.
pub fn check_config_pair(dot_config: &str, auto_conf: &str) -> std::result::Result<(), String> {
    let config: std::collections::HashMap<&str, &str> = dot_config
        .lines()
        .filter_map(|l| l.strip_prefix("CONFIG_")?.split_once('='))
        .collect();
    if config.is_empty() {
        return Err(".config sets no CONFIG_ symbol (empty or truncated)".into());
    }
    let mut symbols = 0;
    for (n, line) in auto_conf.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let Some((sym, value)) = t.strip_prefix("CONFIG_").and_then(|r| r.split_once('=')) else {
            return Err(format!(
                "auto.conf line {} is not `CONFIG_X=value`: `{}`",
                n + 1,
                t.chars().take(60).collect::<String>()
            ));
        };
        if sym.is_empty() || !sym.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("auto.conf line {} names no symbol", n + 1));
        }
        symbols += 1;
        match config.get(sym) {
            // auto.conf writes strings without quotes (since 5.x), .config with them.
            Some(v)
                if *v == value
                    || unquote(v) == value
                    || v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) == Some(value) => {}
            Some(v) => {
                return Err(format!(
                    "CONFIG_{sym} is {value} in auto.conf but {v} in .config"
                ));
            }
            None => {
                return Err(format!(
                    "CONFIG_{sym}={value} of auto.conf is missing from .config (truncated or edited)"
                ));
            }
        }
    }
    if symbols == 0 {
        return Err("auto.conf sets no CONFIG_ symbol (empty or truncated)".into());
    }
    Ok(())
}

/// A Kconfig string value without its quotes and escapes (`"a\\"b"` → `a"b`); other values
/// as they are.
pub fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::new();
            let mut esc = false;
            for c in inner.chars() {
                if esc || c != '\\' {
                    out.push(c);
                    esc = false;
                } else {
                    esc = true;
                }
            }
            out
        }
        None => v.to_string(),
    }
}

/// A kernel source tree.
#[derive(Debug, Clone)]
pub struct SourceTree {
    pub path: Utf8PathBuf,
    /// `VERSION.PATCHLEVEL.SUBLEVEL` plus `EXTRAVERSION`, as `make kernelversion` prints it.
    pub kernelversion: String,
}

impl SourceTree {
    pub fn open(path: &Utf8Path) -> Result<Self> {
        let not = |why: &str| Error::NotKernelSource {
            path: path.to_owned(),
            why: why.to_string(),
        };
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not("it does not exist"));
            }
            Err(e) => return Err(not(&format!("cannot read it: {e}"))),
            Ok(m) if !m.is_dir() => return Err(not("not a directory")),
            Ok(_) => {}
        }
        if let Err(e) = std::fs::read_dir(path) {
            return Err(not(&format!("cannot list it: {e}")));
        }
        let path = canonical(path)?;
        for f in ["Kconfig", "scripts/Makefile.build", "scripts/kconfig"] {
            if !path.join(f).exists() {
                return Err(not(&format!("no {f}")));
            }
        }
        let makefile = std::fs::read_to_string(path.join("Makefile"))
            .map_err(|_| not("no readable Makefile"))?;
        let kernelversion = kernelversion_of(&makefile)
            .ok_or_else(|| not("its Makefile sets no VERSION/PATCHLEVEL"))?;
        Ok(SourceTree {
            path,
            kernelversion,
        })
    }
}

/// `VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION]` from the top-level Makefile's text.
pub fn kernelversion_of(makefile: &str) -> Option<String> {
    static VAR: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?m)^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=[ \t]*(\S*)[ \t]*$")
            .unwrap()
    });
    let mut vars = BTreeMap::new();
    for c in VAR.captures_iter(makefile).take(8) {
        vars.entry(c[1].to_string())
            .or_insert_with(|| c[2].to_string());
    }
    let v = vars.get("VERSION").filter(|s| !s.is_empty())?;
    let p = vars.get("PATCHLEVEL").filter(|s| !s.is_empty())?;
    let s = vars.get("SUBLEVEL").map(String::as_str).unwrap_or("0");
    let s = if s.is_empty() { "0" } else { s };
    let e = vars.get("EXTRAVERSION").map(String::as_str).unwrap_or("");
    Some(format!("{v}.{p}.{s}{e}"))
}

/// A configured and built kernel object tree (`O=`; equal to the source tree for in-source builds).
#[derive(Debug, Clone)]
pub struct ObjTree {
    pub path: Utf8PathBuf,
    pub kernelrelease: String,
    pub conf_cmd: AutoConfCmd,
}

impl ObjTree {
    pub fn open(path: &Utf8Path) -> Result<Self> {
        if !path.is_dir() {
            return Err(Error::NotConfigured {
                path: path.to_owned(),
                missing: "the directory itself".into(),
            });
        }
        let path = canonical(path)?;
        for f in [
            ".config",
            "include/config/auto.conf",
            "include/config/auto.conf.cmd",
        ] {
            if !path.join(f).is_file() {
                return Err(Error::NotConfigured {
                    path: path.clone(),
                    missing: f.into(),
                });
            }
        }
        for f in [
            "include/config/kernel.release",
            "Module.symvers",
            "scripts/mod/modpost",
        ] {
            if !path.join(f).is_file() {
                return Err(Error::NotBuilt {
                    path: path.clone(),
                    missing: f.into(),
                });
            }
        }
        let kernelrelease = read(&path.join("include/config/kernel.release"))?
            .trim()
            .to_string();
        let conf_cmd = AutoConfCmd::parse(&read(&path.join("include/config/auto.conf.cmd"))?);
        check_config_pair(
            &read(&path.join(".config"))?,
            &read(&path.join("include/config/auto.conf"))?,
        )
        .map_err(|why| Error::ConfigMismatch {
            path: path.join(".config"),
            against: path.join("include/config/auto.conf"),
            why,
        })?;
        Ok(ObjTree {
            path,
            kernelrelease,
            conf_cmd,
        })
    }

    /// Check that this object tree was built from `src`: its release must start with the
    /// source's kernel version (LOCALVERSION and `+` may follow).
    pub fn check_matches(&self, src: &SourceTree) -> Result<()> {
        let rel = &self.kernelrelease;
        let v = &src.kernelversion;
        if release_matches(rel, v) {
            Ok(())
        } else {
            Err(Error::VersionMismatch {
                srctree: src.path.clone(),
                src_version: v.clone(),
                objtree: self.path.clone(),
                obj_release: rel.clone(),
            })
        }
    }

    pub fn srcarch(&self) -> &str {
        self.conf_cmd
            .env
            .get("SRCARCH")
            .map(String::as_str)
            .unwrap_or("x86")
    }
}

/// Whether a kernel release (`6.12.117-custom+`) was built from a kernel version (`6.12.117`):
/// LOCALVERSION and `+` may follow, another digit may not.
pub fn release_matches(release: &str, version: &str) -> bool {
    release == version
        || (release.starts_with(version)
            && !release[version.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// What `include/config/auto.conf.cmd` records: the Kconfig files parsed and the toolchain
/// environment Kconfig saw (`ifneq "$(CC)" "gcc"` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoConfCmd {
    pub kconfig_files: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl AutoConfCmd {
    pub fn parse(text: &str) -> Self {
        static IFNEQ: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r#"(?m)^ifneq "\$\(([A-Za-z0-9_]+)\)" "(.*)"$"#).unwrap());
        let mut kconfig_files = Vec::new();
        let mut in_deps = false;
        for line in text.lines() {
            if line.starts_with("deps_config :=") {
                in_deps = true;
                continue;
            }
            if in_deps {
                let t = line.trim().trim_end_matches('\\').trim();
                if !t.is_empty() {
                    kconfig_files.push(t.to_string());
                }
                if !line.trim_end().ends_with('\\') {
                    in_deps = false;
                }
            }
        }
        let env = IFNEQ
            .captures_iter(text)
            .map(|c| (c[1].to_string(), c[2].to_string()))
            .collect();
        AutoConfCmd { kconfig_files, env }
    }
}

/// The value of `CONFIG_<sym>` in a `.config`/`auto.conf` text (`None` when unset).
pub fn config_value<'a>(text: &'a str, sym: &str) -> Option<&'a str> {
    crate::config::value(text, sym)
}

/// The modules a `modules.order` lists, without their suffix: `drivers/net/dummy` from
/// `drivers/net/dummy.o` (6.2 and later) or `drivers/net/dummy.ko` (6.1 and earlier).
pub fn module_stems(order: &str) -> impl Iterator<Item = &str> {
    order.lines().filter_map(|l| {
        let l = l.trim();
        l.strip_suffix(".o").or_else(|| l.strip_suffix(".ko"))
    })
}

/// `CROSS_COMPILE` as the prefix of the recorded `CC` (`aarch64-linux-gnu-gcc` and the versioned
/// `aarch64-linux-gnu-gcc-12` → `aarch64-linux-gnu-`).
pub fn cross_compile_of(cc: &str) -> String {
    let (dir, base) = match cc.rsplit_once('/') {
        Some((d, b)) => (format!("{d}/"), b),
        None => (String::new(), cc),
    };
    // A version suffix (`gcc-12`) is not part of the prefix.
    let base = match base.rsplit_once('-') {
        Some((head, v)) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') => {
            head
        }
        _ => base,
    };
    for suffix in ["gcc", "cc"] {
        if let Some(prefix) = base.strip_suffix(suffix)
            && (prefix.is_empty() || prefix.ends_with('-'))
        {
            // A bare `gcc` found by path has no prefix; a triplet keeps its directory.
            return if prefix.is_empty() {
                String::new()
            } else {
                format!("{dir}{prefix}")
            };
        }
    }
    String::new()
}

/// `LLVM=` as Kbuild takes it, from the recorded `CC`: `clang` → `1`, `clang-16` → `-16`,
/// `/usr/lib/llvm-16/bin/clang` → `/usr/lib/llvm-16/bin/`; `None` for other compilers.
pub fn llvm_of(cc: &str) -> Option<String> {
    let (dir, base) = match cc.rsplit_once('/') {
        Some((d, b)) => (format!("{d}/"), b),
        None => (String::new(), cc),
    };
    let suffix = base.strip_prefix("clang")?;
    if !dir.is_empty() && suffix.is_empty() {
        return Some(dir);
    }
    if suffix.is_empty() {
        return Some("1".into());
    }
    suffix.starts_with('-').then(|| suffix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_pair_catches_truncation_and_garbage() {
        let cfg = "# c\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n";
        assert!(check_config_pair(cfg, "CONFIG_A=y\nCONFIG_B=m\n").is_ok());
        let e = check_config_pair("CONFIG_A=y\n", "CONFIG_A=y\nCONFIG_B=m\n").unwrap_err();
        assert!(e.contains("CONFIG_B=m"), "{e}");
        assert!(check_config_pair("", "CONFIG_A=y\n").is_err());
        assert!(check_config_pair(cfg, "CONFIG_A=y\n%garbage\n").is_err());
        assert!(check_config_pair(cfg, "CONFIG_A=m\n").is_err());
        assert!(check_config_pair(cfg, "").is_err());
        let strings = "CONFIG_A=y\nCONFIG_S=\"x y\"\nCONFIG_E=\"\"\n";
        assert!(check_config_pair(strings, "CONFIG_A=y\nCONFIG_S=x y\nCONFIG_E=\n").is_ok());
        assert_eq!(unquote("\"a\\\"b\""), "a\"b");
    }

    #[test]
    fn paths_with_shell_syntax_are_refused() {
        for bad in [
            "/tmp/k$(date)",
            "/a b",
            "/a:b",
            "/a%b",
            "/a`x`",
            "/a;b",
            "/a\nb",
        ] {
            assert!(crate::paths::check_path(bad.into()).is_err(), "{bad}");
        }
        assert!(crate::paths::check_path("/tmp/x-y_z.1/+,=@".into()).is_ok());
    }

    #[test]
    fn kernelversion_from_makefile() {
        let mk = "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = x\n";
        assert_eq!(kernelversion_of(mk).as_deref(), Some("6.12.117"));
        let rc = "VERSION = 6\nPATCHLEVEL = 13\nSUBLEVEL = 0\nEXTRAVERSION = -rc3\n";
        assert_eq!(kernelversion_of(rc).as_deref(), Some("6.13.0-rc3"));
        assert_eq!(kernelversion_of("all:\n\ttrue\n"), None);
    }

    #[test]
    fn auto_conf_cmd_lists_files_and_env() {
        let t = "deps_config := \\\n\tKconfig \\\n\tscripts/Kconfig.include \\\n\tinit/Kconfig\n\n\
                 include/config/auto.conf: $(deps_config)\n\n\
                 ifneq \"$(CC)\" \"gcc\"\n$(autoconfig): FORCE\nendif\n\n\
                 ifneq \"$(CC_VERSION_TEXT)\" \"gcc (Debian 12.2.0-14+deb12u1) 12.2.0\"\n$(autoconfig): FORCE\nendif\n";
        let p = AutoConfCmd::parse(t);
        assert_eq!(
            p.kconfig_files,
            ["Kconfig", "scripts/Kconfig.include", "init/Kconfig"]
        );
        assert_eq!(p.env["CC"], "gcc");
        assert_eq!(
            p.env["CC_VERSION_TEXT"],
            "gcc (Debian 12.2.0-14+deb12u1) 12.2.0"
        );
    }

    #[test]
    fn release_must_extend_version() {
        let src = SourceTree {
            path: "/s".into(),
            kernelversion: "6.1.1".into(),
        };
        let mut obj = ObjTree {
            path: "/o".into(),
            kernelrelease: "6.1.1-custom".into(),
            conf_cmd: AutoConfCmd::default(),
        };
        assert!(obj.check_matches(&src).is_ok());
        obj.kernelrelease = "6.1.12".into();
        assert!(matches!(
            obj.check_matches(&src),
            Err(Error::VersionMismatch { .. })
        ));
    }

    #[test]
    fn config_values_and_cross_prefix() {
        let c = "CONFIG_A=y\nCONFIG_AB=m\n# CONFIG_C is not set\nCONFIG_S=\"x\"\n";
        assert_eq!(config_value(c, "CONFIG_AB"), Some("m"));
        assert_eq!(config_value(c, "A"), Some("y"));
        assert_eq!(config_value(c, "C"), None);
        assert_eq!(config_value(c, "S"), Some("\"x\""));
        assert_eq!(cross_compile_of("gcc"), "");
        assert_eq!(
            cross_compile_of("aarch64-linux-gnu-gcc"),
            "aarch64-linux-gnu-"
        );
        assert_eq!(cross_compile_of("clang"), "");
        assert_eq!(
            cross_compile_of("aarch64-linux-gnu-gcc-12"),
            "aarch64-linux-gnu-"
        );
        assert_eq!(
            cross_compile_of("/opt/x/bin/arm-openwrt-linux-muslgnueabi-gcc"),
            "/opt/x/bin/arm-openwrt-linux-muslgnueabi-"
        );
        assert_eq!(cross_compile_of("gcc-12"), "");
        assert_eq!(cross_compile_of("/usr/bin/gcc"), "");
    }

    #[test]
    fn modules_order_of_either_generation() {
        let v: Vec<&str> = module_stems("mm/zsmalloc.o\nfs/nls/nls_base.ko\n\nodd\n").collect();
        assert_eq!(v, ["mm/zsmalloc", "fs/nls/nls_base"]);
    }

    #[test]
    fn llvm_as_kbuild_takes_it() {
        assert_eq!(llvm_of("clang").as_deref(), Some("1"));
        assert_eq!(llvm_of("clang-16").as_deref(), Some("-16"));
        assert_eq!(
            llvm_of("/usr/lib/llvm-16/bin/clang").as_deref(),
            Some("/usr/lib/llvm-16/bin/")
        );
        assert_eq!(llvm_of("gcc"), None);
        assert_eq!(llvm_of("aarch64-linux-gnu-gcc-12"), None);
    }
}
