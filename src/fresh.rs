//! Exact freshness: what a package's last build read (from Kbuild's `.cmd` files), each file
//! with its size, mtime, inode and content hash; and, when extmod decides an input changed,
//! the removal of the outputs that depend on it, so that make rebuilds them even when the new
//! file is older than the object (a file restored by `tar`, `rsync -t` or `cp -p`).

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;

/// One file a build read, by real path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    pub path: String,
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime: i64,
    pub ino: u64,
    /// sha256 of the content.
    pub sha256: String,
}

impl Input {
    /// The input as a state file keeps it: `"<sha256> <size> <mtime> <ino> <path>"`. A no-op
    /// of 160 packages reads 125,000 of them; as JSON objects, parsing them took most of its
    /// time.
    pub fn compact(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.sha256, self.size, self.mtime, self.ino, self.path
        )
    }
}

/// A [`Input::compact`] record: (sha256, stat, path), borrowed.
fn parse_compact(l: &str) -> Option<(&str, Stat, &str)> {
    let mut w = l.splitn(5, ' ');
    let sha256 = w.next()?;
    let size = w.next()?.parse().ok()?;
    let mtime = w.next()?.parse().ok()?;
    let ino = w.next()?.parse().ok()?;
    Some((sha256, (size, mtime, ino), w.next()?))
}

/// Size, mtime and inode of a file.
pub type Stat = (u64, i64, u64);

pub fn stat(path: &Utf8Path) -> Option<Stat> {
    let m = std::fs::metadata(path).ok()?;
    let t = m
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec());
    Some((m.len(), t, m.ino()))
}

/// A program found on PATH as answers about it are kept by: its path, size, mtime and inode
/// (`None` when it is not found). Another binary at the same name is another key.
pub fn tool_identity(name: &str) -> Option<String> {
    let p = which::which(name).ok()?;
    let p = p.to_str()?;
    let (size, mtime, ino) = stat(Utf8Path::new(p))?;
    Some(format!("{p}\0{size}\0{mtime}\0{ino}"))
}

pub fn sha256(path: &Utf8Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).ok()?;
    Some(format!("{:x}", h.finalize()))
}

/// Record `paths` (real paths) with their stat and content hash; files that vanished are left
/// out.
pub fn record(paths: impl IntoIterator<Item = Utf8PathBuf>) -> Vec<Input> {
    paths
        .into_iter()
        .filter_map(|p| {
            let (size, mtime, ino) = stat(&p)?;
            let sha256 = sha256(&p)?;
            Some(Input {
                path: p.into_string(),
                size,
                mtime,
                ino,
                sha256,
            })
        })
        .collect()
}

/// Stats and hashes shared by all packages of one run (headers are read by many).
#[derive(Default)]
pub struct Cache {
    stats: HashMap<String, Option<Stat>>,
    hashes: HashMap<String, Option<String>>,
}

impl Cache {
    fn stat(&mut self, p: &str) -> Option<Stat> {
        if let Some(s) = self.stats.get(p) {
            return *s;
        }
        let s = stat(Utf8Path::new(p));
        self.stats.insert(p.to_string(), s);
        s
    }
    fn hash(&mut self, p: &str) -> Option<String> {
        if let Some(h) = self.hashes.get(p) {
            return h.clone();
        }
        let h = sha256(Utf8Path::new(p));
        self.hashes.insert(p.to_string(), h.clone());
        h
    }
}

/// The inputs (records of [`Input::compact`]) whose content differs from the record, or that
/// are gone. A file whose size, mtime or inode differ is hashed: a mere `touch` is not a
/// change, a replacement with an older mtime is. A record that does not parse counts as
/// changed.
pub fn changed(inputs: &[String], cache: &mut Cache) -> Vec<String> {
    inputs
        .iter()
        .filter_map(|l| {
            let Some((sha, st, path)) = parse_compact(l) else {
                return Some(l.clone());
            };
            let same = match cache.stat(path) {
                None => false,
                Some(s) if s == st => true,
                Some(_) => cache.hash(path).as_deref() == Some(sha),
            };
            (!same).then(|| path.to_string())
        })
        .collect()
}

/// The files a `.cmd` file names: the `source_` file and the `deps_` list, as written (relative
/// to the tree or absolute).
pub fn cmd_deps(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some((lhs, rhs)) = line.split_once(":=")
            && lhs.trim_start().starts_with("source_")
        {
            out.push(rhs.trim().to_string());
            continue;
        }
        let t = line.trim().trim_end_matches('\\').trim();
        if t.is_empty()
            || t.contains(":=")
            || t.starts_with("$(")
            || t.contains(' ')
            || t.starts_with('#')
            || t.contains(':')
        {
            continue;
        }
        out.push(t.to_string());
    }
    out
}

/// Remove, in the package's directories of the overlay `tree`, every output whose `.cmd` file
/// names one of the `changed` files (real paths), together with that `.cmd` file: make then
/// rebuilds it whatever the mtimes say. Returns the outputs removed (relative to the tree).
pub fn remove_stale(tree: &Utf8Path, dirs: &BTreeSet<String>, changed: &[String]) -> Vec<String> {
    let mut removed = Vec::new();
    if changed.is_empty() {
        return removed;
    }
    let changed: BTreeSet<&str> = changed.iter().map(String::as_str).collect();
    let mut real: HashMap<String, Option<Utf8PathBuf>> = HashMap::new();
    for dir in dirs {
        let Ok(rd) = tree.join(dir).read_dir_utf8() else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name();
            let Some(target) = n
                .strip_prefix('.')
                .and_then(|t| t.strip_suffix(".cmd"))
                .filter(|t| !t.is_empty())
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let hit = cmd_deps(&text).into_iter().any(|d| {
                let full = if d.starts_with('/') {
                    Utf8PathBuf::from(&d)
                } else {
                    tree.join(&d)
                };
                real.entry(full.to_string())
                    .or_insert_with(|| kbuild_install::paths::canonical(&full).ok())
                    .as_ref()
                    .is_some_and(|r| changed.contains(r.as_str()))
            });
            if hit {
                let out = tree.join(dir).join(target);
                let _ = std::fs::remove_file(&out);
                let _ = std::fs::remove_file(e.path());
                removed.push(format!("{dir}/{target}"));
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_round_trip_through_their_compact_form() {
        let i = Input {
            path: "/src/a dir/x.h".into(),
            size: 12,
            mtime: -5,
            ino: 77,
            sha256: "ab".repeat(32),
        };
        let l = i.compact();
        assert_eq!(l, format!("{} 12 -5 77 /src/a dir/x.h", "ab".repeat(32)));
        assert_eq!(
            parse_compact(&l),
            Some((i.sha256.as_str(), (12, -5, 77), "/src/a dir/x.h"))
        );
        assert_eq!(parse_compact("ab 12 x 77 /p"), None);
        assert_eq!(
            changed(&["ab 12 x 77 /p".to_string()], &mut Cache::default()),
            ["ab 12 x 77 /p"]
        );
    }

    fn tmp() -> (tempfile::TempDir, Utf8PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = kbuild_install::paths::canonical(Utf8Path::from_path(d.path()).unwrap()).unwrap();
        (d, p)
    }

    #[test]
    fn older_replacement_is_a_change_and_touch_is_not() {
        let (_d, root) = tmp();
        let f = root.join("a.c");
        std::fs::write(&f, "int a;\n").unwrap();
        let rec: Vec<String> = record([f.clone()]).iter().map(Input::compact).collect();
        let mut c = Cache::default();
        assert!(changed(&rec, &mut c).is_empty());
        // Same content, new mtime: not a change.
        let t = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert!(changed(&rec, &mut Cache::default()).is_empty());
        // Same size, older mtime, new inode (tar, rsync -t): a change.
        let new = root.join("a.c.new");
        std::fs::write(&new, "int b;\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&new)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
            .unwrap();
        std::fs::rename(&new, &f).unwrap();
        assert_eq!(changed(&rec, &mut Cache::default()), [f.to_string()]);
        std::fs::remove_file(&f).unwrap();
        assert_eq!(changed(&rec, &mut Cache::default()), [f.to_string()]);
    }

    #[test]
    fn outputs_depending_on_a_changed_file_are_removed() {
        let (_d, root) = tmp();
        std::fs::create_dir_all(root.join("drv")).unwrap();
        std::fs::create_dir_all(root.join("include")).unwrap();
        std::fs::write(root.join("include/h.h"), "").unwrap();
        std::fs::write(root.join("drv/a.c"), "").unwrap();
        std::fs::write(root.join("drv/b.c"), "").unwrap();
        for (o, deps) in [("a", "include/h.h"), ("b", "drv/b.c")] {
            std::fs::write(root.join(format!("drv/{o}.o")), "").unwrap();
            std::fs::write(
                root.join(format!("drv/.{o}.o.cmd")),
                format!(
                    "savedcmd_drv/{o}.o := gcc -c drv/{o}.c\n\nsource_drv/{o}.o := drv/{o}.c\n\ndeps_drv/{o}.o := \\\n  {deps} \\\n\ndrv/{o}.o: $(deps_drv/{o}.o)\n\n$(deps_drv/{o}.o):\n"
                ),
            )
            .unwrap();
        }
        let dirs = BTreeSet::from(["drv".to_string()]);
        let removed = remove_stale(&root, &dirs, &[root.join("include/h.h").to_string()]);
        assert_eq!(removed, ["drv/a.o"]);
        assert!(!root.join("drv/a.o").exists() && !root.join("drv/.a.o.cmd").exists());
        assert!(root.join("drv/b.o").exists());
        let removed = remove_stale(&root, &dirs, &[root.join("drv/b.c").to_string()]);
        assert_eq!(removed, ["drv/b.o"]);
    }
}
