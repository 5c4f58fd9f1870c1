//! Configuration variants on the real test kernel: modules the base config did not enable,
//! module-local sub-options, and the refusals that keep the kernel unchanged.

mod common;

use assert_cmd::Command;
use common::qemu::{Initramfs, boot};
use common::{fingerprint, test_kernel};
use object::{Object, ObjectSymbol};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

fn extmod() -> Command {
    Command::cargo_bin("extmod").unwrap()
}

fn kbuild() -> &'static Path {
    static K: OnceLock<PathBuf> = OnceLock::new();
    K.get_or_init(|| common::kbuild("kbuild-variant"))
}

fn build(d: &Path, out: &Path, args: &[&str]) -> (i32, Value, String) {
    let tk = test_kernel();
    let o = extmod()
        .arg("build")
        .arg("--kbuild")
        .arg(kbuild())
        .arg("--srctree")
        .arg(&tk.src)
        .arg("-D")
        .arg(d)
        .arg("-O")
        .arg(out)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let doc = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    (
        o.status.code().unwrap(),
        doc,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn package<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
}

fn has_symbol(ko: &Path, name: &str) -> bool {
    let data = std::fs::read(ko).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.symbols().any(|s| s.name() == Ok(name))
}

/// Build a one-file external module against `tree`; Ok when it compiles.
fn probe(tree: &Path, dir: &Path, code: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("probe.c"), code).unwrap();
    std::fs::write(dir.join("Kbuild"), "obj-m := probe.o\n").unwrap();
    let o = std::process::Command::new("make")
        .arg("-C")
        .arg(tree)
        .arg(format!("M={}", dir.display()))
        .args(["ARCH=x86", "modules"])
        .output()
        .unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

const PROBE: &str = "#include <linux/module.h>\n#if !IS_ENABLED(CONFIG_NLMON)\n#error CONFIG_NLMON is off\n#endif\nMODULE_LICENSE(\"GPL\");\n";

#[test]
fn nlmon_builds_through_a_variant_and_loads() {
    let tk = test_kernel();
    let k = kbuild();
    let k_before = fingerprint(k);
    let tmp = common::tempdir("extmod-variant-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let (code, doc, err) = build(&d, &out, &["CONFIG_NLMON=m"]);
    assert_eq!(code, 0, "{err}");
    let p = package(&doc, "CONFIG_NLMON");
    assert_eq!(p["status"], "built", "{p}");
    assert_eq!(p["modules"][0], "drivers/net/nlmon.ko");

    // The module's C code saw the variant: IS_ENABLED(CONFIG_NLMON) is true in its overlay,
    // and false against the base tree (the probe can fail).
    probe(
        &d.join("CONFIG_NLMON/tree"),
        &tmp.path().join("probe-variant"),
        PROBE,
    )
    .unwrap();
    let base = probe(k, &tmp.path().join("probe-base"), PROBE).unwrap_err();
    assert!(base.contains("CONFIG_NLMON is off"), "{base}");

    // The real kernel loads it.
    let ko = out
        .join("CONFIG_NLMON/lib/modules")
        .join(tk.release())
        .join("kernel/drivers/net/nlmon.ko.xz");
    // Signed with the kernel's key by extmod (the test kernel has CONFIG_MODULE_SIG_FORCE).
    let image = Initramfs::new()
        .module(&ko, "kernel/drivers/net/nlmon.ko.xz")
        .script("depmod\nmodprobe nlmon\nlsmod\nip link add nlmon0 type nlmon\ntest -e /sys/class/net/nlmon0\n");
    let r = boot(
        &tk.bzimage(),
        &image.build(&tmp.path().join("boot")),
        Duration::from_secs(90),
    );
    r.assert_ok();
    assert!(
        r.script_output().lines().any(|l| l.starts_with("nlmon ")),
        "{}",
        r.script_output()
    );

    // The same request again is a cached variant and a fresh package.
    let (code, doc, _) = build(&d, &out, &["CONFIG_NLMON=m"]);
    assert_eq!(code, 0);
    assert_eq!(package(&doc, "CONFIG_NLMON")["status"], "fresh");
    assert_eq!(fingerprint(k), k_before, "the Kbuild tree was modified");
}

#[test]
fn module_local_sub_option_builds_and_differs() {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-variant-sub-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let pf = tmp.path().join("p.toml");
    std::fs::write(&pf, "[[package]]\nname = \"kmod-fs-squashfs\"\nkconfig = [\"CONFIG_SQUASHFS\", \"CONFIG_SQUASHFS_XZ=y\"]\n").unwrap();
    let (code, doc, err) = build(&d, &out, &["--packages", pf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(package(&doc, "kmod-fs-squashfs")["status"], "built");
    assert!(
        out.join("kmod-fs-squashfs/lib/modules")
            .join(tk.release())
            .join("kernel/fs/squashfs/squashfs.ko.xz")
            .is_file()
    );
    // The module as built (the staged one is signed and compressed).
    let ours = d.join("kmod-fs-squashfs/tree/fs/squashfs/squashfs.ko");
    // The XZ wrapper calls the kernel's XZ decoder only when SQUASHFS_XZ is on.
    assert!(
        has_symbol(&ours, "xz_dec_run"),
        "the XZ decompressor is missing"
    );
    assert!(!has_symbol(
        &tk.obj.join("fs/squashfs/squashfs.ko"),
        "xz_dec_run"
    ));

    // `extmod variant` classifies it as module-local.
    let o = extmod()
        .env("XDG_CACHE_HOME", tmp.path().join("cache"))
        .args(["variant", "--json", "--kbuild"])
        .arg(kbuild())
        .arg("--srctree")
        .arg(&tk.src)
        .args([
            "--set",
            "CONFIG_SQUASHFS=m",
            "--set",
            "CONFIG_SQUASHFS_XZ=y",
            "--out",
        ])
        .arg(tmp.path().join("v"))
        .assert()
        .success()
        .get_output()
        .clone();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["symbol"] == "SQUASHFS_XZ")
        .unwrap();
    assert_eq!(c["class"], "module-local", "{v}");
    assert_eq!(
        v["drift"].as_array().unwrap().len(),
        0,
        "toolchain drift on the machine that built the kernel: {v}"
    );
    let h = std::fs::read_to_string(tmp.path().join("v/include/generated/autoconf.h")).unwrap();
    assert!(h.contains("#define CONFIG_SQUASHFS_XZ 1"));
    assert!(
        tmp.path().join("v/.config").is_file()
            && tmp.path().join("v/include/config/auto.conf").is_file()
    );
}

#[test]
fn kernel_affecting_and_impossible_requests_are_refused() {
    let tmp = common::tempdir("extmod-variant-bad-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let cases: [(&str, i32, &[&str]); 4] = [
        // Built in: Kconfig keeps it =y (selected by built-in code); refused before make runs.
        ("CONFIG_CRC32=m", 27, &["CONFIG_CRC32 stays =y"]),
        // A built-in option used outside the module: the kmod-b43 / HW_RANDOM case.
        (
            "CONFIG_HW_RANDOM=y",
            28,
            &["changes the kernel itself", "CONFIG_HW_RANDOM n -> y"],
        ),
        (
            "CONFIG_USB_NET_CDCETHER=m",
            27,
            &["unmet dependencies", "CONFIG_USB not set"],
        ),
        (
            "CONFIG_SQUASHFS_XZ=m",
            27,
            &["is a bool option: it cannot be a module"],
        ),
    ];
    for (req, want, texts) in cases {
        let (code, doc, err) = build(&d, &out, &[req]);
        assert_eq!(code, want, "{req}: {err}");
        let p = &doc["packages"][0];
        assert_eq!(p["status"], "refused");
        let cause = p["refusal"]["cause"].as_str().unwrap();
        for t in texts {
            assert!(cause.contains(t), "{req}: `{t}` not in: {cause}");
        }
        assert!(
            p["commands"].as_array().unwrap().is_empty(),
            "make ran for {req}"
        );
    }
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}

/// `extmod variant --json` for `sets`, with or without the source tree; (exit code, report).
fn variant(sets: &[&str], with_src: bool) -> (i32, Value) {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-verdict-");
    let mut cmd = extmod();
    cmd.env("XDG_CACHE_HOME", tmp.path().join("cache"))
        .args(["variant", "--json", "--kbuild"])
        .arg(kbuild());
    if with_src {
        cmd.arg("--srctree").arg(&tk.src);
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    let o = cmd.arg("--out").arg(tmp.path().join("v")).output().unwrap();
    let doc: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code().unwrap(), doc)
}

fn change<'a>(v: &'a Value, sym: &str) -> &'a Value {
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["symbol"] == sym)
        .unwrap_or_else(|| panic!("no change of {sym}: {v}"))
}

/// The base build's own record: the objects of vmlinux.a whose `.cmd` lists `include/config/SYM`.
fn builtin_dependents(sym: &str) -> Vec<String> {
    let obj = &test_kernel().obj;
    let data = std::fs::read(obj.join("vmlinux.a")).unwrap();
    let text = String::from_utf8_lossy(&data);
    text.split('\n')
        .filter_map(|l| l.strip_suffix(".o/"))
        .map(|stem| format!("{stem}.o"))
        .filter(|o| {
            let (dir, name) = o.rsplit_once('/').unwrap_or(("", o));
            std::fs::read_to_string(obj.join(dir).join(format!(".{name}.cmd")))
                .is_ok_and(|t| t.contains(&format!("include/config/{sym})")))
        })
        .collect()
}

#[test]
fn verdicts_follow_the_base_builds_record() {
    // ZSMALLOC m -> n changes struct zone (mmzone.h tests IS_ENABLED(CONFIG_ZSMALLOC)), which
    // built-in mm/ code uses: not free, although it only removes modules.
    let truth = builtin_dependents("ZSMALLOC");
    assert!(truth.contains(&"mm/vmstat.o".to_string()), "{truth:?}");
    for with_src in [true, false] {
        let (code, v) = variant(&["CONFIG_ZSMALLOC=n", "CONFIG_ZRAM=n"], with_src);
        assert_eq!(code, 28, "{v}");
        let c = change(&v, "ZSMALLOC");
        assert_eq!(c["class"], "kernel-affecting", "{c}");
        let objects: Vec<&str> = c["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(objects.contains(&"mm/vmstat.o"), "{c}");
        assert!(objects.iter().all(|o| truth.iter().any(|t| t == o)), "{c}");
        // ZRAM itself is only a module.
        assert_eq!(change(&v, "ZRAM")["class"], "module-local", "{v}");
    }
    // VLAN_8021Q=m: built-in net code depends on it (and Kbuild links vlan_core.o for =m).
    assert!(!builtin_dependents("VLAN_8021Q").is_empty());
    for with_src in [true, false] {
        let (code, v) = variant(&["CONFIG_VLAN_8021Q=m"], with_src);
        assert_eq!(code, 28, "with_src={with_src}: {v}");
        assert_eq!(change(&v, "VLAN_8021Q")["class"], "kernel-affecting", "{v}");
        // The Makefile-level fact: `obj-$(subst m,y,$(CONFIG_VLAN_8021Q)) += vlan_core.o`.
        let added: Vec<&str> = v["builtin_added"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(added.contains(&"net/8021q/vlan_core.o"), "{v}");
    }
    // NLMON and squashfs sub-options: nothing built in depends on them.
    assert!(builtin_dependents("NLMON").is_empty());
    assert!(builtin_dependents("SQUASHFS_XZ").is_empty());
    for with_src in [true, false] {
        let (code, v) = variant(&["CONFIG_NLMON=m"], with_src);
        assert_eq!(code, 0, "{v}");
        assert_eq!(change(&v, "NLMON")["class"], "module-local", "{v}");
        let (code, v) = variant(&["CONFIG_SQUASHFS=m", "CONFIG_SQUASHFS_XZ=y"], with_src);
        assert_eq!(code, 0, "{v}");
        assert_eq!(change(&v, "SQUASHFS_XZ")["class"], "module-local", "{v}");
    }
}

/// A module whose parts live in subdirectories (`lib/zstd/zstd_compress.ko` links
/// `compress/*.o`), built through a module-local variant (`CONFIG_CRYPTO_ZSTD=m` selects it):
/// every directory the build writes is a real one in the overlay, the objects land there, the
/// module's `.mod` lists them as Kbuild computed, and the source tree is byte-for-byte unchanged
/// (make ran with it read-only; `tests/hostile.rs` proves the guard itself).
#[test]
fn module_with_parts_in_subdirectories_builds() {
    let tk = test_kernel();
    let src_before = fingerprint(&tk.src);
    let tmp = common::tempdir("extmod-variant-subdir-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let pf = tmp.path().join("p.toml");
    std::fs::write(
        &pf,
        "[[package]]\nname = \"kmod-crypto-zstd\"\nkconfig = [\"CONFIG_CRYPTO_ZSTD\"]\n\
         files = [\"lib/zstd/zstd_compress.ko\", \"crypto/zstd.ko\"]\n",
    )
    .unwrap();
    let (code, doc, err) = build(&d, &out, &["--raw", "--packages", pf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{doc}");
    assert_eq!(
        package(&doc, "kmod-crypto-zstd")["status"],
        "built",
        "{doc}"
    );
    let tree = d.join("kmod-crypto-zstd/tree");
    let sub = tree.join("lib/zstd/compress");
    let meta = std::fs::symlink_metadata(&sub).unwrap();
    assert!(
        meta.is_dir() && !meta.file_type().is_symlink(),
        "{sub:?} is not a real directory"
    );
    let parts = std::fs::read_to_string(tree.join("lib/zstd/zstd_compress.mod")).unwrap();
    let parts: Vec<&str> = parts.split_whitespace().collect();
    assert!(
        parts.iter().any(|p| p.starts_with("lib/zstd/compress/")),
        "{parts:?}"
    );
    for p in &parts {
        assert!(tree.join(p).is_file(), "{p} not built in the overlay");
        let real = std::fs::canonicalize(tree.join(p)).unwrap();
        assert!(
            !real.starts_with(&tk.src),
            "{p} was written into the source tree"
        );
    }
    assert!(
        out.join("kmod-crypto-zstd/lib/modules")
            .join(tk.release())
            .join("kernel/lib/zstd/zstd_compress.ko")
            .is_file()
    );
    assert_eq!(
        fingerprint(&tk.src),
        src_before,
        "the source tree was modified"
    );
}

/// A package is compiled with its dependencies' configuration too, as OpenWrt merges every
/// selected package's KCONFIG: squashfs.ko of a package that only asks for CONFIG_SQUASHFS,
/// but depends on one that sets CONFIG_SQUASHFS_XZ=y (and builds nothing itself), has the
/// XZ decompressor; without the dependency it has not.
#[test]
fn a_package_is_built_with_its_dependencies_configuration() {
    test_kernel();
    let tmp = common::tempdir("extmod-variant-deps-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let pf = tmp.path().join("p.toml");
    std::fs::write(
        &pf,
        "[[package]]\nname = \"xz-option\"\nkconfig = [\"CONFIG_SQUASHFS_XZ=y\"]\nfiles = [\"lib/crc7.ko\"]\n\n\
         [[package]]\nname = \"squashfs\"\nkconfig = [\"CONFIG_SQUASHFS\"]\ndepends = [\"xz-option\"]\n",
    )
    .unwrap();
    let (code, doc, err) = build(&d, &out, &["--packages", pf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let p = package(&doc, "squashfs");
    assert_eq!(p["status"], "built", "{p}");
    assert!(
        p["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap()
                == "built with its dependencies' configuration: CONFIG_SQUASHFS_XZ=y"),
        "{p}"
    );
    let ours = d.join("squashfs/tree/fs/squashfs/squashfs.ko");
    assert!(
        has_symbol(&ours, "xz_dec_run"),
        "built without CONFIG_SQUASHFS_XZ"
    );

    // The same package alone: the base configuration (no XZ).
    let pf2 = tmp.path().join("alone.toml");
    std::fs::write(
        &pf2,
        "[[package]]\nname = \"squashfs\"\nkconfig = [\"CONFIG_SQUASHFS\"]\n",
    )
    .unwrap();
    let (d2, out2) = (tmp.path().join("objs2"), tmp.path().join("out2"));
    let (code, _, err) = build(&d2, &out2, &["--packages", pf2.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(!has_symbol(
        &d2.join("squashfs/tree/fs/squashfs/squashfs.ko"),
        "xz_dec_run"
    ));
}
