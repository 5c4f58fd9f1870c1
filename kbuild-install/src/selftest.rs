//! The self-test: build a tiny external module against a Kbuild tree and compare its vermagic
//! with the kernel's.

use crate::elf;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::process;
use camino::{Utf8Path, Utf8PathBuf};

const SOURCE: &str = r#"// Built by kbuild-install to check a Kbuild tree.
#include <linux/init.h>
#include <linux/module.h>

static int __init extmod_selftest_init(void)
{
	return 0;
}

static void __exit extmod_selftest_exit(void)
{
}

module_init(extmod_selftest_init);
module_exit(extmod_selftest_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kbuild-install self-test");
"#;

/// `make` for an external module build against `tree`, with the variables from its manifest.
pub fn make_command(
    tree: &Utf8Path,
    manifest: &Manifest,
    m: &Utf8Path,
    goals: &[&str],
) -> (String, Vec<String>) {
    let mut args = vec!["-C".to_string(), tree.to_string(), format!("M={m}")];
    args.extend(manifest.make_vars());
    args.extend(goals.iter().map(|g| g.to_string()));
    ("make".to_string(), args)
}

/// A `duct` expression for `make` with an environment that cannot redirect the build.
pub fn make_expr(program: &str, args: &[String]) -> duct::Expression {
    let mut e = duct::cmd(program, args);
    for var in [
        "KBUILD_OUTPUT",
        "KBUILD_EXTMOD",
        "ARCH",
        "CROSS_COMPILE",
        "O",
        "M",
        "MO",
        "KCONFIG_CONFIG",
        // A makefile injected into every make.
        "MAKEFILES",
    ] {
        e = e.env_remove(var);
    }
    e
}

/// Build the self-test module against `tree`; returns its vermagic.
pub fn verify(tree: &Utf8Path, manifest: &Manifest) -> Result<String> {
    let fail = |why: String| Error::SelfTest {
        dest: tree.to_owned(),
        why,
    };
    // The module directory is passed to make as M=: a TMPDIR Kbuild cannot take is not used.
    let base = Utf8PathBuf::from_path_buf(std::env::temp_dir())
        .ok()
        .filter(|t| crate::paths::check_path(t).is_ok())
        .unwrap_or_else(|| Utf8PathBuf::from("/tmp"));
    // Left by a self-test whose run was killed.
    crate::fsutil::clean_stale(&base, "kbuild-install-selftest-");
    let dir = tempfile::Builder::new()
        .prefix(&format!("kbuild-install-selftest-{}-", std::process::id()))
        .tempdir_in(&base)
        .map_err(|e| Error::io("create", &base, e))?;
    let m = Utf8PathBuf::from_path_buf(dir.path().to_path_buf())
        .map_err(|_| fail("temporary directory path is not UTF-8".into()))?;
    for (name, text) in [
        ("extmod_selftest.c", SOURCE),
        ("Kbuild", "obj-m := extmod_selftest.o\n"),
    ] {
        let p = m.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io("write", &p, e))?;
    }
    let (prog, args) = make_command(tree, manifest, &m, &["modules"]);
    let what = process::display(&prog, &args);
    // A make above us (a recipe line) must not hand its flags, level or jobserver to this one.
    let mut expr = make_expr(&prog, &args);
    for var in [
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "GNUMAKEFLAGS",
        "MAKEOVERRIDES",
    ] {
        expr = expr.env_remove(var);
    }
    process::run(expr, &what, false).map_err(|e| match e {
        Error::Interrupted => e,
        other => fail(other.to_string()),
    })?;
    let ko = m.join("extmod_selftest.ko");
    let info = elf::modinfo(&ko)?;
    let vermagic = info
        .iter()
        .find(|(k, _)| k == "vermagic")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| fail(format!("`{ko}` has no vermagic")))?;
    match &manifest.vermagic {
        Some(expected) if *expected != vermagic => {
            return Err(fail(format!(
                "vermagic `{vermagic}` differs from the kernel's `{expected}`"
            )));
        }
        None if !vermagic.starts_with(&format!("{} ", manifest.kernelrelease)) => {
            return Err(fail(format!(
                "vermagic `{vermagic}` does not name release {}",
                manifest.kernelrelease
            )));
        }
        _ => {}
    }
    // The target's code: a cross build with the host compiler would not load.
    if let Some(expected) = &manifest.machine {
        let got = elf::machine(&ko)?;
        if got != *expected {
            return Err(fail(format!(
                "`{ko}` is for {got}, the kernel's modules are for {expected}"
            )));
        }
    }
    Ok(vermagic)
}
