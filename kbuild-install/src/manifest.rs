//! `extmod-kbuild.json`: what a Kbuild tree was made from, written by kbuild-install.

use crate::error::{Error, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// File name of the manifest at the top of an installed tree.
pub const MANIFEST: &str = "extmod-kbuild.json";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    /// `include/config/kernel.release`, e.g. `6.12.117`.
    pub kernelrelease: String,
    /// `VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION]` of the source.
    pub kernelversion: String,
    pub arch: String,
    pub srcarch: String,
    pub cross_compile: String,
    pub cc: String,
    pub cc_version_text: String,
    /// The environment Kconfig saw, from `include/config/auto.conf.cmd` (CC, LD, versions, ...).
    pub toolchain_env: BTreeMap<String, String>,
    /// sha256 of `.config`.
    pub config_sha256: String,
    /// The kernel's vermagic, where it could be read from a module of the base build.
    pub vermagic: Option<String>,
    /// The target machine of the base build's modules (`"Aarch64 64-bit"`), where one exists.
    #[serde(default)]
    pub machine: Option<String>,
    /// Make variables of the base build given to kbuild-install (`KCFLAGS=...`), passed to
    /// every module build after the derived ones.
    #[serde(default)]
    pub make_vars_extra: Vec<String>,
    pub made_from: MadeFrom,
    pub files: FileCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MadeFrom {
    pub srctree: Utf8PathBuf,
    pub objtree: Utf8PathBuf,
    /// Seconds since the Unix epoch.
    pub made_at: u64,
    pub tool: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileCounts {
    /// Source files hardlinked from the source tree.
    pub linked: usize,
    /// Files copied (every build output, and source files when linking was impossible or `--copy`).
    pub copied: usize,
    pub symlinks: usize,
    pub kconfig_files: usize,
    pub bytes: u64,
}

impl Manifest {
    pub fn load(tree: &Utf8Path) -> Result<Self> {
        let path = tree.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::io("parse", &path, std::io::Error::other(e)))
    }

    pub fn store(&self, tree: &Utf8Path) -> Result<()> {
        let path = tree.join(MANIFEST);
        let mut text = serde_json::to_string_pretty(self).expect("manifest serializes");
        text.push('\n');
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))
    }

    /// Variables to pass to `make` for this tree (ARCH, CROSS_COMPILE, and CC/LLVM when the
    /// kernel was not built with `$(CROSS_COMPILE)gcc`).
    pub fn make_vars(&self) -> Vec<String> {
        let mut v = vec![format!("ARCH={}", self.arch)];
        if !self.cross_compile.is_empty() {
            v.push(format!("CROSS_COMPILE={}", self.cross_compile));
        }
        if let Some(llvm) = crate::tree::llvm_of(&self.cc) {
            v.push(format!("LLVM={llvm}"));
        } else if self.cc != format!("{}gcc", self.cross_compile) {
            v.push(format!("CC={}", self.cc));
        }
        // Given explicitly, a variable replaces the derived one.
        for extra in &self.make_vars_extra {
            let name = extra.split_once('=').map_or(extra.as_str(), |(n, _)| n);
            v.retain(|d| !d.starts_with(&format!("{name}=")));
            v.push(extra.clone());
        }
        v
    }
}

pub fn sha256_file(path: &Utf8Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            kernelrelease: "6.12.117".into(),
            kernelversion: "6.12.117".into(),
            arch: "x86".into(),
            srcarch: "x86".into(),
            cross_compile: String::new(),
            cc: "gcc".into(),
            cc_version_text: "gcc 12".into(),
            toolchain_env: BTreeMap::from([("CC".into(), "gcc".into())]),
            config_sha256: "00".into(),
            vermagic: None,
            machine: None,
            make_vars_extra: Vec::new(),
            made_from: MadeFrom {
                srctree: "/s".into(),
                objtree: "/o".into(),
                made_at: 0,
                tool: "test".into(),
            },
            files: FileCounts::default(),
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let d = Utf8Path::from_path(dir.path()).unwrap();
        let m = sample();
        m.store(d).unwrap();
        assert_eq!(Manifest::load(d).unwrap(), m);
    }

    #[test]
    fn make_vars_follow_the_toolchain() {
        let mut m = sample();
        assert_eq!(m.make_vars(), ["ARCH=x86"]);
        m.cross_compile = "aarch64-linux-gnu-".into();
        m.cc = "aarch64-linux-gnu-gcc".into();
        m.arch = "arm64".into();
        assert_eq!(
            m.make_vars(),
            ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]
        );
        m.cc = "clang".into();
        assert_eq!(m.make_vars()[2], "LLVM=1");
        m.cc = "clang-16".into();
        assert_eq!(m.make_vars()[2], "LLVM=-16");
        m.cc = "/usr/lib/llvm-16/bin/clang".into();
        assert_eq!(m.make_vars()[2], "LLVM=/usr/lib/llvm-16/bin/");
        m.make_vars_extra = vec!["KCFLAGS=-O2 -g".into(), "LLVM=-17".into()];
        assert_eq!(m.make_vars()[2..], ["KCFLAGS=-O2 -g", "LLVM=-17"]);
        m.make_vars_extra.clear();
        // A versioned cross gcc: CROSS_COMPILE from its prefix, CC as recorded.
        m.cc = "aarch64-linux-gnu-gcc-12".into();
        assert_eq!(
            m.make_vars(),
            [
                "ARCH=arm64",
                "CROSS_COMPILE=aarch64-linux-gnu-",
                "CC=aarch64-linux-gnu-gcc-12"
            ]
        );
    }
}
