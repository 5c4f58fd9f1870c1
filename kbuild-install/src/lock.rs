//! Advisory locks (`flock`) that keep two runs from working on the same directory at once. The
//! lock file records who holds it, so a waiting run can say for whom it waits.

use crate::error::{Error, Result};
use camino::{Utf8Path, Utf8PathBuf};
use fs4::fs_std::FileExt;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::time::Duration;

/// A held lock; released when dropped (or when the process dies, whatever kills it).
#[derive(Debug)]
pub struct Lock {
    file: File,
    pub path: Utf8PathBuf,
    /// An exclusive holder wrote its name into the file, and clears it when done.
    wrote: bool,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.wrote {
            let _ = self.file.set_len(0);
        }
        let _ = FileExt::unlock(&self.file);
    }
}

/// How to behave when another run holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Wait for it (polling, so that Ctrl-C still stops the wait).
    Yes,
    /// Fail at once with [`Error::Locked`].
    No,
}

fn holder_of(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "another process (a build reading it, or a run that has not yet said who it is)".into()
    } else {
        text.to_string()
    }
}

/// Take the exclusive lock at `path` (created if needed), recording `who` in it. `on_wait` is
/// called once, with the holder's description, when the lock is busy and `wait` is `Yes`.
pub fn exclusive(
    path: &Utf8Path,
    who: &str,
    wait: Wait,
    on_wait: &mut dyn FnMut(&str),
) -> Result<Lock> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("open lock", path, e))?;
    let mut told = false;
    loop {
        match FileExt::try_lock_exclusive(&file) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(Error::io("lock", path, e)),
        }
        let holder = holder_of(&mut file);
        if wait == Wait::No {
            return Err(Error::Locked {
                path: path.to_owned(),
                holder,
            });
        }
        if !told {
            on_wait(&holder);
            told = true;
        }
        crate::process::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{who} (pid {})", std::process::id());
    Ok(Lock {
        file,
        path: path.to_owned(),
        wrote: true,
    })
}

/// Lock a tree directory itself (no lock file beside it): `exclusive` while kbuild-install
/// replaces it, shared while a build uses it. A shared holder checks, once locked, that the path
/// still names the directory it locked (it may have been swapped meanwhile) and locks again if
/// not. `Ok(None)` when the directory does not exist.
pub fn tree(
    dir: &Utf8Path,
    exclusive: bool,
    wait: Wait,
    on_wait: &mut dyn FnMut(&str),
) -> Result<Option<Lock>> {
    use std::os::unix::fs::MetadataExt;
    let mut told = false;
    loop {
        let Ok(file) = File::open(dir) else {
            return Ok(None);
        };
        let locked = if exclusive {
            FileExt::try_lock_exclusive(&file)
        } else {
            FileExt::try_lock_shared(&file)
        };
        match locked {
            Ok(true) => {
                let same = match (file.metadata(), std::fs::metadata(dir)) {
                    (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                    _ => false,
                };
                if same {
                    return Ok(Some(Lock {
                        file,
                        path: dir.to_owned(),
                        wrote: false,
                    }));
                }
                continue;
            }
            Ok(false) => {}
            Err(e) => return Err(Error::io("lock", dir, e)),
        }
        let holder = if exclusive {
            "a build using it"
        } else {
            "kbuild-install replacing it"
        };
        if wait == Wait::No {
            return Err(Error::Locked {
                path: dir.to_owned(),
                holder: holder.into(),
            });
        }
        if !told {
            on_wait(holder);
            told = true;
        }
        crate::process::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_in_use_cannot_be_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = Utf8PathBuf::from_path_buf(d.path().join("k")).unwrap();
        assert!(tree(&p, false, Wait::No, &mut |_| {}).unwrap().is_none());
        std::fs::create_dir(&p).unwrap();
        let reader = tree(&p, false, Wait::No, &mut |_| {}).unwrap().unwrap();
        let err = tree(&p, true, Wait::No, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("a build using it"), "{err}");
        drop(reader);
        let writer = tree(&p, true, Wait::No, &mut |_| {}).unwrap().unwrap();
        assert!(tree(&p, false, Wait::No, &mut |_| {}).is_err());
        drop(writer);
    }

    #[test]
    fn second_exclusive_lock_fails_fast_naming_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = Utf8PathBuf::from_path_buf(d.path().join("l")).unwrap();
        let _a = exclusive(&p, "run A", Wait::Yes, &mut |_| {}).unwrap();
        // flock locks belong to the open file description: a second open conflicts.
        let err = exclusive(&p, "run B", Wait::No, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("run A"), "{err}");
        assert_eq!(err.exit_code(), crate::exit::LOCKED);
        drop(_a);
        assert!(exclusive(&p, "run B", Wait::No, &mut |_| {}).is_ok());
    }
}
