//! What keeps two runs apart: per-package locks in D (a second run on the same packages
//! waits, saying for whom, or fails at once with `--no-wait`), a shared lock on the Kbuild tree
//! (so `kbuild-install --force` does not replace it under a build), and the ownership check
//! before a package's directories are replaced.

use crate::error::Error;
use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::fsutil;
use kbuild_install::lock::{self, Lock, Wait};

/// Directory in D holding the per-package lock files.
pub const LOCKS: &str = ".extmod-locks";

/// Locks held for the whole run; released on drop or when the process dies.
#[derive(Debug)]
pub struct RunLocks(#[allow(dead_code)] Vec<Lock>);

/// What the ownership marker of a package's directories says.
pub fn owner(package: &str) -> String {
    format!("extmod build package {package}")
}

/// Take the locks of a run: the Kbuild tree (shared), then each package's in D and OUT
/// (exclusive, in name order so that two runs cannot deadlock). Then check that D/<pkg> and
/// OUT/<pkg> are extmod's to replace.
pub fn take(
    kbuild: &Utf8Path,
    objdir: &Utf8Path,
    dest: &Utf8Path,
    packages: &[String],
    no_wait: bool,
) -> Result<RunLocks, Error> {
    let wait = if no_wait { Wait::No } else { Wait::Yes };
    let mut held = Vec::new();
    if let Some(l) = lock::tree(kbuild, false, wait, &mut |holder| {
        eprintln!("{:>12} for Kbuild tree `{kbuild}`: {holder}", "Waiting")
    })? {
        held.push(l);
    }
    let mut names: Vec<&String> = packages.iter().collect();
    names.sort();
    names.dedup();
    // The locks live in D only: OUT stays exactly what `depmod -b` and installers read. OUT/<pkg>
    // is replaced whole, by one atomic exchange, so runs with different D on one OUT never see
    // a half-staged package.
    let locks = objdir.join(LOCKS);
    std::fs::create_dir_all(&locks).map_err(|e| kbuild_install::Error::DestNotWritable {
        path: objdir.to_owned(),
        source: e,
    })?;
    for name in names {
        let p = locks.join(format!("{name}.lock"));
        held.push(lock::exclusive(
            &p,
            &format!("extmod build of package {name}"),
            wait,
            &mut |holder| {
                eprintln!(
                    "{:>12} for package `{name}` in `{objdir}`: locked by {holder}",
                    "Waiting"
                )
            },
        )?);
        check_owned(&objdir.join(name), &owner(name), LEGACY_OBJDIR)?;
        check_owned(&dest.join(name), &owner(name), LEGACY_DEST)?;
    }
    Ok(RunLocks(held))
}

/// What package directories held before they carried a marker.
const LEGACY_OBJDIR: &[&str] = &[
    "tree",
    "layout",
    "state.json",
    "build.log",
    "Module.symvers",
    "base.Module.symvers",
];
const LEGACY_DEST: &[&str] = &["lib", "Module.symvers"];

/// `dir` may be replaced: absent, empty, marked for `what`, or holding only what extmod itself
/// puts there.
pub fn check_owned(dir: &Utf8Path, what: &str, legacy: &[&str]) -> Result<(), Error> {
    if fsutil::owned(dir, what) {
        return Ok(());
    }
    let only_ours = !dir.is_symlink()
        && dir.read_dir_utf8().is_ok_and(|rd| {
            rd.flatten()
                .all(|e| legacy.contains(&e.file_name()) || e.file_name() == fsutil::MARKER)
        });
    if only_ours && !dir.join(fsutil::MARKER).exists() {
        return Ok(());
    }
    Err(Error::NotOurs {
        path: dir.to_owned(),
        what: what.trim_start_matches("extmod ").to_string(),
    })
}

/// Mark a package directory as extmod's.
pub fn mark(dir: &Utf8Path, package: &str) -> Result<(), kbuild_install::Error> {
    fsutil::mark(dir, &owner(package))
}

/// Temporary staging directories (`.<pkg>.staging-<pid>-…`) left in OUT by a run that was
/// killed.
/// One pass over OUT for all packages (a no-op of 160 packages read it 320 times before).
pub fn clean_stale(dest: &Utf8Path, packages: &[String]) -> Vec<Utf8PathBuf> {
    let prefixes: Vec<String> = packages
        .iter()
        .flat_map(|name| ["staging", "old"].map(|what| format!(".{name}.{what}-")))
        .collect();
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    fsutil::clean_stale_any(dest, &prefixes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_directories_are_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(d.path()).unwrap();
        let p = root.join("kmod-x");
        std::fs::create_dir_all(p.join("lib")).unwrap();
        std::fs::write(p.join("Module.symvers"), "").unwrap();
        assert!(check_owned(&p, &owner("kmod-x"), LEGACY_DEST).is_ok());
        std::fs::write(p.join("thesis.tex"), "").unwrap();
        let e = check_owned(&p, &owner("kmod-x"), LEGACY_DEST).unwrap_err();
        assert_eq!(e.exit_code(), 15);
        assert!(e.to_string().contains("thesis") || e.to_string().contains("kmod-x"));
        mark(&p, "kmod-x").unwrap();
        assert!(check_owned(&p, &owner("kmod-x"), LEGACY_DEST).is_ok());
        assert!(check_owned(&p, &owner("kmod-y"), LEGACY_DEST).is_err());
    }
}
