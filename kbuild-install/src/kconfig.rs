//! Running the kernel's own Kconfig (`scripts/kconfig/conf`) against a tree, writing every output
//! into a directory of the caller's, never into the tree.

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::process;
use camino::{Utf8Path, Utf8PathBuf};

/// Where one Kconfig run reads and writes.
#[derive(Debug, Clone)]
pub struct ConfOutputs {
    pub dir: Utf8PathBuf,
}

impl ConfOutputs {
    pub fn config(&self) -> Utf8PathBuf {
        self.dir.join(".config")
    }
    pub fn auto_conf(&self) -> Utf8PathBuf {
        self.dir.join("include/config/auto.conf")
    }
    pub fn autoconf_h(&self) -> Utf8PathBuf {
        self.dir.join("include/generated/autoconf.h")
    }
    pub fn rustc_cfg(&self) -> Utf8PathBuf {
        self.dir.join("include/generated/rustc_cfg")
    }
}

/// Run `conf --<mode> Kconfig` with `srctree=<tree>` and the toolchain environment recorded in the
/// manifest, reading and writing `.config`, `auto.conf`, `autoconf.h` and `rustc_cfg` in `out`.
/// The caller puts the input `.config` in `out` first.
pub fn run_conf(
    tree: &Utf8Path,
    manifest: &Manifest,
    out: &ConfOutputs,
    mode: &str,
) -> Result<String> {
    for d in ["include/config", "include/generated"] {
        let p = out.dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| Error::io("create", &p, e))?;
    }
    let conf = tree.join("scripts/kconfig/conf");
    let mut expr =
        duct::cmd(conf.as_str(), [format!("--{mode}"), "Kconfig".to_string()]).dir(&out.dir);
    // The recorded environment names the original source tree (`srctree`): the tree itself is
    // self-sufficient, so the tree replaces it (with duct the first setting of a variable wins,
    // so these keys are not passed from the record). ARCH and KERNELVERSION as recorded win
    // over the manifest's (Kconfig saw `ARCH=x86_64`, not `x86`).
    const OURS: &[&str] = &[
        "srctree",
        "KCONFIG_CONFIG",
        "KCONFIG_AUTOCONFIG",
        "KCONFIG_AUTOHEADER",
        "KCONFIG_RUSTCCFG",
    ];
    for (k, v) in &manifest.toolchain_env {
        if !OURS.contains(&k.as_str()) {
            expr = expr.env(k, v);
        }
    }
    expr = expr
        .env("srctree", tree.as_str())
        .env("ARCH", &manifest.arch)
        .env("KERNELVERSION", &manifest.kernelversion)
        .env("KCONFIG_CONFIG", out.config().as_str())
        .env("KCONFIG_AUTOCONFIG", out.auto_conf().as_str())
        .env("KCONFIG_AUTOHEADER", out.autoconf_h().as_str())
        .env("KCONFIG_RUSTCCFG", out.rustc_cfg().as_str());
    let what = format!("{conf} --{mode} Kconfig");
    let fin = process::run(expr, &what, false)?;
    Ok(fin.stdout + &fin.stderr)
}
