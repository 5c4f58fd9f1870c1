//! Cross-compiled targets and other kernel series: Debian's linux-source-6.12 built for arm64
//! and for 32-bit ARMv7 (hard-float EABI, the kind of target OpenWrt builds for routers) with
//! Debian's cross compilers, and Debian's linux-source-6.1 (LTS) for x86_64. On each, the whole
//! pipeline against the real kernel: kbuild-install (with its
//! self-test), every module of the test config built as its own package and byte-identical to
//! the in-tree cross `make modules_install` (signed, xz-compressed), a package built through a
//! configuration variant, `extmod audit`, and the modules loaded by the real kernel in qemu.

mod common;

use assert_cmd::Command;
use common::qemu::{Initramfs, boot_target};
use common::{Target, TestKernel, cross_kernel, files_of, fingerprint};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn extmod() -> Command {
    Command::cargo_bin("extmod").unwrap()
}

/// `extmod build -K k -S s -D <t>/objs<n> -O <t>/out<n> CONFIG_DUMMY`.
fn build_dummy(k: &Path, s: &Path, t: &Path, n: u32) -> Command {
    let mut c = extmod();
    c.arg("build")
        .arg("-K")
        .arg(k)
        .arg("-S")
        .arg(s)
        .arg("-D")
        .arg(t.join(format!("objs{n}")))
        .arg("-O")
        .arg(t.join(format!("out{n}")))
        .arg("CONFIG_DUMMY");
    c
}

fn json_of(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", String::from_utf8_lossy(out)))
}

/// `e_machine` and ELF class of an object file.
fn elf_machine(path: &Path) -> (u16, u8) {
    let b = std::fs::read(path).unwrap();
    assert!(b.starts_with(b"\x7fELF"), "{} is not ELF", path.display());
    (u16::from_le_bytes([b[18], b[19]]), b[4])
}

fn pipeline(tk: &TestKernel) {
    let target = tk.target;
    let src_before = fingerprint(&tk.src);
    let tmp = common::tempdir(&format!("extmod-cross-{}-", target.name()));
    let t = tmp.path();
    let k = t.join("kbuild");

    // kbuild-install with its self-test: a module cross-built against K has the kernel's
    // vermagic and the target's ELF machine.
    let o = extmod()
        .args(["kbuild-install", "--json", "--srctree"])
        .arg(&tk.src)
        .arg("--objtree")
        .arg(&tk.obj)
        .arg(&k)
        .assert()
        .code(0)
        .get_output()
        .clone();
    let printed = json_of(&o.stdout);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(k.join("extmod-kbuild.json")).unwrap())
            .unwrap();
    assert_eq!(printed, manifest);
    let machine = match target {
        Target::Arm64 => "Aarch64 64-bit",
        Target::Armhf => "Arm 32-bit",
        Target::X86_64 => "X86_64 64-bit",
    };
    assert_eq!(manifest["machine"], machine);
    assert!(
        manifest["vermagic"]
            .as_str()
            .unwrap()
            .starts_with(&tk.release())
    );
    assert_eq!(manifest["arch"], target.srcarch());
    assert_eq!(manifest["cross_compile"], target.cross_compile());

    // Every module of the config, each its own package, merged into one install tree.
    // (7.3's CRC_ENABLE_ALL_FOR_KUNIT only selects the CRC libraries; it builds nothing.)
    let symbols: Vec<String> = std::fs::read_to_string(tk.obj.join(".config"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_suffix("=m"))
        .filter(|s| *s != "CONFIG_CRC_ENABLE_ALL_FOR_KUNIT")
        .map(str::to_string)
        .collect();
    assert!(symbols.len() >= 13, "{symbols:?}");
    let (d, out, root) = (t.join("objs"), t.join("out"), t.join("root"));
    let o = extmod()
        .arg("build")
        .arg("-K")
        .arg(&k)
        .arg("-S")
        .arg(&tk.src)
        .arg("-D")
        .arg(&d)
        .arg("-O")
        .arg(&out)
        .arg("--install-mod-path")
        .arg(&root)
        .arg("--json")
        .args(&symbols)
        .arg("CONFIG_NLMON=m")
        .output()
        .unwrap();
    let doc = json_of(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{doc}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for p in doc["packages"].as_array().unwrap() {
        assert_eq!(p["status"], "built", "{p}");
    }
    // The target's code, not the host's.
    // (Objects are in the overlay up to 6.12, in its output directory since.)
    let objs = ["tree", "out"].map(|o| d.join("CONFIG_DUMMY").join(o));
    let objs = objs
        .iter()
        .find(|o| o.join("drivers/net/dummy.ko").exists());
    let (machine, class) = elf_machine(&objs.unwrap().join("drivers/net/dummy.ko"));
    assert_eq!(machine, target.elf_machine());
    assert_eq!(class, if target == Target::Armhf { 1 } else { 2 });

    // Byte for byte what the in-tree cross `make modules_install` installed (nlmon aside: the
    // base kernel does not have it; it came through a configuration variant).
    let release = tk.release();
    let modlib = format!("lib/modules/{release}");
    let mut ours = files_of(&root.join(&modlib));
    let nlmon = ours
        .remove("kernel/drivers/net/nlmon.ko.xz")
        .expect("nlmon installed");
    assert!(nlmon.len() > 1000);
    let mut theirs = files_of(&tk.dir.join("install").join(&modlib));
    theirs.remove("build");
    for f in theirs.keys().filter(|f| f.ends_with(".ko.xz")) {
        assert!(
            ours.get(f) == theirs.get(f),
            "{}: {modlib}/{f} differs from the in-tree build",
            target.name()
        );
    }
    let kos = |m: &std::collections::BTreeMap<String, Vec<u8>>| {
        m.keys()
            .filter(|f| f.ends_with(".ko.xz"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(kos(&ours), kos(&theirs));
    // modules.order and depmod's files too, apart from nlmon's line.
    for f in [
        "modules.order",
        "modules.dep",
        "modules.alias",
        "modules.symbols",
    ] {
        let strip = |m: &std::collections::BTreeMap<String, Vec<u8>>| {
            String::from_utf8_lossy(&m[f])
                .lines()
                .filter(|l| !l.contains("nlmon"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&ours), strip(&theirs), "{}: {f}", target.name());
    }
    // Each package's Module.symvers: the in-tree build's lines for its modules, with their
    // in-tree module names (since 6.13 Kbuild names them relative to M).
    let base_symvers = std::fs::read_to_string(tk.obj.join("Module.symvers")).unwrap();
    let mut exports = 0;
    for p in doc["packages"].as_array().unwrap() {
        let pkg = p["name"].as_str().unwrap();
        if pkg == "CONFIG_NLMON" {
            continue;
        }
        let ours = std::fs::read_to_string(out.join(pkg).join("Module.symvers")).unwrap();
        for l in ours.lines() {
            assert!(base_symvers.lines().any(|b| b == l), "{pkg}: {l}");
            exports += 1;
        }
    }
    assert!(exports >= 5, "{exports} exported symbols");

    // audit of the example package set: no error-level finding.
    let o = extmod()
        .args(["audit", "--json", "-K"])
        .arg(&k)
        .arg("-S")
        .arg(&tk.src)
        .arg("--packages")
        .arg(common::repo().join("examples/packages.toml"))
        .output()
        .unwrap();
    let audit = json_of(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{audit}");

    // The OpenWrt example through Makefile.shim: the same outcome as on x86_64 (one package
    // refused because its KCONFIG changes the kernel), install trees of the target's modules.
    let ipkg = t.join("ipkg");
    let o = std::process::Command::new("make")
        .args(["-k", "-j2", "-C"])
        .arg(common::repo().join("examples/openwrt"))
        .arg(format!("KBUILD={}", k.display()))
        .arg(format!("LINUX_DIR={}", tk.src.display()))
        .arg(format!("OUT={}", ipkg.display()))
        .arg(format!("WORK={}", t.join("owrt").display()))
        .arg(format!("EXTMOD={}", env!("CARGO_BIN_EXE_extmod")))
        .arg("packages")
        .env_remove("MAKEFLAGS")
        .env_remove("MAKELEVEL")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR:")).collect();
    assert!(
        errors.len() == 1 && errors[0].starts_with("ERROR: kmod-random-timeriomem:"),
        "{stderr}"
    );
    let shipped: Vec<_> = files_of(&ipkg)
        .into_keys()
        .filter(|f| f.ends_with(".ko"))
        .collect();
    assert!(shipped.len() >= 10, "{shipped:?}");
    for f in &shipped {
        assert_eq!(elf_machine(&ipkg.join(f)).0, target.elf_machine(), "{f}");
    }

    // The real kernel loads them all through the modules.dep extmod wrote, untainted.
    // Every module of the kernel's modules.order, and nlmon.
    let mut names: Vec<String> = String::from_utf8_lossy(&theirs["modules.order"])
        .lines()
        .filter_map(|l| Path::new(l).file_name()?.to_str()?.strip_suffix(".ko"))
        .map(|n| n.replace('-', "_"))
        .collect();
    names.push("nlmon".into());
    let image = Initramfs::for_target(target)
        .release(&release)
        .tree(&root.join("lib"), "/lib")
        .script(&format!(
            "for m in {}; do modprobe $m; done\n\
             lsmod\n\
             ip link add nlmon0 type nlmon\n\
             test -e /sys/class/net/nlmon0\n\
             test -e /sys/class/net/dummy0\n\
             test -e /sys/block/zram0\n\
             echo TAINTED=$(cat /proc/sys/kernel/tainted)\n",
            names.join(" ")
        ));
    let initrd = image.build(&t.join("boot"));
    let r = boot_target(target, &tk.bzimage(), &initrd, Duration::from_secs(300));
    r.assert_ok();
    let text = r.script_output();
    assert!(names.len() >= 13, "{names:?}");
    for m in &names {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(m.as_str())),
            "{}: {m} not loaded:\n{}",
            target.name(),
            r.output
        );
    }
    assert!(
        text.lines().any(|l| l.trim() == "TAINTED=0"),
        "{}: kernel tainted:\n{}",
        target.name(),
        r.output
    );

    // Without the cross compiler on PATH the Kbuild tree cannot be used, and extmod says which
    // compiler it needs.
    let bin = t.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(which::which("make").unwrap(), bin.join("make")).unwrap();
    let o = build_dummy(&k, &tk.src, t, 2)
        .env("PATH", &bin)
        .assert()
        .code(17)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("`{}gcc` not found", target.cross_compile())),
        "{err}"
    );
    assert!(!t.join("out2").exists());

    // The object tree itself as K (no manifest): ARCH comes from its configuration, and a
    // compiler for another architecture (the host's gcc, or the other ARM's cross compiler:
    // a 32-bit tree with a 64-bit compiler and the reverse) is refused before anything runs.
    let others: &[&str] = match target {
        Target::X86_64 => &["aarch64-linux-gnu-", "arm-linux-gnueabihf-"],
        Target::Arm64 => &["", "arm-linux-gnueabihf-"],
        Target::Armhf => &["", "aarch64-linux-gnu-"],
    };
    for cross in others {
        let o = build_dummy(&tk.obj, &tk.src, t, 3)
            .env("CROSS_COMPILE", cross)
            .assert()
            .code(41)
            .get_output()
            .clone();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("is for ARCH={}", target.srcarch())) && err.contains("hint:"),
            "{cross}: {err}"
        );
        assert!(!t.join("out3").exists() && !t.join("objs3").exists());
    }

    assert_eq!(
        fingerprint(&tk.src),
        src_before,
        "the source tree was modified"
    );
}

#[test]
fn arm64_pipeline_matches_in_tree_and_loads() {
    if Target::Arm64.available() {
        pipeline(cross_kernel(Target::Arm64));
    }
}

#[test]
fn armhf_pipeline_matches_in_tree_and_loads() {
    if Target::Armhf.available() {
        pipeline(cross_kernel(Target::Armhf));
    }
}

/// Debian 12's LTS kernel series: the same pipeline, with 6.1's Kbuild (its Makefile.modinst,
/// modpost and Kconfig).
#[test]
fn linux_6_1_pipeline_matches_in_tree_and_loads() {
    if !std::path::Path::new("/usr/src/linux-source-6.1.tar.xz").exists() {
        eprintln!("SKIP: /usr/src/linux-source-6.1.tar.xz missing (scripts/deps installs it)");
        return;
    }
    pipeline(common::kernel(Target::X86_64, "6.1"));
}

/// Kbuild since 6.13 (external builds in an output directory, names relative to M): Debian's
/// 7.3 from trixie-backports, the same pipeline, and the names Kbuild gives: Module.symvers and
/// modules.order above, and here the `__FILE__` strings, which `-fmacro-prefix-map=$(srcroot)/=`
/// makes relative to M.
#[test]
fn linux_7_3_pipeline_matches_in_tree_and_loads() {
    let tk = common::kernel(Target::X86_64, "7.3");
    pipeline(tk);
    let tmp = common::tempdir("extmod-7.3-file-");
    let t = tmp.path();
    extmod()
        .arg("build")
        .arg("-K")
        .arg(&tk.obj)
        .arg("-S")
        .arg(&tk.src)
        .arg("-D")
        .arg(t.join("objs"))
        .arg("-O")
        .arg(t.join("out"))
        .args(["--raw", "CONFIG_KUNIT"])
        .assert()
        .code(0);
    let ko = t.join("objs/CONFIG_KUNIT/out/lib/kunit/kunit.ko");
    let ours = std::fs::read(&ko).unwrap();
    let theirs = std::fs::read(tk.obj.join("lib/kunit/kunit.ko")).unwrap();
    assert!(ours == theirs, "kunit.ko differs from the in-tree one");
    let has = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        has(&ours, "\0lib/kunit/resource.c\0"),
        "__FILE__ is not the in-tree one"
    );
    assert!(
        !has(&ours, &t.to_string_lossy()),
        "an objdir path leaked into kunit.ko"
    );
}
