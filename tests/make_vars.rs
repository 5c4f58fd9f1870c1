//! Make variables of the base build given to kbuild-install (`KCFLAGS=...`): recorded, passed to
//! every module build, and checked against the base build's own compile commands.

mod common;

use assert_cmd::Command;
use common::test_kernel;

fn kbuild_install(dest: &std::path::Path, vars: &[&str]) -> std::process::Output {
    let tk = test_kernel();
    Command::cargo_bin("extmod")
        .unwrap()
        .args(["kbuild-install", "--no-verify", "--srctree"])
        .arg(&tk.src)
        .arg("--objtree")
        .arg(&tk.obj)
        .arg(dest)
        .args(vars)
        .output()
        .unwrap()
}

#[test]
fn base_build_flags_are_recorded_passed_and_checked() {
    let tk = test_kernel();
    let tmp = common::tempdir("extmod-make-vars-");
    let k = tmp.path().join("k");

    // Flags the kernel was not compiled with, and variables that redirect the build: refused,
    // nothing made.
    for (vars, text) in [
        (
            vec!["KCFLAGS=-DEXTMOD_NOT_IN_THE_BASE"],
            "without `-DEXTMOD_NOT_IN_THE_BASE`",
        ),
        (vec!["O=/tmp/elsewhere"], "selects the trees a build uses"),
        (vec!["KCFLAGS"], "not VAR=VALUE"),
        (vec!["1X=y"], "not a make variable assignment"),
        (
            vec!["LLVM=$(shell touch /tmp/extmod-injected)"],
            "make would expand",
        ),
    ] {
        let o = kbuild_install(&k, &vars);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{vars:?}: {err}");
        assert!(
            err.contains(text) && err.contains("hint:"),
            "{vars:?}: {err}"
        );
        assert!(!k.exists(), "{vars:?}: a tree was made");
    }

    // A flag the base build did use (tinyconfig optimizes for size): recorded and on every make
    // command line.
    let o = kbuild_install(&k, &["KCFLAGS=-Os"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = std::fs::read_to_string(k.join("extmod-kbuild.json")).unwrap();
    assert!(manifest.contains("\"KCFLAGS=-Os\""), "{manifest}");
    let o = Command::cargo_bin("extmod")
        .unwrap()
        .arg("build")
        .arg("-K")
        .arg(&k)
        .arg("-S")
        .arg(&tk.src)
        .arg("-D")
        .arg(tmp.path().join("d"))
        .arg("-O")
        .arg(tmp.path().join("out"))
        .args(["--dry-run", "CONFIG_DUMMY"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(" KCFLAGS=-Os "), "{err}");
}
