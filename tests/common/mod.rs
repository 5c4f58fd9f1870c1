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
    pub target: Target,
}

/// A test kernel's target: its make variables, boot image, qemu and busybox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    X86_64,
    Arm64,
    /// 32-bit ARMv7, hard-float EABI (OpenWrt's kind of target).
    Armhf,
}

impl Target {
    /// The name `scripts/test-kernel` and `scripts/target-busybox` take.
    pub fn name(self) -> &'static str {
        match self {
            Target::X86_64 => "x86_64",
            Target::Arm64 => "arm64",
            Target::Armhf => "armhf",
        }
    }
    pub fn cross_compile(self) -> &'static str {
        match self {
            Target::X86_64 => "",
            Target::Arm64 => "aarch64-linux-gnu-",
            Target::Armhf => "arm-linux-gnueabihf-",
        }
    }
    /// Kbuild's SRCARCH.
    pub fn srcarch(self) -> &'static str {
        match self {
            Target::X86_64 => "x86",
            Target::Arm64 => "arm64",
            Target::Armhf => "arm",
        }
    }
    /// The ELF machine of its modules (`e_machine`).
    pub fn elf_machine(self) -> u16 {
        match self {
            Target::X86_64 => 62,
            Target::Arm64 => 183,
            Target::Armhf => 40,
        }
    }
    fn image(self) -> &'static str {
        match self {
            Target::X86_64 => "arch/x86/boot/bzImage",
            Target::Arm64 => "arch/arm64/boot/Image",
            Target::Armhf => "arch/arm/boot/zImage",
        }
    }
    /// Whether its cross compiler is installed (scripts/deps installs them); prints why a test
    /// is skipped otherwise.
    pub fn available(self) -> bool {
        let cc = format!("{}gcc", self.cross_compile());
        let ok = which::which(&cc).is_ok();
        if !ok {
            eprintln!("SKIP: {cc} not installed (scripts/deps installs it)");
        }
        ok
    }
}

impl TestKernel {
    pub fn bzimage(&self) -> PathBuf {
        self.obj.join(self.target.image())
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

/// Locate (building once if needed, ~5 minutes) the x86_64 test kernel.
pub fn test_kernel() -> &'static TestKernel {
    static TK: OnceLock<TestKernel> = OnceLock::new();
    TK.get_or_init(|| locate(Target::X86_64))
}

/// The 6.12 test kernel of a cross target (building once if needed, ~7 minutes).
pub fn cross_kernel(target: Target) -> &'static TestKernel {
    kernel(target, "6.12")
}

/// The test kernel of a target and kernel series (`6.12`, `6.1`), built once if needed.
pub fn kernel(target: Target, series: &str) -> &'static TestKernel {
    static KERNELS: std::sync::Mutex<Vec<(Target, String, &'static TestKernel)>> =
        std::sync::Mutex::new(Vec::new());
    if target == Target::X86_64 && series == "6.12" {
        return test_kernel();
    }
    let mut k = KERNELS.lock().unwrap();
    if let Some((_, _, tk)) = k.iter().find(|(t, s, _)| *t == target && s == series) {
        return tk;
    }
    let tk: &'static TestKernel = Box::leak(Box::new(locate_series(target, series)));
    k.push((target, series.to_string(), tk));
    tk
}

fn locate(target: Target) -> TestKernel {
    locate_series(target, "6.12")
}

fn locate_series(target: Target, series: &str) -> TestKernel {
    locate_profile(target, series, "")
}

/// A test kernel with a configuration profile on top (`scripts/test-kernel <target> 6.12
/// <profile>`, tests/kernel/profile-<profile>.config), built once if needed; not one of the
/// suite's kernels (the OpenWrt acceptance runs build it).
pub fn profile_kernel(target: Target, profile: &str) -> TestKernel {
    locate_profile(target, "6.12", profile)
}

fn locate_profile(target: Target, series: &str, profile: &str) -> TestKernel {
    let out = Command::new(repo().join("scripts/test-kernel"))
        .arg(target.name())
        .arg(series)
        .args((!profile.is_empty()).then_some(profile))
        .output()
        .expect("run scripts/test-kernel");
    assert!(
        out.status.success(),
        "scripts/test-kernel {} failed:\n{}",
        target.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    TestKernel {
        src: dir.join("src"),
        obj: dir.join("obj"),
        dir,
        target,
    }
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

/// A Kbuild tree of the test kernel made by `extmod kbuild-install` (without the self-test),
/// at `target/tmp/<name>`, once per test process.
pub fn kbuild(name: &str) -> PathBuf {
    kbuild_of(test_kernel(), name)
}

/// A Kbuild tree of `tk` made by `extmod kbuild-install` at `target/tmp/<name>`, once per test
/// process.
pub fn kbuild_of(tk: &TestKernel, name: &str) -> PathBuf {
    static TREES: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut trees = TREES.lock().unwrap();
    if let Some((_, p)) = trees.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let dest = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_extmod"))
        .args(["kbuild-install", "--no-verify", "--force", "--srctree"])
        .arg(&tk.src)
        .arg("--objtree")
        .arg(&tk.obj)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    trees.push((name.to_string(), dest.clone()));
    dest
}

/// Debian's linux-headers-<release>-amd64 for the test kernel's source version, when installed
/// (scripts/deps installs it); prints why a test is skipped otherwise.
pub fn debian_headers() -> Option<PathBuf> {
    let version = test_kernel().release();
    let dir = std::fs::read_dir("/usr/src")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&format!("linux-headers-{version}+")) && n.ends_with("-amd64")
        });
    if dir.is_none() {
        eprintln!("SKIP: no /usr/src/linux-headers-{version}+*-amd64 (scripts/deps installs it)");
    }
    dir
}

/// Debian's own headers package of the installed linux-source-<series> (the same Debian
/// version: 6.1's are `linux-headers-6.1.0-<n>-amd64`), when installed; prints why a test is
/// skipped otherwise.
pub fn debian_headers_of(series: &str) -> Option<PathBuf> {
    let q = |args: &[&str]| {
        std::process::Command::new("dpkg-query")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let version = q(&["-W", "-f=${Version}", &format!("linux-source-{series}")])?;
    let listed = q(&[
        "-W",
        "-f=${Package} ${Version} ${Status}\n",
        "linux-headers-*-amd64",
    ])?;
    let found = listed.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (pkg, ver) = (f.next()?, f.next()?);
        (ver == version && l.ends_with("install ok installed"))
            .then(|| PathBuf::from("/usr/src").join(pkg))
    });
    if found.is_none() {
        eprintln!(
            "SKIP: no linux-headers-*-amd64 of version {version} installed (scripts/deps installs it)"
        );
    }
    found
}

/// A root holding Debian's own modules of the headers `abi` (`6.1.0-57`), from
/// `scripts/debian-modules <abi>`; prints why a test is skipped otherwise.
pub fn debian_modules_of(abi: &str) -> Option<PathBuf> {
    run_debian_modules(&[abi])
}

fn run_debian_modules(args: &[&str]) -> Option<PathBuf> {
    let o = std::process::Command::new(repo().join("scripts/debian-modules"))
        .args(args)
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!(
            "SKIP: Debian's modules are not available: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

/// A root holding Debian's own modules for the installed 6.12 headers
/// (`lib/modules/<abi>/kernel`), from `scripts/debian-modules`; prints why a test is skipped
/// otherwise.
pub fn debian_modules() -> Option<PathBuf> {
    run_debian_modules(&[])
}

/// Every file below `root`, relative, with its bytes (symlinks as their target).
pub fn files_of(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, t.to_string_lossy().as_bytes().to_vec());
            } else if ft.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Every section of an ELF file by name, with its contents (`objcopy -O binary`).
pub fn sections(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let o = std::process::Command::new("readelf")
        .args(["-S", "-W"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut out = std::collections::BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.trim_start().strip_prefix('[') else {
            continue;
        };
        let Some(name) = rest
            .split(']')
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        else {
            continue;
        };
        if name.is_empty() || name == "Name" || name == "NULL" {
            continue;
        }
        let dump = path.with_extension(format!("section{}", out.len()));
        let ok = std::process::Command::new("objcopy")
            .args(["-O", "binary", &format!("--only-section={name}")])
            .arg(path)
            .arg(&dump)
            .status()
            .unwrap()
            .success();
        assert!(ok, "objcopy --only-section={name} {}", path.display());
        out.insert(name.to_string(), std::fs::read(&dump).unwrap_or_default());
        let _ = std::fs::remove_file(&dump);
    }
    out
}

/// A module's bytes, uncompressed when it is `.ko.xz` (Debian 12's 6.1 ships plain `.ko`).
pub fn unxz(path: &Path) -> Vec<u8> {
    if path.extension().is_some_and(|e| e == "ko") {
        return std::fs::read(path).unwrap();
    }
    let o = std::process::Command::new("xz")
        .arg("-dc")
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "xz -dc {}", path.display());
    o.stdout
}
