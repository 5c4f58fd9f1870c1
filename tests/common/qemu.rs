//! Boot the test kernel under qemu (TCG, no KVM) with a busybox initramfs and capture the
//! serial console, so tests can check that built modules really load.
//!
//! Host requirements (Debian): `qemu-system-x86`, `busybox-static`, `cpio`, `gzip`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Printed by `/init` right before the user script runs.
pub const START_MARKER: &str = "EXTMOD-QEMU-START";
/// Printed by `/init` after the user script, followed by ` rc=<exit code>`.
pub const DONE_MARKER: &str = "EXTMOD-QEMU-DONE";

/// The statically linked busybox put into every image (`EXTMOD_TEST_BUSYBOX` overrides).
fn busybox_path() -> PathBuf {
    std::env::var_os("EXTMOD_TEST_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// Applets that must be present in the image even if `busybox --list` omits them.
const REQUIRED_APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "modprobe", "depmod", "lsmod", "ls", "cat", "echo", "grep", "reboot",
    "poweroff", "sleep", "ip", "uname", "dmesg", "test",
];

/// Builder for a gzipped newc initramfs whose `/init` mounts proc, sysfs and devtmpfs, runs a
/// shell script, reports its exit code on the console and reboots (which ends qemu, started
/// with `-no-reboot`).
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    /// A static busybox for the guest's architecture (default: the host's).
    busybox: Option<PathBuf>,
    release: Option<String>,
    modules: Vec<(PathBuf, String)>,
    trees: Vec<(PathBuf, String)>,
    script: String,
}

impl Initramfs {
    /// An empty image: busybox and `/init` only, with an empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// The guest's static busybox (for a cross target, from `scripts/target-busybox`).
    pub fn busybox(mut self, path: &Path) -> Self {
        self.busybox = Some(path.to_path_buf());
        self
    }

    /// An image for `target`: its busybox (fetched once by `scripts/target-busybox`).
    pub fn for_target(target: super::Target) -> Self {
        let me = Self::new();
        if target == super::Target::X86_64 {
            return me;
        }
        let arch = target.name();
        let out = Command::new(super::repo().join("scripts/target-busybox"))
            .arg(arch)
            .output()
            .expect("run scripts/target-busybox");
        assert!(
            out.status.success(),
            "scripts/target-busybox {arch}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        me.busybox(Path::new(String::from_utf8_lossy(&out.stdout).trim()))
    }

    /// The kernel release used for `/lib/modules/<release>`; defaults to the test kernel's.
    pub fn release(mut self, release: &str) -> Self {
        self.release = Some(release.to_string());
        self
    }

    /// Place the host file `host_ko` at `/lib/modules/<release>/<rel>` in the image
    /// (`rel` like `kernel/drivers/net/dummy.ko`).
    pub fn module(mut self, host_ko: &Path, rel: &str) -> Self {
        self.modules.push((host_ko.to_path_buf(), rel.to_string()));
        self
    }

    /// Copy the whole host directory `host_dir` (symlinks preserved) into the image at the
    /// absolute path `at` (for example an install root containing `lib/modules/...` at `/`).
    pub fn tree(mut self, host_dir: &Path, at: &str) -> Self {
        self.trees.push((host_dir.to_path_buf(), at.to_string()));
        self
    }

    /// Shell commands run by `/init` (as `sh -e`, so any failing command fails the script)
    /// after the pseudo filesystems are mounted.
    pub fn script(mut self, sh: &str) -> Self {
        self.script = sh.to_string();
        self
    }

    /// Write the image to `out_dir/initramfs.cpio.gz` (staging it in `out_dir/initramfs.root`)
    /// and return its path.
    pub fn build(&self, out_dir: &Path) -> PathBuf {
        let root = out_dir.join("initramfs.root");
        if root.exists() {
            fs::remove_dir_all(&root).unwrap();
        }
        for d in ["bin", "dev", "proc", "sys", "tmp", "root", "lib/modules"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }

        let busybox = self.busybox.clone().unwrap_or_else(busybox_path);
        assert_static_elf(&busybox);
        fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        // Debian builds busybox-static with one configuration for every architecture: the
        // host's applet list is the guest's.
        let mut applets = host_applets(&busybox_path());
        applets.extend(REQUIRED_APPLETS.iter().map(|a| a.to_string()));
        applets.sort();
        applets.dedup();
        for applet in applets.iter().filter(|a| a.as_str() != "busybox") {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        // The kernel's request_module() runs /sbin/modprobe (e.g. the crypto API loading
        // crc32c_generic for libcrc32c).
        fs::create_dir_all(root.join("sbin")).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/modprobe")).unwrap();

        for (host_dir, at) in &self.trees {
            copy_tree(host_dir, &root.join(at.trim_start_matches('/')));
        }
        if !self.modules.is_empty() {
            let release = self
                .release
                .clone()
                .unwrap_or_else(|| super::test_kernel().release());
            let moddir = root.join("lib/modules").join(release);
            for (ko, rel) in &self.modules {
                let dst = moddir.join(rel);
                fs::create_dir_all(dst.parent().unwrap()).unwrap();
                fs::copy(ko, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", ko.display()));
            }
        }

        write_exec(&root.join("script.sh"), &self.script);
        write_exec(&root.join("init"), &init_script());

        let image = out_dir.join("initramfs.cpio.gz");
        write_cpio_gz(&root, &image);
        image
    }
}

/// The `/init` of every image.
fn init_script() -> String {
    format!(
        "#!/bin/sh\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         echo {START_MARKER}\n\
         sh -e /script.sh\n\
         rc=$?\n\
         echo \"{DONE_MARKER} rc=$rc\"\n\
         reboot -f\n\
         sleep 5\n"
    )
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Panic with an installation hint unless `path` is a statically linked ELF (no PT_INTERP).
fn assert_static_elf(path: &Path) {
    let hint = "hint: apt-get install busybox-static";
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}; {hint}", path.display()));
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    assert!(
        bytes.len() > 64 && bytes.starts_with(b"\x7fELF") && bytes[5] == 1,
        "{} is not a little-endian ELF; {hint}",
        path.display()
    );
    let (phoff, phentsize, phnum) = if bytes[4] == 2 {
        (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    } else {
        (u32_at(0x1c) as usize, u16_at(0x2a), u16_at(0x2c))
    };
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == 3);
    assert!(!interp, "{} is dynamically linked; {hint}", path.display());
}

/// The applet names the host busybox was built with.
fn host_applets(busybox: &Path) -> Vec<String> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("run {} --list: {e}", busybox.display()));
    assert!(out.status.success(), "{} --list failed", busybox.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('/'))
        .map(str::to_string)
        .collect()
}

/// Recursively copy `src` into `dst` (created if needed), recreating symlinks as symlinks.
fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    let entries = fs::read_dir(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    for entry in entries {
        let entry = entry.unwrap();
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let ty = entry.file_type().unwrap();
        if ty.is_symlink() {
            let _ = fs::remove_file(&to);
            std::os::unix::fs::symlink(fs::read_link(&from).unwrap(), &to).unwrap();
        } else if ty.is_dir() {
            copy_tree(&from, &to);
        } else {
            fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
    }
}

/// Every path below `root`, relative to it, parents before children.
fn list_tree(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let path = rel.join(name);
        out.push(path.clone());
        if fs::symlink_metadata(root.join(&path)).unwrap().is_dir() {
            list_tree(root, &path, out);
        }
    }
}

/// `cpio -o -H newc` of everything below `root` (owned by root:root), piped through `gzip`.
fn write_cpio_gz(root: &Path, image: &Path) {
    let mut paths = Vec::new();
    list_tree(root, Path::new(""), &mut paths);
    let mut list = Vec::new();
    for p in &paths {
        list.extend_from_slice(p.as_os_str().as_encoded_bytes());
        list.push(0);
    }

    let mut cpio = Command::new("cpio")
        .args(["-o", "-0", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run cpio; hint: apt-get install cpio");
    let gzip = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::from(cpio.stdout.take().unwrap()))
        .stdout(Stdio::from(fs::File::create(image).unwrap()))
        .spawn()
        .expect("run gzip");
    let mut stdin = cpio.stdin.take().unwrap();
    stdin.write_all(&list).unwrap();
    drop(stdin);
    assert!(cpio.wait().unwrap().success(), "cpio failed");
    assert!(
        gzip.wait_with_output().unwrap().status.success(),
        "gzip failed"
    );
}

/// What a boot produced.
#[derive(Debug, Clone)]
pub struct BootResult {
    /// The serial console (qemu's stdout, `\r\n` normalised to `\n`), followed by qemu's
    /// stderr and a note if the timeout killed qemu.
    pub output: String,
    /// The exit code of the user script, if `/init` got to report it.
    pub script_rc: Option<i32>,
}

impl BootResult {
    /// Panic, showing the whole console, unless the script ran to completion with status 0.
    pub fn assert_ok(&self) {
        assert!(
            self.script_rc == Some(0),
            "guest script {}; console:\n{}",
            match self.script_rc {
                Some(rc) => format!("exited with {rc}"),
                None => "did not finish".to_string(),
            },
            self.output
        );
    }

    /// The console lines between the start and done markers (the script's output, mixed with
    /// any kernel messages printed meanwhile); empty if the script never started.
    pub fn script_output(&self) -> &str {
        let Some(start) = self.output.find(START_MARKER) else {
            return "";
        };
        let rest = &self.output[start + START_MARKER.len()..];
        let end = rest.rfind(DONE_MARKER).unwrap_or(rest.len());
        rest[..end].trim_matches('\n')
    }
}

/// Drain a child's pipe on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Wait for `child` until `timeout`; kill it after that. Returns whether it was killed.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Boot `bzimage` with `initrd` under `qemu-system-x86_64` (TCG, 256 MiB, serial console on
/// stdout) and return the console once qemu exits, killing it after `timeout`.
pub fn boot(bzimage: &Path, initrd: &Path, timeout: Duration) -> BootResult {
    boot_target(super::Target::X86_64, bzimage, initrd, timeout)
}

/// Boot a kernel of `target`: x86_64 as [`boot`], arm64 with `qemu-system-aarch64 -M virt`,
/// armhf with `qemu-system-arm -M virt` (PL011 console).
pub fn boot_target(
    target: super::Target,
    image: &Path,
    initrd: &Path,
    timeout: Duration,
) -> BootResult {
    use super::Target;
    let (qemu, machine, console, package): (&str, &[&str], &str, &str) = match target {
        Target::X86_64 => ("qemu-system-x86_64", &[], "ttyS0", "qemu-system-x86"),
        Target::Arm64 => (
            "qemu-system-aarch64",
            &["-M", "virt", "-cpu", "cortex-a57"],
            "ttyAMA0",
            "qemu-system-arm",
        ),
        Target::Armhf => (
            "qemu-system-arm",
            &["-M", "virt", "-cpu", "cortex-a15"],
            "ttyAMA0",
            "qemu-system-arm",
        ),
    };
    let mut child = Command::new(qemu)
        .args(machine)
        .arg("-kernel")
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &format!("console={console} panic=-1 quiet")])
        .args(["-nographic", "-no-reboot", "-m", "256", "-accel", "tcg"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {qemu}: {e}; hint: apt-get install {package}"));
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let killed = wait_or_kill(&mut child, timeout);

    let mut output = String::from_utf8_lossy(&stdout.join().unwrap()).replace("\r\n", "\n");
    let stderr = stderr.join().unwrap();
    if !stderr.is_empty() {
        output.push_str("\n--- qemu stderr ---\n");
        output.push_str(&String::from_utf8_lossy(&stderr));
    }
    if killed {
        output.push_str(&format!("\n--- qemu killed after {timeout:?} ---\n"));
    }
    let script_rc = output
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix(DONE_MARKER)?
                .trim()
                .strip_prefix("rc=")
        })
        .next_back()
        .and_then(|rc| rc.trim().parse().ok());
    BootResult { output, script_rc }
}
