//! Paths extmod and kbuild-install take: made absolute, symlinks resolved (also for paths that
//! do not exist yet), checked for what Kbuild and the shell cannot take, and kept apart from
//! the trees that must never be written.

use crate::error::{Error, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// `p` made absolute against the current directory (symlinks kept).
pub fn absolute(p: &Utf8Path) -> Result<Utf8PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io("read current directory", ".", e))?;
    let cwd = Utf8PathBuf::from_path_buf(cwd).map_err(|_| {
        Error::io(
            "use",
            ".",
            std::io::Error::other("current directory is not UTF-8"),
        )
    })?;
    Ok(cwd.join(p))
}

/// Make a path absolute and resolve symlinks, keeping it UTF-8.
pub fn canonical(path: &Utf8Path) -> Result<Utf8PathBuf> {
    let p = std::fs::canonicalize(path).map_err(|e| Error::io("resolve", path, e))?;
    Utf8PathBuf::from_path_buf(p).map_err(|p| {
        Error::io(
            "use non-UTF-8 path",
            Utf8PathBuf::from(p.to_string_lossy().into_owned()),
            std::io::Error::other("paths must be UTF-8"),
        )
    })
}

/// An absolute path with symlinks resolved, for a path that may not exist yet: its nearest
/// existing ancestor is canonicalized and the rest appended.
pub fn resolve(path: &Utf8Path) -> Result<Utf8PathBuf> {
    let path = absolute(path)?;
    let mut existing = path.clone();
    let mut rest = Vec::new();
    while existing.symlink_metadata().is_err() {
        match (existing.file_name(), existing.parent()) {
            (Some(n), Some(p)) => {
                rest.push(n.to_string());
                existing = p.to_owned();
            }
            _ => break,
        }
    }
    let mut resolved = canonical(&existing)?;
    for n in rest.iter().rev() {
        resolved.push(n);
    }
    Ok(resolved)
}

/// Reject paths that Kbuild or the shell cannot take safely: make splits variables on
/// whitespace, treats `:` and `%` as rule syntax and `#` as a comment, and Kbuild's recipes pass
/// paths to the shell, where `$`, quotes and backslashes would be interpreted.
pub fn check_path(path: &Utf8Path) -> Result<()> {
    let s = path.as_str();
    let what = if s.contains(char::is_whitespace) {
        "whitespace"
    } else if s.contains(':') {
        "`:`"
    } else if s.contains('%') {
        "`%`"
    } else if s.contains([
        '#', '$', '\'', '"', '\\', '`', ';', '&', '|', '<', '>', '(', ')', '*', '?', '[', ']', '{',
        '}', '~', '!', '^',
    ]) {
        "shell or make metacharacters"
    } else if s.chars().any(char::is_control) {
        "control characters"
    } else {
        return Ok(());
    };
    Err(Error::BadPath {
        path: path.to_owned(),
        what: what.into(),
    })
}

/// `dir` (resolved) must be neither inside nor around any of `trees` (`(what, path)`: "source",
/// "object", ...), whose contents must never be written.
pub fn check_outside(dir: &Utf8Path, trees: &[(&'static str, &Utf8Path)]) -> Result<()> {
    for (which, tree) in trees {
        if dir.starts_with(tree) {
            return Err(Error::DestInsideTree {
                dest: dir.to_owned(),
                which,
                tree: tree.to_path_buf(),
            });
        }
        if tree.starts_with(dir) {
            return Err(Error::TreeInsideDest {
                dest: dir.to_owned(),
                which,
                tree: tree.to_path_buf(),
            });
        }
    }
    Ok(())
}
