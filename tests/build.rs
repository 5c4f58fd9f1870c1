//! `extmod build` against the real test kernel: every module of the test config as its own
//! package, compared with the in-tree build, and loaded by the real kernel under qemu.

mod common;

use assert_cmd::Command;
use common::qemu::{Initramfs, boot};
use common::{TestKernel, fingerprint, test_kernel};
use kbuild_install::elf;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

fn extmod() -> Command {
    Command::cargo_bin("extmod").unwrap()
}

/// One Kbuild tree per test process, made by `extmod kbuild-install`.
fn kbuild() -> &'static Path {
    static K: OnceLock<PathBuf> = OnceLock::new();
    K.get_or_init(|| common::kbuild("kbuild-build"))
}

fn build_cmd(tk: &TestKernel, d: &Path, out: &Path) -> Command {
    let mut c = extmod();
    c.arg("build")
        .arg("--kbuild")
        .arg(kbuild())
        .arg("--srctree")
        .arg(&tk.src)
        .arg("--objdir")
        .arg(d)
        .arg("--dest")
        .arg(out);
    c
}

fn json_of(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", String::from_utf8_lossy(out)))
}

fn section(path: &Path, name: &str) -> Vec<u8> {
    elf::section_of(&std::fs::read(path).unwrap(), name)
        .unwrap()
        .unwrap_or_else(|| panic!("{} has no {name}", path.display()))
}

/// Every symbol the base config sets `=m`.
fn module_symbols(tk: &TestKernel) -> Vec<String> {
    std::fs::read_to_string(tk.obj.join(".config"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_suffix("=m"))
        .map(str::to_string)
        .collect()
}

#[test]
fn all_test_modules_build_match_in_tree_and_load() {
    let tk = test_kernel();
    let k = kbuild();
    let k_before = fingerprint(k);
    let tmp = common::tempdir("extmod-build-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let symbols = module_symbols(tk);
    assert!(symbols.len() >= 15, "{symbols:?}");

    let res = build_cmd(tk, &d, &out)
        .args(&symbols)
        .arg("--json")
        .arg("-j2")
        .assert();
    let res = res.code(21).get_output().clone(); // two selector symbols build no module
    let doc = json_of(&res.stdout);
    let pkgs = doc["packages"].as_array().unwrap();
    let mut built_modules = Vec::new();
    for p in pkgs {
        let name = p["name"].as_str().unwrap();
        match p["status"].as_str().unwrap() {
            "built" => {
                for m in p["modules"].as_array().unwrap() {
                    built_modules.push(m.as_str().unwrap().to_string());
                }
                assert!(
                    out.join(name).join("Module.symvers").is_file(),
                    "{name}: no Module.symvers"
                );
            }
            "refused" => {
                assert!(
                    ["CONFIG_CRYPTO_ALGAPI", "CONFIG_CRYPTO_HASH"].contains(&name),
                    "{name} refused: {p}"
                );
                assert_eq!(p["refusal"]["code"], 21);
            }
            other => panic!(
                "{name}: {other}: {p}\n{}",
                String::from_utf8_lossy(&res.stderr)
            ),
        }
    }
    // Every module of the base build, exactly once.
    let order = std::fs::read_to_string(tk.obj.join("modules.order")).unwrap();
    let mut want: Vec<String> = order.lines().map(|l| l.replace(".o", ".ko")).collect();
    want.sort();
    built_modules.sort();
    assert_eq!(built_modules, want);

    // Same code and same symbol versions as the in-tree build.
    let release = tk.release();
    for p in pkgs.iter().filter(|p| p["status"] == "built") {
        for m in p["modules"].as_array().unwrap() {
            let m = m.as_str().unwrap();
            let ours = out
                .join(p["name"].as_str().unwrap())
                .join("lib/modules")
                .join(&release)
                .join("kernel")
                .join(m);
            let theirs = tk.obj.join(m);
            for s in [".text", "__versions"] {
                assert!(
                    section(&ours, s) == section(&theirs, s),
                    "{m}: {s} differs from the in-tree build"
                );
            }
            let name =
                elf::modinfo_value(camino::Utf8Path::from_path(&ours).unwrap(), "name").unwrap();
            let in_tree =
                elf::modinfo_value(camino::Utf8Path::from_path(&theirs).unwrap(), "name").unwrap();
            assert_eq!(name, in_tree);
        }
    }

    // A second run builds nothing.
    let again = build_cmd(tk, &d, &out)
        .args(&symbols)
        .arg("--json")
        .assert()
        .code(21)
        .get_output()
        .clone();
    let doc2 = json_of(&again.stdout);
    assert_eq!(doc2["summary"]["built"], 0, "{doc2}");
    assert_eq!(doc2["summary"]["fresh"], pkgs.len() - 2);

    // The real kernel loads them: an initramfs with only extmod's modules.
    let mut image = Initramfs::new();
    for p in pkgs.iter().filter(|p| p["status"] == "built") {
        image = image.tree(&out.join(p["name"].as_str().unwrap()).join("lib"), "/lib");
    }
    let image = image.script(
        "depmod\n\
         for m in zram nls_utf8 dummy veth loop squashfs crc7 crc_itu_t libcrc32c; do modprobe $m; done\n\
         lsmod\n\
         test -e /sys/class/net/dummy0\n\
         test -e /sys/block/zram0\n\
         echo MODULES-LOADED $(lsmod | wc -l)\n",
    );
    let initrd = image.build(&tmp.path().join("boot"));
    let result = boot(&tk.bzimage(), &initrd, Duration::from_secs(120));
    result.assert_ok();
    let text = result.script_output();
    for m in [
        "zram",
        "zsmalloc",
        "lzo_compress",
        "nls_utf8",
        "nls_base",
        "dummy",
        "veth",
        "libcrc32c",
        "crc32c_generic",
    ] {
        assert!(
            text.lines().any(|l| l.split_whitespace().next() == Some(m)),
            "{m} not loaded:\n{text}"
        );
    }

    assert_eq!(fingerprint(k), k_before, "the Kbuild tree was modified");
}

#[test]
fn refusals_and_bad_input_have_distinct_codes() {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-build-bad-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    for (sym, code, text) in [
        ("CONFIG_NO_SUCH_THING", 20, "is not a Kconfig symbol"),
        ("CONFIG_NET", 21, "is a bool option: it builds no module"),
        ("CONFIG_CRC32", 22, "is built into the base kernel (=y)"),
    ] {
        let o = build_cmd(tk, &d, &out)
            .arg(sym)
            .assert()
            .code(code)
            .get_output()
            .clone();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(text), "{sym}: {err}");
        assert!(err.contains("  hint: "), "{sym}: {err}");
    }
    // Not in the base config, against a tree that cannot make variants (a full object dir).
    let o = extmod()
        .arg("build")
        .arg("--kbuild")
        .arg(&tk.obj)
        .arg("--srctree")
        .arg(&tk.src)
        .arg("-D")
        .arg(&d)
        .arg("-O")
        .arg(&out)
        .arg("CONFIG_NLMON")
        .assert()
        .code(23)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("CONFIG_NLMON=m not in the base configuration, and the Kbuild tree cannot make configuration variants"), "{err}");
    // Paths Kbuild cannot take.
    for bad in ["with space", "with:colon", "with%percent"] {
        let o = build_cmd(tk, &tmp.path().join(bad), &out)
            .arg("CONFIG_DUMMY")
            .assert()
            .code(25)
            .get_output()
            .clone();
        assert!(String::from_utf8_lossy(&o.stderr).contains("which Kbuild cannot handle"));
    }
    // Package files.
    let pf = tmp.path().join("p.toml");
    std::fs::write(
        &pf,
        "[[package]]\nname = \"a\"\nkconfig = [\"CONFIG_DUMMY\"]\ndepends = [\"b\"]\n",
    )
    .unwrap();
    let o = build_cmd(tk, &d, &out)
        .arg("--packages")
        .arg(&pf)
        .assert()
        .code(24)
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&o.stderr).contains("depends on unknown package `b`"));
    std::fs::write(
        &pf,
        "[[package]]\nname = \"a\"\nkconfig = [\"CONFIG_DUMMY\"]\ndepends = [\"a\"]\n",
    )
    .unwrap();
    build_cmd(tk, &d, &out)
        .arg("--packages")
        .arg(&pf)
        .assert()
        .code(24);
    // A source tree of another version.
    let fake = tmp.path().join("linux-6.1");
    std::fs::create_dir_all(fake.join("scripts/kconfig")).unwrap();
    std::fs::write(fake.join("Kconfig"), "").unwrap();
    std::fs::write(fake.join("scripts/Makefile.build"), "").unwrap();
    std::fs::write(
        fake.join("Makefile"),
        "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\nEXTRAVERSION =\n",
    )
    .unwrap();
    let mut c = extmod();
    c.args(["build", "--kbuild"])
        .arg(kbuild())
        .arg("--srctree")
        .arg(&fake)
        .arg("-D")
        .arg(&d)
        .arg("-O")
        .arg(&out);
    let o = c.arg("CONFIG_DUMMY").assert().code(13).get_output().clone();
    assert!(String::from_utf8_lossy(&o.stderr).contains("is version 6.1.0"));
    // No compiler.
    let empty = tmp.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    build_cmd(tk, &d, &out)
        .arg("CONFIG_DUMMY")
        .env("PATH", &empty)
        .assert()
        .code(17);
    // Nothing was built or staged by any of these.
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}

#[test]
fn failure_is_contained_and_keep_going_builds_the_rest() {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-build-fail-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let pf = tmp.path().join("p.toml");
    std::fs::write(
        &pf,
        "[[package]]\nname = \"broken\"\nkconfig = [\"CONFIG_DUMMY\"]\nfiles = [\"drivers/net/nlmon.ko\"]\n\
         [[package]]\nname = \"typo\"\nkconfig = [\"CONFIG_DUMMY\"]\nfiles = [\"drivers/net/no_such_module.ko\"]\n\
         [[package]]\nname = \"needs-broken\"\nkconfig = [\"CONFIG_VETH\"]\ndepends = [\"broken\"]\n\
         [[package]]\nname = \"fine\"\nkconfig = [\"CONFIG_CRC7\"]\n",
    )
    .unwrap();
    let o = build_cmd(tk, &d, &out)
        .arg("--packages")
        .arg(&pf)
        .arg("--keep-going")
        .arg("--json")
        .assert()
        .code(1)
        .get_output()
        .clone();
    let doc = json_of(&o.stdout);
    let status = |n: &str| {
        doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status("broken"), "failed");
    assert_eq!(status("needs-broken"), "skipped");
    assert_eq!(status("fine"), "built");
    assert!(!out.join("broken").exists() && !out.join("needs-broken").exists());
    assert!(
        out.join("fine/lib/modules")
            .join(tk.release())
            .join("kernel/lib/crc7.ko")
            .is_file()
    );
    let err = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "broken")
        .unwrap()["error"]
        .to_string();
    assert!(
        err.contains("missing MODULE_LICENSE() in drivers/net/nlmon.o"),
        "{err}"
    );
    assert!(err.contains("compiled as built-in code"), "{err}");
    assert_eq!(status("typo"), "refused");
    let typo = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "typo")
        .unwrap();
    assert!(
        typo["refusal"]["cause"]
            .as_str()
            .unwrap()
            .contains("module 'drivers/net/no_such_module.ko' is missing")
    );
    assert!(d.join("broken/build.log").is_file());
    // Staging leaves nothing half-written behind.
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["fine"]);
}

#[test]
fn dry_run_prints_the_make_command_lines() {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-build-dry-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let o = build_cmd(tk, &d, &out)
        .args(["--dry-run", "CONFIG_DUMMY", "CONFIG_ZRAM"])
        .assert()
        .success()
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&o.stderr);
    let dummy = format!(
        "make -C {}/CONFIG_DUMMY/tree M=drivers/net ARCH=x86 dummy.ko",
        d.display()
    );
    assert!(err.contains(&dummy), "{err}");
    assert!(
        err.contains("M=drivers/block/zram ARCH=x86 zram.ko"),
        "{err}"
    );
    assert!(!d.exists() && !out.exists(), "--dry-run must not write");
}

#[test]
fn same_packages_build_against_debian_linux_headers() {
    let Some(headers) = common::debian_headers() else {
        return;
    };
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-build-deb-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let config = std::fs::read_to_string(headers.join(".config")).unwrap();
    let release = std::fs::read_to_string(headers.join("include/config/kernel.release")).unwrap();
    let symbols = module_symbols(tk);
    let o = extmod()
        .arg("build")
        .arg("--kbuild")
        .arg(&headers)
        .arg("--srctree")
        .arg(&tk.src)
        .arg("-D")
        .arg(&d)
        .arg("-O")
        .arg(&out)
        .args(&symbols)
        .args(["--json", "--keep-going"])
        .output()
        .unwrap();
    let doc = json_of(&o.stdout);
    let mut built = 0;
    for p in doc["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let debian = config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or("n");
        let status = p["status"].as_str().unwrap();
        match debian {
            "m" if ["CONFIG_CRYPTO_ALGAPI", "CONFIG_CRYPTO_HASH"].contains(&name) => {
                assert_eq!(status, "refused")
            }
            "m" => {
                assert_eq!(status, "built", "{name}: {p}");
                built += 1;
                for m in p["modules"].as_array().unwrap() {
                    let ko = out
                        .join(name)
                        .join("lib/modules")
                        .join(release.trim())
                        .join("kernel")
                        .join(m.as_str().unwrap());
                    let vermagic =
                        elf::modinfo_value(camino::Utf8Path::from_path(&ko).unwrap(), "vermagic")
                            .unwrap()
                            .unwrap();
                    assert!(
                        vermagic.starts_with(&format!("{} SMP", release.trim())),
                        "{vermagic}"
                    );
                }
            }
            "y" => assert_eq!(p["refusal"]["code"], 22, "{name}: {p}"),
            _ => assert_eq!(status, "refused", "{name}: {p}"),
        }
    }
    assert!(
        built >= 8,
        "only {built} packages built against {}",
        headers.display()
    );
}

#[test]
fn shares_makes_jobserver_from_a_plus_recipe() {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-build-make-");
    let mk = tmp.path().join("Makefile");
    let cmd = format!(
        "$(EXTMOD) build --kbuild {} --srctree {} -D {} -O {} CONFIG_DUMMY CONFIG_CRC7",
        kbuild().display(),
        tk.src.display(),
        tmp.path().join("objs").display(),
        tmp.path().join("out").display()
    );
    std::fs::write(&mk, format!("shared:\n\t+{cmd}\nown:\n\t{cmd}\n")).unwrap();
    for (goal, want) in [
        ("shared", "make jobs share make's jobserver"),
        ("own", "make jobs share a jobserver of"),
    ] {
        let o = std::process::Command::new("make")
            .args(["-j2", "-f"])
            .arg(&mk)
            .arg(format!("EXTMOD={}", env!("CARGO_BIN_EXE_extmod")))
            .arg(goal)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{goal}: {err}");
        assert!(err.contains(want), "{goal}: {err}");
    }
}

#[test]
fn interrupt_stops_make_and_leaves_nothing_half_staged() {
    use std::io::BufRead;
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-build-int-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_extmod"))
        .arg("build")
        .arg("--kbuild")
        .arg(kbuild())
        .arg("--srctree")
        .arg(&tk.src)
        .arg("-D")
        .arg(&d)
        .arg("-O")
        .arg(&out)
        .args(module_symbols(tk))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("Running") {
        line.clear();
    }
    assert!(line.contains("Running"), "no make started");
    std::thread::sleep(Duration::from_millis(1500));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(130), "{rest}");
    std::thread::sleep(Duration::from_millis(500));
    let left = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(d.to_str().unwrap())
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "processes left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    if out.exists() {
        for e in std::fs::read_dir(&out).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.starts_with('.'), "half-staged {name} left in OUT");
        }
    }
}

#[test]
fn example_package_file_builds() {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-build-example-");
    let (d, out) = (tmp.path().join("objs"), tmp.path().join("out"));
    let o = build_cmd(tk, &d, &out)
        .arg("--packages")
        .arg(common::repo().join("examples/packages.toml"))
        .arg("--json")
        .assert()
        .success()
        .get_output()
        .clone();
    let doc = json_of(&o.stdout);
    assert_eq!(doc["summary"]["built"], 6, "{doc}");
    let kernel = out
        .join("kmod-zram/lib/modules")
        .join(tk.release())
        .join("kernel");
    assert!(kernel.join("drivers/block/zram/zram.ko").is_file());
    // Built after the packages it depends on.
    let names: Vec<&str> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("kmod-lib-lzo") < pos("kmod-zram") && pos("kmod-nls-base") < pos("kmod-nls-utf8"));
}

#[test]
fn man_pages_are_generated() {
    let tmp = common::tempdir("extmod-man-");
    extmod().arg("man").arg(tmp.path()).assert().success();
    for page in [
        "extmod.1",
        "extmod-build.1",
        "extmod-kbuild-install.1",
        "extmod-variant.1",
        "extmod-audit.1",
    ] {
        let text = std::fs::read_to_string(tmp.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
}
