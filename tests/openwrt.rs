//! The OpenWrt integration on the real test kernel: examples/openwrt/ (KernelPackage definitions
//! in the layout of OpenWrt's package/kernel/linux, evaluated through Makefile.shim) run with make,
//! and every install tree checked file by file against what OpenWrt's KernelPackage makes for the
//! same definitions; then the shim's own corner cases with a recipe of the test's; then
//! OpenWrt's real definitions (`../shared/data`, skipped without it): read for x86/64, and, as
//! ignored tests, built on three targets (Debian's 6.12 headers, a router-sized x86_64 Kbuild
//! tree, the arm64 test kernel) and compared with OpenWrt's own install step.

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
/// AutoProbe), boot-time ones linked from /etc/modules-boot.d/, built-in FILES left out (the test
/// kernel has crypto_hash, lzo_decompress and zlib_inflate built in), and an empty tree for the
/// package whose symbol cannot be enabled. kmod-random-timeriomem is refused.
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

    // Built-in FILES get OpenWrt's NOTICE, with the path as FILES spells it: LINUX_DIR is the
    // shim's view of the kernel build.
    let view = work.join("linux");
    let view = view.display();
    // Packages install in parallel: their NOTICE lines come in any order.
    let mut notices = lines_with(&run.stdout, "NOTICE:");
    notices.sort();
    assert_eq!(
        notices,
        [
            // CONFIG_MODULE_SIG selects the crypto API into the kernel.
            format!("NOTICE: module '{view}/crypto/crypto_hash.ko' is built-in."),
            format!("NOTICE: module '{view}/lib/lzo/lzo_decompress.ko' is built-in."),
            format!("NOTICE: module '{view}/lib/zlib_inflate/zlib_inflate.ko' is built-in."),
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
/// entry, package-wide MODPARAMS, AutoProbe with the boot flag, a custom install section;
/// OpenWrt's semantics: `@lt`/`@ge` on KCONFIG, symbols this kernel lacks (ignored with a note; a
/// package whose symbols are all unknown is empty), a package without KCONFIG, DEPENDS `@`
/// conditions and `+COND:` dependencies evaluated for the target, `KernelPackage/<name>/$(BOARD)`
/// sections; every ERROR names the package or module and says why.
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
ARCH := x86_64
BOARD := x86
SUBTARGET := 64
include {shim}

define KernelPackage/fixture-missing
  KCONFIG:=CONFIG_VETH
  FILES:=$(LINUX_DIR)/drivers/net/veth.ko $(LINUX_DIR)/drivers/net/no-such-driver.ko
  AUTOLOAD:=$(call AutoLoad,30,veth)
endef
$(eval $(call ExtmodKernelPackage,fixture-missing))

define KernelPackage/fixture-after-missing
  KCONFIG:=CONFIG_DUMMY
  FILES:=$(LINUX_DIR)/drivers/net/dummy.ko
  DEPENDS:=+kmod-fixture-missing
endef
$(eval $(call ExtmodKernelPackage,fixture-after-missing))

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

define KernelPackage/fixture-version
  KCONFIG:=CONFIG_DUMMY CONFIG_DUMMY=n@ge6.18 CONFIG_EXTMOD_GONE@lt6.0
  FILES:=$(LINUX_DIR)/drivers/net/dummy.ko
  DEPENDS:=@TARGET_x86_64||TARGET_armsr +TARGET_x86:kmod-fixture-files-only +TARGET_imx:kmod-fixture-imx
endef
$(eval $(call ExtmodKernelPackage,fixture-version))

define KernelPackage/fixture-unknown
  KCONFIG:=CONFIG_EXTMOD_NO_SUCH_SYMBOL
  FILES:=$(LINUX_DIR)/drivers/net/extmod-no-such.ko
  AUTOLOAD:=$(call AutoProbe,extmod-no-such)
endef
$(eval $(call ExtmodKernelPackage,fixture-unknown))

define KernelPackage/fixture-partly
  KCONFIG:=CONFIG_VETH CONFIG_EXTMOD_NO_SUCH_SYMBOL
  FILES:=$(LINUX_DIR)/drivers/net/veth.ko
endef
$(eval $(call ExtmodKernelPackage,fixture-partly))

define KernelPackage/fixture-files-only
  FILES:=$(LINUX_DIR)/drivers/net/dummy.ko
endef
$(eval $(call ExtmodKernelPackage,fixture-files-only))

define KernelPackage/fixture-board
  KCONFIG:=CONFIG_DUMMY
  FILES:=$(LINUX_DIR)/drivers/net/dummy.ko
endef
define KernelPackage/fixture-board/x86
  KCONFIG+=CONFIG_VETH
  FILES+=$(LINUX_DIR)/drivers/net/veth.ko
endef
$(eval $(call ExtmodKernelPackage,fixture-board))

define KernelPackage/fixture-imx
  KCONFIG:=CONFIG_DUMMY
  FILES:=$(LINUX_DIR)/drivers/net/dummy.ko
  DEPENDS:=@(TARGET_imx&&!TARGET_x86) +kmod-fixture-files-only
endef
$(eval $(call ExtmodKernelPackage,fixture-imx))

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
    // Every ERROR says which package and why; a package whose dependency was refused names it
    // and its reason.
    for l in lines_with(&run.stderr, "ERROR:") {
        assert!(
            l.starts_with("ERROR: module '")
                || (l.starts_with("ERROR: kmod-fixture-missing: extmod refused it (exit 21): ")
                    && l.contains("no-such-driver.o"))
                || (l.starts_with("ERROR: kmod-fixture-after-missing: not built: dependency `kmod-fixture-missing` was not built (kmod-fixture-missing: no Makefile in drivers/net/ builds no-such-driver.o")),
            "{l}"
        );
    }
    let failed = make_failures(&run.stderr);
    assert_eq!(failed.len(), 2, "{}", run.stderr);
    assert!(
        failed[0].contains("extmod-build/kmod-fixture-")
            && failed[1].contains("extmod-build/kmod-fixture-"),
        "{failed:?}"
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
    // All of the package's symbols unknown: OpenWrt's empty package, with the reason.
    assert_eq!(
        lines_with(&run.stderr, "WARNING:"),
        [
            "WARNING: kmod-fixture-unknown is not available in the kernel config - generating empty package"
        ],
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "(none of its kconfig symbols is a Kconfig symbol of this kernel (6.12.118): CONFIG_EXTMOD_NO_SUCH_SYMBOL)"
        ),
        "{}",
        run.stderr
    );
    // A symbol this kernel lacks beside one it has: a note, and the package is built.
    assert!(
        run.stderr.contains(
            "NOTE: kmod-fixture-partly: CONFIG_EXTMOD_NO_SUCH_SYMBOL ignored: not a Kconfig symbol of this kernel"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(
        listing(&out),
        [
            format!("kmod-fixture-board/lib/modules/{release}/dummy.ko"),
            format!("kmod-fixture-board/lib/modules/{release}/veth.ko"),
            "kmod-fixture-builtin/etc/config/fixture".to_string(),
            "kmod-fixture-builtin/etc/modules-boot.d/fixture-builtin -> ../modules.d/fixture-builtin"
                .to_string(),
            "kmod-fixture-builtin/etc/modules.d/fixture-builtin".to_string(),
            format!("kmod-fixture-builtin/lib/modules/{release}/extra.ko"),
            format!("kmod-fixture-files-only/lib/modules/{release}/dummy.ko"),
            format!("kmod-fixture-partly/lib/modules/{release}/veth.ko"),
            "kmod-fixture-unknown/".to_string(),
            format!("kmod-fixture-version/lib/modules/{release}/dummy.ko"),
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
    // The package file extmod got: KCONFIG version-filtered, `+TARGET_x86:` taken, `+TARGET_imx:`
    // not; the package that cannot be selected for x86/64 is not in it.
    let toml = std::fs::read_to_string(work.join("packages.toml")).unwrap();
    let entry = toml
        .split("[[package]]")
        .find(|e| e.contains("\"kmod-fixture-version\""))
        .unwrap();
    assert!(entry.contains("kconfig = [\"CONFIG_DUMMY\"]"), "{entry}");
    assert!(
        entry.contains("depends = [\"kmod-fixture-files-only\"]"),
        "{entry}"
    );
    assert!(!toml.contains("kmod-fixture-imx"), "{toml}");
    assert!(!toml.contains('@'), "{toml}");
    let outcome = |p: &str| std::fs::read_to_string(work.join("outcome").join(p)).unwrap();
    assert!(outcome("kmod-fixture-unknown").starts_with("empty none of its kconfig symbols"));
    assert_eq!(outcome("kmod-fixture-files-only"), "built\n");
    assert!(outcome("kmod-fixture-missing").starts_with("missing no Makefile in drivers/net/"));

    // Asked for by name, the package that cannot be selected says why.
    let imx = make(&[
        "-f".into(),
        recipe.display().to_string(),
        format!("EXTMOD={EXTMOD}"),
        "EXTMOD_MODULES_BUILTIN=/dev/null".into(),
        "extmod/kmod-fixture-imx".into(),
    ]);
    assert_eq!(imx.code, 2, "{}", imx.stderr);
    assert_eq!(
        lines_with(&imx.stderr, "ERROR:"),
        [
            "ERROR: kmod-fixture-imx cannot be selected for x86/64: DEPENDS @(TARGET_imx&&!TARGET_x86) is false for x86/64 (Linux 6.12)"
        ],
        "{}",
        imx.stderr
    );
}

/// OpenWrt's own files (`../shared/data/openwrt-main-*` beside the repository, or
/// `EXTMOD_OPENWRT_TREE`), or `None` with the reason printed.
fn openwrt_tree() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EXTMOD_OPENWRT_TREE") {
        return Some(PathBuf::from(p));
    }
    let data = repo().join("../shared/data");
    let found = std::fs::read_dir(&data).ok().and_then(|rd| {
        rd.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("openwrt-main-"))
                && p.join("include/kernel.mk").is_file()
        })
    });
    if found.is_none() {
        eprintln!(
            "SKIP: no OpenWrt tree in {} (set EXTMOD_OPENWRT_TREE)",
            data.display()
        );
    }
    found
}

/// An OpenWrt target for the real definitions: a Kbuild tree (Debian's headers package, or one
/// `extmod kbuild-install` made of a test kernel), its kernel's modules.order and
/// modules.builtin, and the kernel source.
struct OpenwrtTarget {
    headers: PathBuf,
    modules: PathBuf,
    srctree: PathBuf,
}

fn debian_target() -> Option<OpenwrtTarget> {
    let headers = common::debian_headers()?;
    let release = std::fs::read_to_string(headers.join("include/config/kernel.release")).ok()?;
    let modules = Path::new("/lib/modules").join(release.trim());
    if !modules.join("modules.order").is_file() {
        eprintln!(
            "SKIP: no {}/modules.order (Debian's linux-image package)",
            modules.display()
        );
        return None;
    }
    let srctree = std::env::var_os("EXTMOD_OPENWRT_SRCTREE")
        .map_or_else(|| test_kernel().src.clone(), PathBuf::from);
    Some(OpenwrtTarget {
        headers,
        modules,
        srctree,
    })
}

/// A test kernel as the target: the Kbuild tree `extmod kbuild-install` makes of it (which
/// holds the kernel's modules.order and modules.builtin), its source as the source tree.
fn kernel_target(tk: &common::TestKernel, name: &str) -> OpenwrtTarget {
    let kb = common::kbuild_of(tk, name);
    OpenwrtTarget {
        modules: kb.clone(),
        headers: kb,
        srctree: tk.src.clone(),
    }
}

/// The arguments of tests/openwrt-real/Makefile for a target (x86/64 or armsr/armv8, from the
/// Kbuild tree's configuration).
fn real_args(tree: &Path, deb: &OpenwrtTarget, mode: &str, work: &Path, out: &Path) -> Vec<String> {
    let mut args = vec![
        // OpenWrt's package directory: custom install sections copy ./files/...
        "-C".into(),
        tree.join("package/kernel/linux").display().to_string(),
        "-f".into(),
        repo()
            .join("tests/openwrt-real/Makefile")
            .display()
            .to_string(),
        format!("MODE={mode}"),
        format!("OPENWRT={}", tree.display()),
        format!("KBUILD={}", deb.headers.display()),
        format!("SRCTREE={}", deb.srctree.display()),
        format!("WORK={}", work.display()),
        format!("OUT={}", out.display()),
        format!(
            "MODULES_ORDER={}",
            deb.modules.join("modules.order").display()
        ),
        format!(
            "MODULES_BUILTIN={}",
            deb.modules.join("modules.builtin").display()
        ),
        format!("EXTMOD={EXTMOD}"),
    ];
    if let Some(nf) = std::env::var_os("EXTMOD_OPENWRT_NETFILTER_MK") {
        args.push(format!("NETFILTER_MK={}", Path::new(&nf).display()));
    }
    args
}

fn make_quiet(args: &[String]) -> String {
    let o = Command::new("make")
        .arg("-s")
        .args(args)
        .env_remove("MAKEFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "make {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// OpenWrt's real include/kernel.mk and every real modules/*.mk (but netfilter.mk, which needs
/// include/netfilter.mk), unmodified, read through Makefile.shim for x86/64 on Debian's 6.12:
/// what each package becomes, without building anything.
#[test]
fn openwrt_real_definitions_are_read_as_openwrt_reads_them() {
    let (Some(tree), Some(deb)) = (openwrt_tree(), debian_target()) else {
        return;
    };
    let tmp = common::tempdir("extmod-openwrt-real-");
    let (work, out) = (tmp.path().join("work"), tmp.path().join("out"));
    let args = real_args(&tree, &deb, "extmod", &work, &out);
    // One make run: the fields of the packages looked at, then the selection.
    let looked_at = [
        "kmod-crypto-md5",
        "kmod-fs-nfs-common",
        "kmod-ata-core",
        "kmod-crypto-lib-chacha20",
        "kmod-pppox",
        "kmod-ata-ahci-platform",
        "kmod-e1000",
        "kmod-i2c-algo-bit",
    ];
    let mut a = args.clone();
    a.extend(looked_at.iter().map(|p| format!("show-{p}")));
    a.push("list-selected".into());
    a.push("list-unselectable".into());
    let text = make_quiet(&a);
    let mut fields: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let (mut selected, mut unselectable) = (0, Vec::new());
    for l in text.lines() {
        if let Some((pkg, why)) = l.split_once('\t') {
            unselectable.push((pkg.to_string(), why.to_string()));
        } else if let Some((key, value)) = l.split_once(':')
            && let Some((pkg, field)) = key.split_once('.')
        {
            fields
                .entry(pkg.to_string())
                .or_default()
                .insert(field.to_string(), value.trim().to_string());
        } else {
            selected += 1;
        }
    }
    let show = |pkg: &str| fields[pkg].clone();
    let view = work.join("linux");
    let rel = |files: &str| -> Vec<String> {
        files
            .split_whitespace()
            .map(|f| {
                Path::new(f)
                    .strip_prefix(&view)
                    .unwrap_or_else(|_| panic!("{f} is not under {}", view.display()))
                    .display()
                    .to_string()
            })
            .collect()
    };

    // KCONFIG is version-filtered like FILES (`CONFIG_CRYPTO_MD5_OCTEON@lt6.18` is kept as the
    // symbol; `CONFIG_NFSD_V4_DELEG_TIMESTAMPS=n@ge6.18` is dropped on 6.12).
    let md5 = show("kmod-crypto-md5");
    assert!(!md5["kconfig"].contains('@'), "{md5:?}");
    assert!(
        md5["kconfig"].contains("CONFIG_CRYPTO_MD5_OCTEON"),
        "{md5:?}"
    );
    let nfs = show("kmod-fs-nfs-common");
    assert!(!nfs["kconfig"].contains("DELEG_TIMESTAMPS"), "{nfs:?}");
    // `$(wildcard $(LINUX_DIR)/drivers/ata/libahci.ko)` answered from the kernel's modules.order.
    let ata = show("kmod-ata-core");
    assert_eq!(
        rel(&ata["files"]),
        ["drivers/ata/libata.ko", "drivers/ata/libahci.ko"],
        "{ata:?}"
    );
    // KernelPackage/<name>/$(BOARD)/$(SUBTARGET) = KernelPackage/<name>/$(ARCH): x86_64 glue.
    let chacha = show("kmod-crypto-lib-chacha20");
    assert!(
        rel(&chacha["files"]).contains(&"arch/x86/crypto/chacha-x86_64.ko".to_string()),
        "{chacha:?}"
    );
    assert!(chacha["kconfig"].contains("CONFIG_CRYPTO_CHACHA20_X86_64"));
    // No KCONFIG: FILES only, selected and built like OpenWrt does.
    let pppox = show("kmod-pppox");
    assert_eq!(pppox["kconfig"], "");
    assert_eq!(pppox["build"], "drivers/net/ppp/pppox.ko");
    assert_eq!(pppox["selected"], "kmod-pppox");
    // DEPENDS conditions: not for x86/64, with the condition named.
    let platform = show("kmod-ata-ahci-platform");
    assert_eq!(platform["selected"], "");
    assert_eq!(
        platform["unselectable"],
        "DEPENDS @TARGET_ipq806x||TARGET_layerscape||TARGET_rockchip||TARGET_sunxi is false for x86/64 (Linux 6.12)"
    );
    assert_eq!(show("kmod-e1000")["selected"], "kmod-e1000", "@PCI_SUPPORT");
    assert_eq!(show("kmod-ata-core")["selected"], "kmod-ata-core");
    // i2c.mk's ModuleConfVar needs rules.mk's $(space).
    assert_eq!(show("kmod-i2c-algo-bit")["kconfig"], "CONFIG_I2C_ALGOBIT");

    eprintln!(
        "x86/64 on 6.12: {selected} packages selected, {} not selectable",
        unselectable.len()
    );
    assert!(selected > 800, "{selected}");
    assert!(unselectable.len() > 30, "{unselectable:?}");
    for (pkg, why) in &unselectable {
        assert!(pkg.starts_with("kmod-") && !why.is_empty(), "{pkg}");
    }
}

/// The outcome Makefile.shim recorded for each package: `<outcome> <why>`.
fn outcomes(work: &Path, packages: &[String]) -> BTreeMap<String, (String, String)> {
    packages
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(work.join("outcome").join(p))
                .unwrap_or_else(|_| "no-outcome".into());
            let text = text.trim();
            let (o, why) = text.split_once(' ').unwrap_or((text, ""));
            (p.clone(), (o.to_string(), why.to_string()))
        })
        .collect()
}

/// The acceptance run: every package OpenWrt selects for the target from its real
/// modules/*.mk, built through Makefile.shim, then OpenWrt's own Package/kmod-<name>/install
/// (real include/kernel.mk) run on the modules extmod built, and the install trees compared.
/// Long on 2 cores: `cargo test --test openwrt -- --ignored openwrt_real_packages --nocapture`;
/// `EXTMOD_OPENWRT_MK="lib.mk nls.mk"` limits the .mk files, `EXTMOD_OPENWRT_SELECT="kmod-a
/// kmod-b"` the packages wanted (what they pull in comes too), `EXTMOD_OPENWRT_WORK=<dir>`
/// keeps (and reuses) the builds, `EXTMOD_OPENWRT_SRCTREE` names Debian's 6.12 source [the test
/// kernel's], `EXTMOD_OPENWRT_NETFILTER_MK` OpenWrt's include/netfilter.mk (which
/// modules/netfilter.mk includes; the test data does not have it).
#[test]
#[ignore = "builds every OpenWrt x86/64 kernel package against Debian's 6.12 headers (long)"]
fn openwrt_real_packages_build_like_openwrt_against_debian_headers() {
    let (Some(tree), Some(deb)) = (openwrt_tree(), debian_target()) else {
        return;
    };
    real_packages(&tree, &deb);
}

/// The same against a Kbuild tree of a router-sized x86_64 configuration
/// (tests/kernel/profile-router.config; built once, about 15 minutes), where the packages whose
/// symbols the configuration lacks are built through configuration variants.
#[test]
#[ignore = "builds every OpenWrt x86/64 kernel package against a router-sized test kernel (long)"]
fn openwrt_real_packages_build_like_openwrt_against_a_router_kernel() {
    let Some(tree) = openwrt_tree() else {
        return;
    };
    let tk = common::profile_kernel(common::Target::X86_64, "router");
    real_packages(&tree, &kernel_target(&tk, "kbuild-openwrt-router"));
}

/// The same for OpenWrt's armsr/armv8 target against the arm64 test kernel.
#[test]
#[ignore = "builds every OpenWrt armsr/armv8 kernel package against the arm64 test kernel (long)"]
fn openwrt_real_packages_build_like_openwrt_on_arm64() {
    let Some(tree) = openwrt_tree() else {
        return;
    };
    if !common::Target::Arm64.available() {
        return;
    }
    let tk = common::cross_kernel(common::Target::Arm64);
    real_packages(&tree, &kernel_target(tk, "kbuild-openwrt-arm64"));
}

fn real_packages(tree: &Path, deb: &OpenwrtTarget) {
    let started = Instant::now();
    let tmp;
    let base = match std::env::var_os("EXTMOD_OPENWRT_WORK") {
        Some(p) => PathBuf::from(p),
        None => {
            tmp = common::tempdir("extmod-openwrt-full-");
            tmp.path().to_path_buf()
        }
    };
    let (work, out) = (base.join("work"), base.join("out"));
    let mut mk: Vec<String> = std::env::var("EXTMOD_OPENWRT_MK")
        .map(|m| vec![format!("MK={m}")])
        .unwrap_or_default();
    if let Ok(select) = std::env::var("EXTMOD_OPENWRT_SELECT") {
        mk.push(format!("EXTMOD_SELECT={select}"));
    }
    let mut args = real_args(tree, deb, "extmod", &work, &out);
    args.extend(mk.clone());
    let mut a = args.clone();
    a.push("list-selected".into());
    let selected: Vec<String> = make_quiet(&a).lines().map(str::to_string).collect();
    let mut a = args.clone();
    a.push("packages".into());
    let run = make(&a);
    let seconds = started.elapsed().as_secs_f64();

    // Every failure message names its package (or module) and says why.
    for l in lines_with(&run.stderr, "ERROR:") {
        let ok = (l.starts_with("ERROR: module '") && l.ends_with("' is missing."))
            || l.split_once(": ").is_some_and(|(_, rest)| {
                rest.starts_with("kmod-")
                    && rest
                        .split_once(": ")
                        .is_some_and(|(_, w)| !w.trim().is_empty())
            })
            || (l.starts_with("ERROR: kmod-") && l.contains(" cannot be selected for "));
        assert!(ok, "{l}");
    }

    let results = outcomes(&work, &selected);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (o, _) in results.values() {
        *counts.entry(o.as_str()).or_default() += 1;
    }
    eprintln!(
        "{} packages selected for the target, make exit {} in {seconds:.0}s: {counts:?}",
        selected.len(),
        run.code
    );
    for (p, (o, why)) in &results {
        if !["built", "none", "empty"].contains(&o.as_str()) {
            eprintln!("  {o:<14} {p}: {why}");
        }
    }
    // Failures extmod caused: a build that failed, or no result at all. A package skipped
    // because a dependency was refused says which.
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, (o, why))| {
            o == "failed" || o == "no-outcome" || (o == "skipped" && !why.contains("kmod-"))
        })
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");

    // OpenWrt's own install step on the same modules: LINUX_DIR holds the kernel's .config and
    // modules.builtin and every module extmod staged, at its path in the kernel tree.
    let reference = base.join("ref");
    let _ = std::fs::remove_dir_all(&reference);
    std::fs::create_dir_all(&reference).unwrap();
    // The kernel's .config as OpenWrt's KCONFIG merge leaves it for the packages built: each
    // one's entries appended (a bare symbol as `=m`), so that KernelPackage's empty-package
    // test sees what the packages built through configuration variants have enabled.
    let mut config = std::fs::read_to_string(deb.headers.join(".config")).unwrap();
    let pkgs: toml::Value =
        toml::from_str(&std::fs::read_to_string(work.join("packages.toml")).unwrap()).unwrap();
    for p in pkgs["package"].as_array().into_iter().flatten() {
        let built = results
            .get(p["name"].as_str().unwrap())
            .is_some_and(|(o, _)| o == "built");
        for k in p["kconfig"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|_| built)
        {
            let k = k.as_str().unwrap();
            config.push_str(&if k.contains('=') {
                format!("{k}\n")
            } else {
                format!("{k}=m\n")
            });
        }
    }
    std::fs::write(reference.join(".config"), config).unwrap();
    std::fs::copy(
        deb.modules.join("modules.builtin"),
        reference.join("modules.builtin"),
    )
    .unwrap();
    let release = std::fs::read_to_string(deb.headers.join("include/config/kernel.release"))
        .unwrap()
        .trim()
        .to_string();
    for (p, (o, _)) in &results {
        if o != "built" {
            continue;
        }
        let kernel = work
            .join("stage")
            .join(p)
            .join("lib/modules")
            .join(&release)
            .join("kernel");
        for f in walk_files(&kernel) {
            let to = reference.join(f.strip_prefix(&kernel).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            if !to.exists() {
                std::os::unix::fs::symlink(&f, &to).unwrap();
            }
        }
    }
    let compared: Vec<String> = results
        .iter()
        .filter(|(_, (o, _))| ["built", "none", "empty"].contains(&o.as_str()))
        .map(|(p, _)| p.clone())
        .collect();
    let ref_out = base.join("ref-out");
    let _ = std::fs::remove_dir_all(&ref_out);
    let mut a = real_args(tree, deb, "openwrt", &base.join("ref-work"), &ref_out);
    a.extend(mk);
    a.push(format!("REF={}", reference.display()));
    a.push(format!("SELECTED={}", compared.join(" ")));
    a.push("packages".into());
    let openwrt = make(&a);
    assert_eq!(openwrt.code, 0, "{}", openwrt.stderr);

    let mut differ = Vec::new();
    let mut modules_compared = 0;
    for p in &compared {
        let (ours, theirs) = (out.join(p), ref_out.join(p));
        let (lo, lt) = (listing(&ours), listing(&theirs));
        if lo != lt {
            differ.push(format!("{p}: {lo:?} != {lt:?}"));
            continue;
        }
        for f in lo
            .iter()
            .filter(|f| !f.contains(" -> ") && !f.ends_with('/'))
        {
            let (a, b) = (ours.join(f), theirs.join(f));
            let same = if f.ends_with(".ko") {
                modules_compared += 1;
                modinfo(&a, "name") == modinfo(&b, "name")
                    && modinfo(&a, "vermagic") == modinfo(&b, "vermagic")
            } else {
                std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap()
            };
            if !same {
                differ.push(format!("{p}: {f} differs"));
            }
        }
    }
    eprintln!(
        "{} install trees ({modules_compared} modules) compared with OpenWrt's KernelPackage, {} differ; total {:.0}s",
        compared.len(),
        differ.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(differ.is_empty(), "{differ:#?}");
    assert_eq!(
        modules_compared > 0,
        counts.contains_key("built"),
        "built packages, but no module compared"
    );
}
