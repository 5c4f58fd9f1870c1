//! Running a child where some trees cannot be written: a private mount namespace in which each
//! protected directory is bind-mounted read-only onto itself. As root this needs only
//! `unshare(CLONE_NEWNS)`; otherwise a user namespace mapping the caller's own ids is tried
//! first. Where neither is allowed (a container without the capability), the child runs
//! unguarded: the checks extmod makes before writing still hold, the kernel just does not
//! enforce them.

use camino::Utf8Path;
use std::ffi::CString;
use std::os::unix::process::CommandExt;

/// Environment variable the guarded child sees: `1` when the read-only mounts are in place.
pub const GUARD_ENV: &str = "EXTMOD_READONLY_GUARD";

/// Whether this process may make a private mount namespace (checked once, in a child).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let mut cmd = std::process::Command::new("true");
        read_only(&mut cmd, &[Utf8Path::new("/")]);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Make `paths` read-only for the child `cmd` (and everything it starts) when this machine
/// allows it; the child then sees [`GUARD_ENV`]=1. Returns whether the guard is on.
pub fn protect(cmd: &mut std::process::Command, paths: &[&Utf8Path]) -> bool {
    if !available() {
        return false;
    }
    read_only(cmd, paths);
    cmd.env(GUARD_ENV, "1");
    true
}

/// The mount set-up itself. Fails the spawn when a namespace was made but a mount could not be.
fn read_only(cmd: &mut std::process::Command, paths: &[&Utf8Path]) {
    let paths: Vec<CString> = paths
        .iter()
        .filter_map(|p| CString::new(p.as_str()).ok())
        .collect();
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let uid_map = format!("{uid} {uid} 1");
    let gid_map = format!("{gid} {gid} 1");
    // SAFETY: only async-signal-safe system calls run between fork and exec; every buffer was
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let write = |path: &std::ffi::CStr, text: &str| {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                    if fd >= 0 {
                        libc::write(fd, text.as_ptr().cast(), text.len());
                        libc::close(fd);
                    }
                };
                write(c"/proc/self/setgroups", "deny");
                write(c"/proc/self/uid_map", &uid_map);
                write(c"/proc/self/gid_map", &gid_map);
            }
            let none = std::ptr::null();
            if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for p in &paths {
                if libc::mount(
                    p.as_ptr(),
                    p.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                    || libc::mount(
                        none,
                        p.as_ptr(),
                        none,
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_into_a_protected_directory_fail() {
        if !available() {
            eprintln!("SKIP: no private mount namespace here");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(d.path()).unwrap();
        let kept = root.join("kept");
        let free = root.join("free");
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::create_dir_all(&free).unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg("touch \"$1/x\" 2>&1; touch \"$2/y\"")
            .arg("sh")
            .arg(kept.as_str())
            .arg(free.as_str());
        protect(&mut cmd, &[&kept]);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Read-only file system"), "{text}");
        assert!(!kept.join("x").exists());
        assert!(free.join("y").exists());
    }
}
