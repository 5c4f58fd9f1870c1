//! Checks that keep extmod's writes inside D and OUT and its answers honest: the trees a build
//! must never write into, the integrity of a Kbuild tree, and the environment that reaches the
//! compile command lines.

use crate::error::Error;
use camino::{Utf8Path, Utf8PathBuf};

/// Trees a build must never write into, with their names for messages: S, K (each of its
/// layers) and the source and object trees K was made from.
pub fn protected(
    k: &crate::kbuild::KbuildTree,
    src: Option<&Utf8Path>,
) -> Vec<(Utf8PathBuf, &'static str)> {
    let mut out = vec![(k.path.clone(), "Kbuild")];
    if let Some(src) = src {
        out.push((src.to_owned(), "source"));
    }
    for l in k.layers.iter().skip(1) {
        out.push((l.clone(), "Kbuild"));
    }
    if let Some(m) = &k.manifest {
        for (p, which) in [
            (&m.made_from.objtree, "object"),
            (&m.made_from.srctree, "source"),
        ] {
            if let Ok(p) = kbuild_install::paths::canonical(p) {
                out.push((p, which));
            }
        }
    }
    out
}

/// `dir` (resolved) must be neither inside nor around any protected tree.
pub fn check_outside(dir: &Utf8Path, trees: &[(Utf8PathBuf, &'static str)]) -> Result<(), Error> {
    let trees: Vec<(&'static str, &Utf8Path)> =
        trees.iter().map(|(p, w)| (*w, p.as_path())).collect();
    Ok(kbuild_install::paths::check_outside(dir, &trees)?)
}

/// D and OUT are different directories, neither inside the other (cleaning one would remove
/// the other's files).
pub fn check_apart(objdir: &Utf8Path, dest: &Utf8Path) -> Result<(), Error> {
    if objdir.starts_with(dest) || dest.starts_with(objdir) {
        return Err(Error::Overlap {
            objdir: objdir.to_owned(),
            dest: dest.to_owned(),
        });
    }
    Ok(())
}

/// A dependency cycle among packages (dependencies on packages outside the set are left to the
/// caller: an OpenWrt table names kmods of other feeds).
pub fn check_cycles<'a>(
    packages: impl Iterator<Item = (&'a str, &'a [String])>,
) -> Result<(), Error> {
    let deps: std::collections::BTreeMap<&str, &[String]> = packages.collect();
    // 0: unvisited, 1: on the stack, 2: done.
    let mut state: std::collections::HashMap<&str, u8> = std::collections::HashMap::new();
    fn visit<'a>(
        n: &'a str,
        deps: &std::collections::BTreeMap<&'a str, &'a [String]>,
        state: &mut std::collections::HashMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Result<(), Error> {
        match state.get(n) {
            Some(2) => return Ok(()),
            Some(1) => {
                let from = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut cycle: Vec<&str> = stack[from..].to_vec();
                cycle.push(n);
                return Err(Error::Cycle(cycle.join(" -> ")));
            }
            _ => {}
        }
        state.insert(n, 1);
        stack.push(n);
        for d in deps.get(n).copied().unwrap_or_default() {
            if let Some((k, _)) = deps.get_key_value(d.as_str()) {
                visit(k, deps, state, stack)?;
            }
        }
        stack.pop();
        state.insert(n, 2);
        Ok(())
    }
    for n in deps.keys() {
        visit(n, &deps, &mut state, &mut Vec::new())?;
    }
    Ok(())
}

/// Whether an environment variable reaches Kbuild's command lines (compiler, assembler, linker
/// flags, the toolchain, build identity): part of a package's freshness key.
pub fn reaches_command_line(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CC",
        "LD",
        "AR",
        "NM",
        "OBJCOPY",
        "OBJDUMP",
        "READELF",
        "STRIP",
        "AS",
        "CPP",
        "HOSTCC",
        "HOSTCXX",
        "HOSTLD",
        "HOSTAR",
        "HOSTRUSTC",
        "RUSTC",
        "BINDGEN",
        "PAHOLE",
        "LLVM",
        "LLVM_IAS",
        "CROSS_COMPILE",
        "W",
        "C",
        "CHECK",
        "CHECKFLAGS",
        "INSTALL_MOD_STRIP",
        "SOURCE_DATE_EPOCH",
        "CPATH",
        "C_INCLUDE_PATH",
        "GCC_EXEC_PREFIX",
        "COMPILER_PATH",
        "LIBRARY_PATH",
        "CCACHE_DISABLE",
    ];
    EXACT.contains(&name)
        || name.starts_with("KBUILD_")
        || (name.starts_with('K') && name.ends_with("FLAGS"))
        || (name.starts_with("HOST") && name.ends_with("FLAGS"))
        || name.ends_with("FLAGS_MODULE")
        || name.ends_with("FLAGS_KERNEL")
}

/// The environment that reaches the compile command lines, sorted, for the freshness key.
pub fn command_line_env() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| reaches_command_line(k))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_toolchain_reach_the_command_line() {
        for n in [
            "KCFLAGS",
            "KCPPFLAGS",
            "KAFLAGS",
            "KRUSTFLAGS",
            "LLVM",
            "CROSS_COMPILE",
            "CC",
            "KBUILD_BUILD_TIMESTAMP",
            "CFLAGS_MODULE",
            "HOSTCFLAGS",
        ] {
            assert!(reaches_command_line(n), "{n}");
        }
        for n in ["HOME", "TERM", "PWD", "CI", "MAKEFLAGS"] {
            assert!(!reaches_command_line(n), "{n}");
        }
    }

    #[test]
    fn cycles_are_found_and_outside_dependencies_ignored() {
        let a = vec!["b".to_string()];
        let b = vec!["a".to_string(), "kmod-elsewhere".to_string()];
        let none: Vec<String> = vec![];
        let e = check_cycles([("a", a.as_slice()), ("b", b.as_slice())].into_iter()).unwrap_err();
        assert_eq!(e.exit_code(), 24);
        assert!(e.to_string().contains("a -> b -> a"), "{e}");
        assert!(check_cycles([("a", a.as_slice()), ("b", none.as_slice())].into_iter()).is_ok());
    }

    #[test]
    fn objdir_and_dest_must_be_apart() {
        assert!(check_apart("/x/d".into(), "/x/d".into()).is_err());
        assert!(check_apart("/x/d".into(), "/x/d/out".into()).is_err());
        assert!(check_apart("/x/d/o".into(), "/x/d".into()).is_err());
        assert!(check_apart("/x/d".into(), "/x/dd".into()).is_ok());
    }
}
