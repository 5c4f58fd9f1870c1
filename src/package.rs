//! Packages: a name, the CONFIG symbols that build its modules (`kconfig`), optionally the
//! expected `.ko` files (`files`), and the packages it needs (`depends`) — the vocabulary of
//! OpenWrt's KernelPackage.

use crate::error::Error;
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One `kconfig` entry: `CONFIG_X` (enable) or `CONFIG_X=<value>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct KconfigReq {
    /// The symbol without the `CONFIG_` prefix.
    pub symbol: String,
    /// `None`: enable as the package needs it (a module); `Some("n")`: must not be enabled.
    pub value: Option<String>,
}

impl KconfigReq {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (sym, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v.trim().to_string())),
            None => (s, None),
        };
        let symbol = sym
            .trim()
            .strip_prefix("CONFIG_")
            .unwrap_or(sym.trim())
            .to_string();
        if symbol.is_empty()
            || !symbol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!("`{s}` is not a CONFIG symbol"));
        }
        Ok(KconfigReq { symbol, value })
    }
}

impl std::fmt::Display for KconfigReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CONFIG_{}", self.symbol)?;
        if let Some(v) = &self.value {
            write!(f, "={v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    pub name: String,
    pub kconfig: Vec<KconfigReq>,
    /// Expected modules, relative to the tree (`drivers/net/dummy.ko`); empty: derive them.
    pub files: Vec<String>,
    pub depends: Vec<String>,
    /// OpenWrt's Kconfig merge: `kconfig` symbols this kernel does not have are left out with
    /// a note instead of refusing the package (OpenWrt lists symbols of every arch and kernel
    /// version in one definition).
    pub ignore_unknown: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    #[serde(default)]
    package: Vec<PackageRepr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageRepr {
    name: String,
    #[serde(default)]
    kconfig: Vec<String>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    depends: Vec<String>,
    #[serde(default)]
    ignore_unknown: bool,
}

/// Packages from a TOML file:
///
/// ```toml
/// [[package]]
/// name = "kmod-zram"
/// kconfig = ["CONFIG_ZRAM"]
/// files = ["drivers/block/zram/zram.ko"]   # optional
/// depends = ["kmod-lib-lzo"]               # optional
/// ignore_unknown = true                    # optional: leave out symbols this kernel lacks
/// ```
///
/// A package may have no `kconfig` when it lists its `files` (OpenWrt's packages of modules that
/// other options already enable, such as kmod-pppox).
pub fn load(path: &Utf8Path) -> Result<Vec<Package>, Error> {
    let bad = |why: String| Error::PackageFile {
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    parse(&text).map_err(bad)
}

pub fn parse(text: &str) -> Result<Vec<Package>, String> {
    let file: FileRepr = toml::from_str(text).map_err(|e| e.message().to_string())?;
    let mut out = Vec::new();
    for p in file.package {
        if p.name.is_empty()
            || p.name.len() > 128
            || p.name.starts_with('.')
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
        {
            return Err(format!(
                "package name `{}` may only hold letters, digits and - _ . + (not starting with ., at most 128 characters)",
                p.name
            ));
        }
        if p.kconfig.is_empty() && p.files.is_empty() {
            return Err(format!(
                "package `{}` has neither kconfig symbols nor files",
                p.name
            ));
        }
        let kconfig = p
            .kconfig
            .iter()
            .map(|k| KconfigReq::parse(k).map_err(|e| format!("package `{}`: {e}", p.name)))
            .collect::<Result<_, _>>()?;
        for f in &p.files {
            if !f.ends_with(".ko") || f.starts_with('/') || f.contains("..") {
                return Err(format!(
                    "package `{}`: file `{f}` must be a .ko path relative to the kernel tree",
                    p.name
                ));
            }
        }
        out.push(Package {
            name: p.name,
            kconfig,
            files: p.files,
            depends: p.depends,
            ignore_unknown: p.ignore_unknown,
        });
    }
    Ok(out)
}

/// An ad-hoc package for one positional `CONFIG_X` argument.
pub fn from_symbol(arg: &str) -> Result<Package, Error> {
    let req = KconfigReq::parse(arg).map_err(|why| Error::PackageFile {
        path: Utf8PathBuf::from("<command line>"),
        why,
    })?;
    Ok(Package {
        name: format!("CONFIG_{}", req.symbol),
        kconfig: vec![req],
        files: Vec::new(),
        depends: Vec::new(),
        ignore_unknown: false,
    })
}

/// Check names and dependencies; return the packages in dependency order (providers first).
pub fn order(packages: Vec<Package>) -> Result<Vec<Package>, Error> {
    let mut by_name = BTreeMap::new();
    for p in packages {
        if by_name.contains_key(&p.name) {
            return Err(Error::PackageFile {
                path: "<packages>".into(),
                why: format!("package `{}` is defined twice", p.name),
            });
        }
        by_name.insert(p.name.clone(), p);
    }
    for p in by_name.values() {
        for d in &p.depends {
            if !by_name.contains_key(d) {
                return Err(Error::UnknownDependency {
                    package: p.name.clone(),
                    dep: d.clone(),
                });
            }
        }
    }
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    fn visit(
        name: &str,
        by_name: &BTreeMap<String, Package>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<Package>,
    ) -> Result<(), Error> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(i) = stack.iter().position(|s| s == name) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(name.to_string());
            return Err(Error::Cycle(cycle.join(" -> ")));
        }
        stack.push(name.to_string());
        for d in &by_name[name].depends {
            visit(d, by_name, stack, done, out)?;
        }
        stack.pop();
        done.insert(name.to_string());
        out.push(by_name[name].clone());
        Ok(())
    }
    for name in by_name.keys() {
        visit(name, &by_name, &mut Vec::new(), &mut done, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openwrt_style_packages() {
        let ps = parse(
            r#"
            [[package]]
            name = "kmod-zram"
            kconfig = ["CONFIG_ZRAM", "CONFIG_ZRAM_WRITEBACK=y", "ZRAM_MEMORY_TRACKING=n"]
            depends = ["kmod-lib-lzo"]
            [[package]]
            name = "kmod-lib-lzo"
            kconfig = ["CONFIG_LZO_COMPRESS"]
            files = ["lib/lzo/lzo_compress.ko"]
            "#,
        )
        .unwrap();
        assert_eq!(ps[0].kconfig[1].to_string(), "CONFIG_ZRAM_WRITEBACK=y");
        assert_eq!(ps[0].kconfig[2].symbol, "ZRAM_MEMORY_TRACKING");
        let ordered = order(ps).unwrap();
        assert_eq!(ordered[0].name, "kmod-lib-lzo");
    }

    #[test]
    fn rejects_bad_definitions() {
        for name in ["..", ".", ".variants"] {
            let text = format!("[[package]]\nname = \"{name}\"\nkconfig = [\"X\"]\n");
            assert!(parse(&text).is_err(), "{name}");
        }
        assert!(
            parse("[[package]]\nname = \"a b\"\nkconfig = [\"X\"]\n")
                .unwrap_err()
                .contains("may only")
        );
        assert!(
            parse("[[package]]\nname = \"a\"\n")
                .unwrap_err()
                .contains("neither kconfig symbols nor files")
        );
        // Files only, and symbols this kernel may lack.
        let ps = parse(
            "[[package]]\nname = \"kmod-pppox\"\nfiles = [\"drivers/net/ppp/pppox.ko\"]\nignore_unknown = true\n",
        )
        .unwrap();
        assert!(ps[0].kconfig.is_empty() && ps[0].ignore_unknown);
        assert!(parse("[[package]]\nname = \"a\"\nkconfig=[\"X\"]\nfiles=[\"/x.ko\"]\n").is_err());
        assert!(parse("[[package]]\nname = \"a\"\nkconfig=[\"X\"]\nfoo=1\n").is_err());
    }

    #[test]
    fn cycles_and_unknown_dependencies_are_named() {
        let p = |n: &str, d: &[&str]| Package {
            name: n.into(),
            kconfig: vec![KconfigReq::parse("X").unwrap()],
            files: vec![],
            depends: d.iter().map(|s| s.to_string()).collect(),
            ignore_unknown: false,
        };
        let e = order(vec![p("a", &["b"]), p("b", &["a"])]).unwrap_err();
        assert_eq!(e.to_string(), "package dependency cycle: a -> b -> a");
        let e = order(vec![p("a", &["zz"])]).unwrap_err();
        assert!(e.to_string().contains("unknown package `zz`"));
    }
}
