//! Filesystem helpers: atomic replacement of files and directories, ownership markers, and the
//! removal of temporary directories left by a run that was killed.

use crate::error::{Error, Result};
use camino::{Utf8Path, Utf8PathBuf};
use std::fs;

/// File that marks a directory as made by extmod (checked before it is replaced or removed).
pub const MARKER: &str = ".extmod-owner";

/// Write `data` to `path` through a temporary file beside it and a rename: readers see the old
/// content or the new, never a part.
pub fn write_atomic(path: &Utf8Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Utf8Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io("write", path, e))?;
    std::io::Write::write_all(&mut tmp, data).map_err(|e| Error::io("write", path, e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("write", path, e.error))?;
    Ok(())
}

/// Make `dest` once: `fill` writes it in a temporary directory beside it, which is renamed into
/// place. When `dest` exists, or another process put it there meanwhile, that one stays
/// (readers of a shared directory never see a part; concurrent makers agree on its content).
pub fn publish_dir(dest: &Utf8Path, fill: impl FnOnce(&Utf8Path) -> Result<()>) -> Result<()> {
    if dest.is_dir() {
        return Ok(());
    }
    let parent = dest.parent().unwrap_or(Utf8Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(parent)
        .map_err(|e| Error::io("create", parent, e))?;
    let tmp_path = Utf8Path::from_path(tmp.path()).expect("a UTF-8 parent has UTF-8 children");
    fill(tmp_path)?;
    if fs::rename(tmp_path, dest).is_ok() {
        let _ = tmp.keep();
    } else if !dest.is_dir() {
        return Err(Error::io(
            "rename",
            dest,
            std::io::Error::other("cannot move the finished directory into place"),
        ));
    }
    Ok(())
}

/// Move the finished temporary directory `tmp` to `dest` (a child of `parent` named `name`),
/// replacing an existing `dest` only once the new one is complete. Where the filesystem supports
/// `renameat2(RENAME_EXCHANGE)`, the two are swapped in one step, so `dest` is never absent;
/// otherwise the old one is moved aside first.
pub fn replace_dir(
    tmp: tempfile::TempDir,
    dest: &Utf8Path,
    parent: &Utf8Path,
    name: &str,
) -> Result<()> {
    let tmp_path = tmp.path().to_path_buf();
    if dest.symlink_metadata().is_ok() {
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp_path,
            rustix::fs::CWD,
            dest.as_std_path(),
            rustix::fs::RenameFlags::EXCHANGE,
        ) {
            Ok(()) => {
                // `tmp` now holds the old tree: its guard removes it.
                fs::remove_dir_all(&tmp_path).map_err(|e| Error::io("remove", dest, e))?;
                let _ = tmp.keep();
                return Ok(());
            }
            Err(e)
                if e == rustix::io::Errno::INVAL
                    || e == rustix::io::Errno::NOSYS
                    || e == rustix::io::Errno::OPNOTSUPP => {}
            Err(e) => return Err(Error::io("swap into place", dest, e.into())),
        }
    }
    let old = if dest.symlink_metadata().is_ok() {
        let old = tempfile::Builder::new()
            .prefix(&temp_prefix(name, "old"))
            .tempdir_in(parent)
            .map_err(|e| Error::io("create", parent, e))?
            .keep();
        let old = Utf8PathBuf::from_path_buf(old).expect("UTF-8 parent");
        fs::remove_dir(&old).map_err(|e| Error::io("remove", &old, e))?;
        fs::rename(dest, &old).map_err(|e| Error::io("move aside", dest, e))?;
        Some(old)
    } else {
        None
    };
    if let Err(e) = fs::rename(&tmp_path, dest) {
        if let Some(old) = &old {
            let _ = fs::rename(old, dest);
        }
        return Err(Error::io("rename into place", dest, e));
    }
    // The temporary directory is now DEST: make sure its guard does not remove it.
    let _ = tmp.keep();
    if let Some(old) = old {
        fs::remove_dir_all(&old).map_err(|e| Error::io("remove", &old, e))?;
    }
    Ok(())
}

/// `.<name>.<what>-<pid>-`: the prefix of a temporary sibling, naming the process that owns it
/// so that a later run can remove it once that process is gone.
pub fn temp_prefix(name: &str, what: &str) -> String {
    format!(".{name}.{what}-{}-", std::process::id())
}

/// Whether process `pid` exists.
pub fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Remove entries of `dir` named `<prefix><pid>-...` whose process is gone (temporary
/// directories of a run that was killed). Returns what was removed.
pub fn clean_stale(dir: &Utf8Path, prefix: &str) -> Vec<Utf8PathBuf> {
    clean_stale_any(dir, &[prefix])
}

/// [`clean_stale`] for several prefixes, reading `dir` once.
pub fn clean_stale_any(dir: &Utf8Path, prefixes: &[&str]) -> Vec<Utf8PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = dir.read_dir_utf8() else {
        return removed;
    };
    for e in rd.flatten() {
        let Some(rest) = prefixes.iter().find_map(|p| e.file_name().strip_prefix(p)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let p = e.path().to_owned();
        let ok = if e.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&p).is_ok()
        } else {
            fs::remove_file(&p).is_ok()
        };
        if ok {
            removed.push(p);
        }
    }
    removed
}

/// Mark `dir` as made by extmod for `what` (e.g. `build package kmod-foo`).
pub fn mark(dir: &Utf8Path, what: &str) -> Result<()> {
    let p = dir.join(MARKER);
    fs::write(&p, format!("{what}\n")).map_err(|e| Error::io("write", &p, e))
}

/// Whether extmod may replace or remove `dir`: it does not exist, is empty, or carries the
/// marker written by [`mark`] for `what`.
pub fn owned(dir: &Utf8Path, what: &str) -> bool {
    if dir.symlink_metadata().is_err() {
        return true;
    }
    if !dir.is_dir() || dir.is_symlink() {
        return false;
    }
    if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        return true;
    }
    fs::read_to_string(dir.join(MARKER)).is_ok_and(|t| t.trim_end() == what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> (tempfile::TempDir, Utf8PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = Utf8PathBuf::from_path_buf(d.path().to_path_buf()).unwrap();
        (d, p)
    }

    #[test]
    fn replace_swaps_a_tree_in_and_removes_the_old_one() {
        let (_d, root) = tmp();
        let dest = root.join("t");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("old"), "1").unwrap();
        let new = tempfile::Builder::new().tempdir_in(&root).unwrap();
        fs::write(new.path().join("new"), "2").unwrap();
        replace_dir(new, &dest, &root, "t").unwrap();
        assert!(dest.join("new").is_file());
        assert!(!dest.join("old").exists());
        // Only the tree itself is left in the parent.
        assert_eq!(fs::read_dir(&root).unwrap().count(), 1);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let (_d, root) = tmp();
        // A process that has exited: its pid is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = root.join(format!(".k.kbuild-install-{dead}-abc"));
        let live = root.join(format!(".k.kbuild-install-{}-abc", std::process::id()));
        fs::create_dir_all(stale.join("x")).unwrap();
        fs::create_dir_all(&live).unwrap();
        let removed = clean_stale(&root, ".k.kbuild-install-");
        assert_eq!(removed, std::slice::from_ref(&stale));
        assert!(!stale.exists() && live.exists());
    }

    #[test]
    fn only_marked_or_empty_directories_are_ours() {
        let (_d, root) = tmp();
        let dir = root.join("p");
        assert!(owned(&dir, "x"));
        fs::create_dir(&dir).unwrap();
        assert!(owned(&dir, "x"));
        fs::write(dir.join("precious"), "").unwrap();
        assert!(!owned(&dir, "x"));
        mark(&dir, "x").unwrap();
        assert!(owned(&dir, "x"));
        assert!(!owned(&dir, "y"));
    }
}
