//! Filesystem helpers: atomic replacement of directories.

use crate::error::{Error, Result};
use camino::{Utf8Path, Utf8PathBuf};
use std::fs;

/// Move the finished temporary directory `tmp` to `dest` (a child of `parent` named `name`),
/// replacing an existing `dest` only once the new one is complete.
pub fn replace_dir(
    tmp: tempfile::TempDir,
    dest: &Utf8Path,
    parent: &Utf8Path,
    name: &str,
) -> Result<()> {
    let old = if dest.symlink_metadata().is_ok() {
        let old = tempfile::Builder::new()
            .prefix(&format!(".{name}.old-"))
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
    let tmp_path = tmp.path().to_path_buf();
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
