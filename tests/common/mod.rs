//! Support shared by extmod's integration tests: the real test kernel, the binaries, and
//! tree fingerprints.
#![allow(dead_code)]

pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The cached test kernel built by `scripts/test-kernel` (Debian's linux-source-6.12 with
/// tinyconfig + tests/kernel/extmod-test.config).
#[derive(Debug, Clone)]
pub struct TestKernel {
    pub dir: PathBuf,
    pub src: PathBuf,
    pub obj: PathBuf,
}

impl TestKernel {
    pub fn bzimage(&self) -> PathBuf {
        self.obj.join("arch/x86/boot/bzImage")
    }
    pub fn release(&self) -> String {
        std::fs::read_to_string(self.obj.join("include/config/kernel.release"))
            .unwrap()
            .trim()
            .to_string()
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Locate (building once if needed, ~8 minutes) the test kernel.
pub fn test_kernel() -> &'static TestKernel {
    static TK: OnceLock<TestKernel> = OnceLock::new();
    TK.get_or_init(|| {
        let out = Command::new(repo().join("scripts/test-kernel"))
            .output()
            .expect("run scripts/test-kernel");
        assert!(
            out.status.success(),
            "scripts/test-kernel failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        TestKernel {
            src: dir.join("src"),
            obj: dir.join("obj"),
            dir,
        }
    })
}

/// A fresh temporary directory under the target dir (same filesystem as the cache in CI and
/// on a developer machine, so hardlinks are exercised).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// sha256 of every regular file and symlink below `root`, in the format of
/// `scripts/tree-fingerprint` (path and hash per line, sorted).
pub fn fingerprint(root: &Path) -> String {
    let out = Command::new(repo().join("scripts/tree-fingerprint"))
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
