//! `extmod kbuild-install` against the real test kernel.

mod common;

use assert_cmd::Command;
use camino::{Utf8Path, Utf8PathBuf};
use common::{TestKernel, test_kernel};
use kbuild_install::kconfig::{ConfOutputs, run_conf};
use kbuild_install::{Manifest, elf};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn extmod() -> Command {
    Command::cargo_bin("extmod").unwrap()
}

fn utf8(p: &Path) -> &Utf8Path {
    Utf8Path::from_path(p).unwrap()
}

fn install(tk: &TestKernel, dest: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    extmod()
        .arg("kbuild-install")
        .arg("--srctree")
        .arg(&tk.src)
        .arg("--objtree")
        .arg(&tk.obj)
        .args(extra)
        .arg(dest)
        .assert()
}

/// Relative paths of every file and symlink below `root`.
fn listing(root: &Path) -> BTreeSet<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| !e.file_type().is_dir())
        .map(|e| {
            e.path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn installed_tree_is_self_sufficient() {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-kbi-");
    let dest = tmp.path().join("kbuild");
    let out = install(tk, &dest, &[])
        .success()
        .get_output()
        .stderr
        .clone();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("Verified"), "self-test did not run:\n{out}");

    // The manifest says what the tree was made from.
    let m = Manifest::load(utf8(&dest)).unwrap();
    assert_eq!(m.kernelrelease, tk.release());
    assert_eq!(m.srcarch, "x86");
    assert_eq!(m.cc, "gcc");
    assert!(
        m.cc_version_text.starts_with("gcc"),
        "{}",
        m.cc_version_text
    );
    assert_eq!(m.toolchain_env["SRCARCH"], "x86");
    assert_eq!(
        m.config_sha256,
        kbuild_install::manifest::sha256_file(utf8(&tk.obj.join(".config"))).unwrap()
    );
    assert_eq!(
        m.made_from.objtree.as_std_path(),
        tk.obj.canonicalize().unwrap()
    );
    let in_tree_dummy = utf8(&tk.obj.join("drivers/net/dummy.ko")).to_owned();
    let kernel_vermagic = elf::modinfo_value(&in_tree_dummy, "vermagic")
        .unwrap()
        .unwrap();
    assert_eq!(m.vermagic.as_deref(), Some(kernel_vermagic.as_str()));

    // Everything install-extmod-build ships, plus what config variants need.
    let reference = tmp.path().join("install-extmod-build");
    let status = std::process::Command::new(tk.src.join("scripts/package/install-extmod-build"))
        .arg(&reference)
        .current_dir(&tk.obj)
        .env("srctree", &tk.src)
        .env("SRCARCH", "x86")
        .env("CC", "gcc")
        .env("HOSTCC", "gcc")
        .env("MAKE", "make")
        .status()
        .unwrap();
    assert!(status.success());
    let ours = listing(&dest);
    let missing: Vec<_> = listing(&reference).difference(&ours).cloned().collect();
    assert!(
        missing.is_empty(),
        "install-extmod-build ships files we lack: {missing:?}"
    );
    for f in [
        ".config",
        "include/config/auto.conf.cmd",
        "scripts/kconfig/conf",
        "scripts/Kconfig.include",
        "System.map",
        "Kconfig",
        "arch/x86/Kconfig",
        "drivers/net/Kconfig",
        "extmod-kbuild.json",
    ] {
        assert!(ours.contains(f), "{f} missing from the tree");
    }
    for f in &m.toolchain_env.keys().cloned().collect::<Vec<_>>() {
        assert!(!f.is_empty());
    }
    let conf_cmd = std::fs::read_to_string(dest.join("include/config/auto.conf.cmd")).unwrap();
    let parsed = kbuild_install::tree::AutoConfCmd::parse(&conf_cmd);
    assert!(
        parsed.kconfig_files.len() > 500,
        "{}",
        parsed.kconfig_files.len()
    );
    for f in &parsed.kconfig_files {
        assert!(ours.contains(f), "parsed Kconfig file {f} missing");
    }
    assert!(
        !ours
            .iter()
            .any(|f| f.ends_with(".o") || f.ends_with(".cmd") && f.contains("/."))
    );

    // Source files are hardlinked; build outputs are copied.
    let header = dest.join("include/linux/module.h");
    assert!(std::fs::metadata(&header).unwrap().nlink() > 1);
    let symvers = std::fs::metadata(dest.join("Module.symvers")).unwrap();
    assert_eq!(symvers.nlink(), 1, "Module.symvers must be a copy");

    // With the source and object trees hidden, an external module builds and matches.
    let module = tmp.path().join("dummy-ext");
    std::fs::create_dir(&module).unwrap();
    std::fs::copy(tk.src.join("drivers/net/dummy.c"), module.join("dummy.c")).unwrap();
    std::fs::write(module.join("Kbuild"), "obj-m := dummy.o\n").unwrap();
    let script = format!(
        "mount -t tmpfs none '{src}' && mount -t tmpfs none '{obj}' && \
         test ! -e '{src}/Makefile' && make -s -C '{dest}' M='{m}' modules",
        src = tk.src.display(),
        obj = tk.obj.display(),
        dest = dest.display(),
        m = module.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "external build with trees hidden failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let built = utf8(&module.join("dummy.ko")).to_owned();
    assert_eq!(
        elf::modinfo_value(&built, "vermagic").unwrap().as_deref(),
        Some(kernel_vermagic.as_str())
    );
    assert!(
        elf::section_of(&std::fs::read(&built).unwrap(), "__versions")
            .unwrap()
            .is_some()
    );

    // The tree's own Kconfig reproduces the kernel's auto.conf from its .config.
    let work = tmp.path().join("conf");
    let outs = ConfOutputs {
        dir: Utf8PathBuf::from_path_buf(work.clone()).unwrap(),
    };
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(dest.join(".config"), outs.config()).unwrap();
    run_conf(utf8(&dest), &m, &outs, "olddefconfig").unwrap();
    run_conf(utf8(&dest), &m, &outs, "syncconfig").unwrap();
    let want = std::fs::read_to_string(tk.obj.join("include/config/auto.conf")).unwrap();
    let got = std::fs::read_to_string(outs.auto_conf()).unwrap();
    assert!(
        want == got,
        "auto.conf differs after olddefconfig + syncconfig"
    );
    assert_eq!(
        std::fs::read_to_string(outs.config()).unwrap(),
        std::fs::read_to_string(tk.obj.join(".config")).unwrap()
    );
}

#[test]
fn copy_mode_links_nothing_and_existing_dest_needs_force() {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-kbi-");
    let dest = tmp.path().join("kbuild");
    install(tk, &dest, &["--copy", "--no-verify", "--json"]).success();
    let header = dest.join("include/linux/module.h");
    assert_eq!(std::fs::metadata(&header).unwrap().nlink(), 1);
    let m = Manifest::load(utf8(&dest)).unwrap();
    assert_eq!(m.files.linked, 0);

    let err = install(tk, &dest, &["--no-verify"])
        .code(15)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&err);
    assert!(
        err.contains("already exists") && err.contains("hint: pass --force"),
        "{err}"
    );

    std::fs::write(dest.join("marker"), "old").unwrap();
    install(tk, &dest, &["--no-verify", "--force"]).success();
    assert!(
        !dest.join("marker").exists(),
        "--force must replace the tree"
    );
    assert!(std::fs::metadata(&header).unwrap().nlink() > 1);
    // Nothing but DEST is left in its parent.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["kbuild"], "leftovers: {names:?}");
}

/// One bad-input case: name, [S, O, DEST], exit code, text of the cause, PATH override.
type Case<'a> = (&'a str, Vec<&'a str>, i32, &'a str, Option<&'a Path>);

/// A fake object tree: configured, with a release of our choosing, optionally "built".
fn fake_objtree(dir: &Path, release: &str, built: bool) {
    let tk = test_kernel();
    std::fs::create_dir_all(dir.join("include/config")).unwrap();
    std::fs::create_dir_all(dir.join("scripts/mod")).unwrap();
    std::fs::copy(tk.obj.join(".config"), dir.join(".config")).unwrap();
    for f in ["auto.conf", "auto.conf.cmd"] {
        std::fs::copy(
            tk.obj.join("include/config").join(f),
            dir.join("include/config").join(f),
        )
        .unwrap();
    }
    if built {
        std::fs::write(
            dir.join("include/config/kernel.release"),
            format!("{release}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("Module.symvers"), "").unwrap();
        std::fs::write(dir.join("scripts/mod/modpost"), "").unwrap();
    }
}

#[test]
fn bad_inputs_get_cause_hint_and_distinct_code() {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-kbi-bad-");
    let t = tmp.path();
    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let unbuilt = t.join("unbuilt");
    fake_objtree(&unbuilt, "", false);
    let other = t.join("other-version");
    fake_objtree(&other, "6.1.0", true);
    let existing = t.join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("precious"), "x").unwrap();
    let no_tools = t.join("no-tools");
    std::fs::create_dir(&no_tools).unwrap();

    let s = tk.src.to_str().unwrap();
    let o = tk.obj.to_str().unwrap();
    let dest = t.join("dest");
    let d = dest.to_str().unwrap();
    let in_obj = format!("{o}/sub/kbuild");
    let in_src = format!("{s}/kbuild");
    let cases: Vec<Case> = vec![
        (
            "not a source",
            vec![empty.to_str().unwrap(), o, d],
            10,
            "is not a kernel source tree",
            None,
        ),
        (
            "not configured",
            vec![s, empty.to_str().unwrap(), d],
            11,
            "is not configured",
            None,
        ),
        (
            "not built",
            vec![s, unbuilt.to_str().unwrap(), d],
            12,
            "is not built",
            None,
        ),
        (
            "other version",
            vec![s, other.to_str().unwrap(), d],
            13,
            "was built as 6.1.0",
            None,
        ),
        (
            "dest in objtree",
            vec![s, o, &in_obj],
            14,
            "is inside the object tree",
            None,
        ),
        (
            "dest in srctree",
            vec![s, o, &in_src],
            14,
            "is inside the source tree",
            None,
        ),
        (
            "dest exists",
            vec![s, o, existing.to_str().unwrap()],
            15,
            "already exists",
            None,
        ),
        (
            "dest not writable",
            vec![s, o, "/proc/extmod/kbuild"],
            16,
            "is not writable",
            None,
        ),
        (
            "no compiler",
            vec![s, o, d],
            17,
            "`gcc` not found in PATH",
            Some(no_tools.as_path()),
        ),
    ];
    for (name, args, code, text, path) in cases {
        let mut cmd = extmod();
        cmd.args([
            "kbuild-install",
            "--no-verify",
            "--srctree",
            args[0],
            "--objtree",
            args[1],
            args[2],
        ]);
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let out = cmd.assert().code(code).get_output().clone();
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{name}: want cause + hint, got:\n{err}");
        assert!(
            lines[0].starts_with("extmod: error: ") && lines[0].contains(text),
            "{name}: {err}"
        );
        assert!(lines[1].starts_with("  hint: "), "{name}: {err}");
        assert!(!dest.exists(), "{name}: left {d} behind");
    }
    // --force never deletes a directory kbuild-install did not make.
    extmod()
        .args([
            "kbuild-install",
            "--no-verify",
            "--force",
            "--srctree",
            s,
            "--objtree",
            o,
        ])
        .arg(&existing)
        .assert()
        .code(15);
    assert!(existing.join("precious").exists());
    assert!(!tk.obj.join("sub").exists() && !tk.src.join("kbuild").exists());
    let left: Vec<_> = std::fs::read_dir(t)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 5, "temporary siblings left behind: {left:?}");
}
