//! The OpenWrt integration on the real test kernel: examples/openwrt/ (KernelPackage definitions
//! in the layout of OpenWrt's package/kernel/linux, evaluated through Makefile.shim) run with make,
//! and every install tree checked file by file against what OpenWrt's KernelPackage makes for the
//! same definitions; then the shim's own corner cases with a recipe of the test's.

mod common;

use common::{fingerprint, repo, test_kernel};
use kbuild_install::elf;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const EXTMOD: &str = env!("CARGO_BIN_EXE_extmod");

/// A temporary directory on the target dir's filesystem, with a Kbuild tree of the test kernel
/// made by `extmod kbuild-install` in `kbuild/`.
fn workspace(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let tk = test_kernel();
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let kb = tmp.path().join("kbuild");
    let o = Command::new(EXTMOD)
        .args(["kbuild-install", "--no-verify", "--srctree"])
        .arg(&tk.src)
        .arg("--objtree")
        .arg(&tk.obj)
        .arg(&kb)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (tmp, kb)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `make -k -jN <args>` with a clean make environment (no inherited jobserver).
fn make(args: &[String]) -> Run {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let start = Instant::now();
    let o = Command::new("make")
        .arg("-k")
        .arg(format!("-j{jobs}"))
        .args(args)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let run = Run {
        code: o.status.code().expect("make was not killed"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    eprintln!(
        "make {} -> {} in {:.1}s",
        args.join(" "),
        run.code,
        start.elapsed().as_secs_f64()
    );
    run
}

/// Every file (`path`), symlink (`path -> target`) and empty directory (`path/`) below `root`.
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        let rel = |p: &Path| p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
        if entries.is_empty() && dir != root {
            out.push(format!("{}/", rel(dir)));
        }
        for p in entries {
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.push(format!("{} -> {}", rel(&p), target.display()));
            } else if meta.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(rel(&p));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn sha256(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", Sha256::digest(&data))
}

fn modinfo(ko: &Path, key: &str) -> String {
    let data = std::fs::read(ko).unwrap();
    elf::modinfo_of(&data)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{} has no {key}", ko.display()))
        .1
}

/// Whether the module references (or defines) `name`.
fn has_symbol(ko: &Path, name: &str) -> bool {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(ko).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.symbols().any(|s| s.name() == Ok(name))
}

/// What identifies the built kernel: its configuration, exported symbols with their CRCs, and
/// release, in the test kernel's object tree and in the Kbuild tree.
fn kernel_identity(kb: &Path) -> Vec<(String, String)> {
    let obj = &test_kernel().obj;
    let mut files: Vec<PathBuf> = [
        ".config",
        "Module.symvers",
        "include/config/kernel.release",
        "include/generated/utsrelease.h",
        "include/generated/autoconf.h",
    ]
    .iter()
    .map(|f| obj.join(f))
    .collect();
    files.extend(
        [
            ".config",
            "Module.symvers",
            "include/config/kernel.release",
            "include/generated/autoconf.h",
        ]
        .iter()
        .map(|f| kb.join(f)),
    );
    files
        .iter()
        .map(|f| (f.display().to_string(), sha256(f)))
        .collect()
}

/// The install trees OpenWrt's KernelPackage makes for examples/openwrt/modules/*.mk on the test
/// kernel: FILES flat in lib/modules/<release>/, /etc/modules.d/<prio>-<name> (no prefix for
/// AutoProbe), boot-time ones linked from /etc/modules-boot.d/, built-in FILES left out, and an
/// empty tree for the package whose symbol cannot be enabled. kmod-random-timeriomem is refused.
fn expected_trees(release: &str) -> Vec<String> {
    let lines = [
        "kmod-crypto-crc32c/etc/modules-boot.d/04-crypto-crc32c -> ../modules.d/04-crypto-crc32c",
        "kmod-crypto-crc32c/etc/modules.d/04-crypto-crc32c",
        "kmod-crypto-crc32c/lib/modules/R/crc32c_generic.ko",
        "kmod-crypto-hash/etc/modules-boot.d/02-crypto-hash -> ../modules.d/02-crypto-hash",
        "kmod-crypto-hash/etc/modules.d/02-crypto-hash",
        "kmod-dummy/etc/modules.d/34-dummy",
        "kmod-dummy/lib/modules/R/dummy.ko",
        "kmod-fs-squashfs/etc/modules-boot.d/30-fs-squashfs -> ../modules.d/30-fs-squashfs",
        "kmod-fs-squashfs/etc/modules.d/30-fs-squashfs",
        "kmod-fs-squashfs/lib/modules/R/squashfs.ko",
        "kmod-lib-crc7/etc/modules.d/lib-crc7",
        "kmod-lib-crc7/lib/modules/R/crc7.ko",
        "kmod-lib-lzo/etc/modules.d/lib-lzo",
        "kmod-lib-lzo/lib/modules/R/lzo_compress.ko",
        "kmod-lib-zlib-inflate/etc/modules.d/lib-zlib-inflate",
        "kmod-loop/etc/modules-boot.d/30-loop -> ../modules.d/30-loop",
        "kmod-loop/etc/modules.d/30-loop",
        "kmod-loop/lib/modules/R/loop.ko",
        "kmod-nlmon/etc/modules.d/nlmon",
        "kmod-nlmon/lib/modules/R/nlmon.ko",
        "kmod-nls-base/lib/modules/R/nls_base.ko",
        "kmod-nls-utf8/etc/modules.d/25-nls-utf8",
        "kmod-nls-utf8/lib/modules/R/nls_utf8.ko",
        "kmod-usb-net-cdc-ether/",
        "kmod-veth/etc/modules.d/30-veth",
        "kmod-veth/lib/modules/R/veth.ko",
        "kmod-zram/etc/modules.d/20-zram",
        "kmod-zram/lib/modules/R/zram.ko",
        "kmod-zram/lib/modules/R/zsmalloc.ko",
    ];
    let mut v: Vec<String> = lines
        .iter()
        .map(|l| l.replace("/lib/modules/R/", &format!("/lib/modules/{release}/")))
        .collect();
    v.sort();
    v
}

/// /etc/modules.d contents: AUTOLOAD modules sorted, MODPARAMS.<module> appended.
const AUTOLOAD: &[(&str, &str)] = &[
    (
        "kmod-crypto-crc32c/etc/modules.d/04-crypto-crc32c",
        "crc32c_generic\n",
    ),
    (
        "kmod-crypto-hash/etc/modules.d/02-crypto-hash",
        "crypto_hash\n",
    ),
    ("kmod-dummy/etc/modules.d/34-dummy", "dummy numdummies=0\n"),
    (
        "kmod-fs-squashfs/etc/modules.d/30-fs-squashfs",
        "squashfs\n",
    ),
    ("kmod-lib-crc7/etc/modules.d/lib-crc7", "crc7\n"),
    (
        "kmod-lib-lzo/etc/modules.d/lib-lzo",
        "lzo_compress\nlzo_decompress\n",
    ),
    (
        "kmod-lib-zlib-inflate/etc/modules.d/lib-zlib-inflate",
        "zlib_inflate\n",
    ),
    ("kmod-loop/etc/modules.d/30-loop", "loop\n"),
    ("kmod-nlmon/etc/modules.d/nlmon", "nlmon\n"),
    ("kmod-nls-utf8/etc/modules.d/25-nls-utf8", "nls_utf8\n"),
    ("kmod-veth/etc/modules.d/30-veth", "veth\n"),
    ("kmod-zram/etc/modules.d/20-zram", "zram\nzsmalloc\n"),
];

/// make's own `make: *** [...] Error N` lines (not those of the makes extmod runs).
fn make_failures(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("make: *** [") && l.contains("] Error "))
        .collect()
}

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn example_recipe_builds_openwrt_install_trees_without_touching_the_kernel() {
    let started = Instant::now();
    let tk = test_kernel();
    let release = tk.release();
    let (tmp, kb) = workspace("extmod-openwrt-");
    let (out, work) = (tmp.path().join("ipkg"), tmp.path().join("work"));
    let identity_before = kernel_identity(&kb);
    let kb_before = fingerprint(&kb);

    let src = tk.src.to_str().unwrap();
    let args = |out: &Path| -> Vec<String> {
        vec![
            "-C".into(),
            repo().join("examples/openwrt").display().to_string(),
            format!("KBUILD={}", kb.display()),
            format!("LINUX_DIR={src}"),
            format!("OUT={}", out.display()),
            format!("WORK={}", work.display()),
            format!("EXTMOD={EXTMOD}"),
            "packages".into(),
        ]
    };
    let run = make(&args(&out));

    // One package is refused, loudly and with the symbol named; make -k builds all the others.
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let errors = lines_with(&run.stderr, "ERROR:");
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].starts_with(
            "ERROR: kmod-random-timeriomem: its KCONFIG changes the kernel itself, extmod refused it (exit 28): "
        ) && errors[0].contains("CONFIG_HW_RANDOM n -> y"),
        "{}",
        errors[0]
    );
    let failed = make_failures(&run.stderr);
    assert_eq!(failed.len(), 1, "{}", run.stderr);
    assert!(
        failed[0].contains("extmod-build/kmod-random-timeriomem]"),
        "{}",
        failed[0]
    );

    // OpenWrt's empty-package warning for the package whose symbol cannot be enabled.
    assert_eq!(
        lines_with(&run.stderr, "WARNING:"),
        [
            "WARNING: kmod-usb-net-cdc-ether is not available in the kernel config - generating empty package"
        ],
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("CONFIG_USB not set"), "{}", run.stderr);

    // Built-in FILES get OpenWrt's NOTICE, with the path as FILES spells it.
    assert_eq!(
        lines_with(&run.stdout, "NOTICE:"),
        [
            // CONFIG_MODULE_SIG selects the crypto API into the kernel.
            format!("NOTICE: module '{src}/crypto/crypto_hash.ko' is built-in."),
            format!("NOTICE: module '{src}/lib/lzo/lzo_decompress.ko' is built-in."),
            format!("NOTICE: module '{src}/lib/zlib_inflate/zlib_inflate.ko' is built-in."),
        ],
        "{}",
        run.stdout
    );

    // The install trees, file by file.
    let trees = listing(&out);
    assert_eq!(trees, expected_trees(&release), "{trees:#?}");
    let autoload: BTreeMap<String, String> = trees
        .iter()
        .filter(|p| p.contains("/etc/modules.d/"))
        .map(|p| (p.clone(), std::fs::read_to_string(out.join(p)).unwrap()))
        .collect();
    let want: BTreeMap<String, String> = AUTOLOAD
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
    assert_eq!(autoload, want);

    // The modules are extmod's (copies of what it staged, not links into it), and match the
    // running kernel's vermagic.
    let vermagic = modinfo(&tk.obj.join("drivers/net/dummy.ko"), "vermagic");
    let mut modules = 0;
    for p in trees.iter().filter(|p| p.ends_with(".ko")) {
        let ko = out.join(p);
        let package = p.split('/').next().unwrap();
        let file = ko.file_name().unwrap();
        let staged: Vec<PathBuf> = walk_files(&work.join("stage").join(package))
            .into_iter()
            .filter(|f| f.file_name() == Some(file))
            .collect();
        assert_eq!(staged.len(), 1, "{p}: staged as {staged:?}");
        assert_eq!(sha256(&ko), sha256(&staged[0]), "{p}");
        assert_eq!(std::fs::metadata(&ko).unwrap().nlink(), 1, "{p} is a link");
        assert_eq!(modinfo(&ko, "vermagic"), vermagic, "{p}");
        let stem = file
            .to_str()
            .unwrap()
            .trim_end_matches(".ko")
            .replace('-', "_");
        assert_eq!(modinfo(&ko, "name"), stem, "{p}");
        modules += 1;
    }
    assert_eq!(modules, 12);

    // The variant-built modules: squashfs with CONFIG_SQUASHFS_XZ (calls the XZ decoder, the
    // kernel's own squashfs.ko does not), nlmon with CONFIG_NLMON, which the kernel lacks.
    let release_dir = |p: &str| out.join(p).join("lib/modules").join(&release);
    assert!(has_symbol(
        &release_dir("kmod-fs-squashfs").join("squashfs.ko"),
        "xz_dec_run"
    ));
    assert!(!has_symbol(
        &tk.obj.join("fs/squashfs/squashfs.ko"),
        "xz_dec_run"
    ));
    assert!(!tk.obj.join("drivers/net/nlmon.ko").exists());

    // A second run with everything in place runs no make in any package and makes the same
    // trees.
    let logs = |work: &Path| -> Vec<(PathBuf, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(work.join("objs"))
            .unwrap()
            .map(|e| e.unwrap().path().join("build.log"))
            .filter(|l| l.is_file())
            .map(|l| {
                let t = std::fs::metadata(&l).unwrap().modified().unwrap();
                (l, t)
            })
            .collect();
        v.sort();
        v
    };
    let logs_before = logs(&work);
    assert_eq!(logs_before.len(), 11, "{logs_before:?}");
    let out2 = tmp.path().join("ipkg2");
    let again = make(&args(&out2));
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert_eq!(logs(&work), logs_before, "{}", again.stderr);
    assert_eq!(fingerprint(&out2), fingerprint(&out));

    // The kernel is untouched: configuration, Module.symvers (CRCs), release, and the whole
    // Kbuild tree; none of the packages' KCONFIG reached the kernel's .config.
    assert_eq!(kernel_identity(&kb), identity_before);
    assert_eq!(fingerprint(&kb), kb_before, "the Kbuild tree was modified");
    let config = std::fs::read_to_string(kb.join(".config")).unwrap();
    for sym in ["CONFIG_HW_RANDOM", "CONFIG_NLMON", "CONFIG_SQUASHFS_XZ"] {
        assert!(
            config.contains(&format!("# {sym} is not set")),
            "{sym} in .config"
        );
    }
    eprintln!("openwrt example: {:.1}s", started.elapsed().as_secs_f64());
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The shim's corner cases, with a recipe of the test's own: a FILES entry no Makefile builds,
/// FILES built in according to .config when there is no modules.builtin, an out-of-tree FILES
/// entry, package-wide MODPARAMS, AutoProbe with the boot flag, and a custom install section.
#[test]
fn shim_reports_missing_and_built_in_files_like_kernelpackage() {
    let tk = test_kernel();
    let release = tk.release();
    let (tmp, kb) = workspace("extmod-openwrt-shim-");
    let (out, work) = (tmp.path().join("ipkg"), tmp.path().join("work"));
    let extra = tmp.path().join("prebuilt/extra.ko");
    std::fs::create_dir_all(extra.parent().unwrap()).unwrap();
    std::fs::write(&extra, b"not really a module\n").unwrap();
    let recipe = tmp.path().join("Makefile");
    std::fs::write(
        &recipe,
        format!(
            r#"EXTMOD_KBUILD := {kb}
LINUX_DIR := {src}
EXTMOD_DIR := {work}
EXTMOD_INSTALL_DIR := {out}
include {shim}

define KernelPackage/fixture-missing
  KCONFIG:=CONFIG_VETH
  FILES:=$(LINUX_DIR)/drivers/net/veth.ko $(LINUX_DIR)/drivers/net/no-such-driver.ko
  AUTOLOAD:=$(call AutoLoad,30,veth)
endef
$(eval $(call ExtmodKernelPackage,fixture-missing))

define KernelPackage/fixture-builtin
  KCONFIG:=CONFIG_CRC32 CONFIG_ZLIB_INFLATE
  FILES:=$(LINUX_DIR)/lib/crc32.ko $(LINUX_DIR)/lib/zlib_inflate/zlib_inflate.ko {extra}
  AUTOLOAD:=$(call AutoProbe,zlib_inflate crc32 extra,1)
  MODPARAMS:=debug=1
  MODPARAMS.extra:=mode=2
endef
define KernelPackage/fixture-builtin/install
	mkdir -p $(1)/etc/config
	echo fixture >$(1)/etc/config/fixture
endef
$(eval $(call ExtmodKernelPackage,fixture-builtin))

all: $(EXTMOD_TARGETS)
"#,
            kb = kb.display(),
            src = tk.src.display(),
            work = work.display(),
            out = out.display(),
            shim = repo().join("Makefile.shim").display(),
            extra = extra.display(),
        ),
    )
    .unwrap();
    let run = make(&[
        "-f".into(),
        recipe.display().to_string(),
        format!("EXTMOD={EXTMOD}"),
        // No modules.builtin: built-in is decided from .config and the kernel's Makefiles.
        "EXTMOD_MODULES_BUILTIN=/dev/null".into(),
        "all".into(),
    ]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let src = tk.src.display();
    assert_eq!(
        lines_with(&run.stderr, "ERROR: module"),
        [format!(
            "ERROR: module '{src}/drivers/net/no-such-driver.ko' is missing."
        )],
        "{}",
        run.stderr
    );
    let failed = make_failures(&run.stderr);
    assert_eq!(failed.len(), 1, "{}", run.stderr);
    assert!(
        failed[0].contains("extmod-build/kmod-fixture-missing]"),
        "{}",
        failed[0]
    );
    assert_eq!(
        lines_with(&run.stdout, "NOTICE:"),
        [
            format!("NOTICE: module '{src}/lib/crc32.ko' is built-in."),
            format!("NOTICE: module '{src}/lib/zlib_inflate/zlib_inflate.ko' is built-in."),
        ],
        "{}",
        run.stdout
    );
    assert_eq!(
        listing(&out),
        [
            "kmod-fixture-builtin/etc/config/fixture".to_string(),
            "kmod-fixture-builtin/etc/modules-boot.d/fixture-builtin -> ../modules.d/fixture-builtin"
                .to_string(),
            "kmod-fixture-builtin/etc/modules.d/fixture-builtin".to_string(),
            format!("kmod-fixture-builtin/lib/modules/{release}/extra.ko"),
        ]
    );
    let base = out.join("kmod-fixture-builtin");
    assert_eq!(
        std::fs::read_to_string(base.join("etc/modules.d/fixture-builtin")).unwrap(),
        "crc32 debug=1\nextra mode=2\nzlib_inflate debug=1\n"
    );
    assert_eq!(
        std::fs::read(base.join("lib/modules").join(&release).join("extra.ko")).unwrap(),
        b"not really a module\n"
    );
    assert_eq!(
        std::fs::read_to_string(base.join("etc/config/fixture")).unwrap(),
        "fixture\n"
    );
}
