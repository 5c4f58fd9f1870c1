//! Debian's own 7.3 headers as the Kbuild tree. Debian built 7.3 with gcc 14, which Debian 12
//! does not have, so the build runs inside a Debian 13 root made by `scripts/trixie-root`
//! (debootstrap; gcc-14, Debian's linux-headers-7.3.4+deb13-amd64 from trixie-backports), in a
//! private mount namespace where the test kernel's 7.3 source (the same Debian version) is
//! mounted read-only. The modules extmod builds there from Debian's source against Debian's
//! headers are compared with Debian's own (linux-modules-7.3.4+deb13-amd64) once Debian's
//! signature is removed: every section is equal, except that the source file names UBSAN
//! records (never remapped by gcc's prefix maps) are Debian's build directory in theirs and
//! the overlay in ours, and the build ID, which hashes the whole file.

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Debian's 7.3 build directory, as its modules record it.
const DEBIAN_BUILD_DIR: &str = "/build/reproducible-path/linux-7.3.4/";

/// `haystack` with every `from` replaced by `to`.
fn replaced(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn debian_7_3_modules_match_linux_modules_built_in_a_trixie_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (debootstrap, chroot, mount namespaces)");
        return;
    }
    let o = Command::new(common::repo().join("scripts/trixie-root"))
        .output()
        .unwrap();
    if !o.status.success() {
        eprintln!(
            "SKIP: no Debian 13 root: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        return;
    }
    let cache = std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let root = cache.join("root");
    let abi = std::fs::read_to_string(cache.join("abi")).unwrap();
    let abi = abi.trim();
    let tk = common::kernel(common::Target::X86_64, "7.3");
    let tmp = common::tempdir("extmod-debian-7.3-");
    let work = tmp.path();
    let bin = Path::new(env!("CARGO_BIN_EXE_extmod"));
    let symbols = [
        "CONFIG_DUMMY",
        "CONFIG_VETH",
        "CONFIG_NLMON",
        "CONFIG_IFB",
        "CONFIG_NLS_UTF8",
        "CONFIG_NLS_ASCII",
        "CONFIG_NLS_ISO8859_1",
        "CONFIG_NLS_CODEPAGE_437",
        "CONFIG_NLS_CODEPAGE_850",
        "CONFIG_BLK_DEV_LOOP",
        "CONFIG_SQUASHFS",
        "CONFIG_ZRAM",
    ];
    // Mount points inside the root for this run: the namespace's mounts vanish with it.
    let (mnt_bin, mnt_src, mnt_work) = (
        format!("/mnt/extmod-bin-{}", std::process::id()),
        format!("/mnt/extmod-src-{}", std::process::id()),
        format!("/mnt/extmod-work-{}", std::process::id()),
    );
    for m in [&mnt_bin, &mnt_src, &mnt_work] {
        std::fs::create_dir_all(root.join(m.trim_start_matches('/'))).unwrap();
    }
    let script = format!(
        "set -e\n\
         mount --bind {bindir} {root}{mnt_bin}\n\
         mount --bind {src} {root}{mnt_src}\n\
         mount -o remount,ro,bind {root}{mnt_src}\n\
         mount --bind {work} {root}{mnt_work}\n\
         mount -t proc proc {root}/proc\n\
         exec chroot {root} env XDG_CACHE_HOME={mnt_work}/cache TMPDIR={mnt_work} {mnt_bin}/extmod build --json --strip 1 \
           -K /usr/src/linux-headers-{abi}-amd64 -S {mnt_src} -D {mnt_work}/objs -O {mnt_work}/out {syms}\n",
        bindir = bin.parent().unwrap().display(),
        root = root.display(),
        src = tk.src.display(),
        work = work.display(),
        syms = symbols.join(" "),
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    for m in [&mnt_bin, &mnt_src, &mnt_work] {
        let _ = std::fs::remove_dir(root.join(m.trim_start_matches('/')));
    }
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let theirs_root = cache
        .join("modules/usr/lib/modules")
        .join(format!("{abi}-amd64"));
    let mut compared = 0;
    let mut rodata_paths = 0;
    for p in doc["packages"].as_array().unwrap() {
        let pkg = p["name"].as_str().unwrap();
        assert_eq!(p["status"], "built", "{p}");
        let overlay = format!("{mnt_work}/objs/{pkg}/tree/");
        for m in p["installed"].as_array().unwrap() {
            let rel = m["path"].as_str().unwrap();
            let rel_in_modlib = rel.split_once("/kernel/").unwrap().1;
            let ours = common::unxz(&work.join("out").join(pkg).join(rel));
            let theirs_signed = common::unxz(&theirs_root.join("kernel").join(rel_in_modlib));
            let theirs = kbuild_install::elf::without_signature(&theirs_signed);
            assert!(
                theirs.len() < theirs_signed.len(),
                "{rel}: Debian's is signed"
            );
            let (a, b) = (work.join("ours.ko"), work.join("theirs.ko"));
            std::fs::write(&a, &ours).unwrap();
            std::fs::write(&b, theirs).unwrap();
            let (sa, sb) = (common::sections(&a), common::sections(&b));
            assert_eq!(
                sa.keys().collect::<Vec<_>>(),
                sb.keys().collect::<Vec<_>>(),
                "{rel}: sections"
            );
            for (name, ours) in &sa {
                let theirs = &sb[name];
                if name == ".note.gnu.build-id" || name.starts_with(".rela") {
                    continue;
                }
                if ours == theirs {
                    continue;
                }
                // UBSAN's source locations: Debian's build directory, the overlay in ours; what
                // follows moves by the difference in length (alignment padding aside).
                let mapped = replaced(theirs, DEBIAN_BUILD_DIR.as_bytes(), overlay.as_bytes());
                let pieces = |b: &[u8]| -> Vec<Vec<u8>> {
                    b.split(|c| *c == 0)
                        .filter(|p| !p.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect()
                };
                if pieces(&mapped) != pieces(ours)
                    && std::env::var_os("EXTMOD_TEST_KEEP_DIFF").is_some()
                {
                    std::fs::write("/tmp/ours.ko", std::fs::read(&a).unwrap()).unwrap();
                    std::fs::write("/tmp/theirs.ko", std::fs::read(&b).unwrap()).unwrap();
                }
                assert!(
                    theirs
                        .windows(DEBIAN_BUILD_DIR.len())
                        .any(|w| w == DEBIAN_BUILD_DIR.as_bytes())
                        && pieces(&mapped) == pieces(ours),
                    "{rel}: section {name} differs from Debian's beyond the source directory"
                );
                rodata_paths += 1;
            }
            compared += 1;
        }
    }
    assert!(compared >= 12, "only {compared} modules compared");
    eprintln!(
        "{compared} modules equal Debian's 7.3 ones section by section \
         ({rodata_paths} sections differ only by the build directory UBSAN records)"
    );
}
