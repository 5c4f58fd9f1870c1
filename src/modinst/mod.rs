//! Staging as `make modules_install` does it (the kernel's `scripts/Makefile.modinst`), per
//! module and in its order: copy, strip (`INSTALL_MOD_STRIP`), sign (`CONFIG_MODULE_SIG_ALL`,
//! `scripts/sign-file`), compress (`CONFIG_MODULE_COMPRESS_*` with Kbuild's exact flags), then
//! `depmod` over the staged tree.
//!
//! Everything is decided once per run by [`Installer::resolve`] (tools present, key readable,
//! certificate matching the key), before any package is built, so a bad key or a missing
//! compressor stops the run with nothing staged.

use crate::error::Error;
use crate::kbuild::KbuildTree;
use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::Error as KError;
use kbuild_install::process;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sign::Signer;

mod sign;

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// `INSTALL_MOD_STRIP` semantics: `None` keeps debug info (the kernel's default), `"1"` is
    /// `--strip-debug`, anything else the options given to strip.
    pub strip: Option<String>,
    /// Private key (file or `pkcs11:` URI); default: where `CONFIG_MODULE_SIG_KEY` points.
    pub sign_key: Option<String>,
    /// X.509 certificate of the key; default: `certs/signing_key.x509` of the kernel build.
    pub sign_cert: Option<Utf8PathBuf>,
    /// Do not sign even when the configuration says `CONFIG_MODULE_SIG_ALL`.
    pub no_sign: bool,
    /// Stage the `.ko` as the build wrote it: no strip, signature, compression or depmod
    /// (what OpenWrt's KernelPackage copies from the kernel tree).
    pub raw: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// From the kernel configuration, as `scripts/Makefile.modinst` decides: on 6.12 only with
    /// `CONFIG_MODULE_COMPRESS_ALL`; kernels before that option compressed whenever a
    /// `CONFIG_MODULE_COMPRESS_<alg>` was chosen.
    pub fn of(k: &KbuildTree) -> Option<Self> {
        let has_all_option = k.value("MODULE_COMPRESS").is_some();
        if has_all_option && k.value("MODULE_COMPRESS_ALL") != Some("y") {
            return None;
        }
        [
            ("MODULE_COMPRESS_GZIP", Compression::Gzip),
            ("MODULE_COMPRESS_XZ", Compression::Xz),
            ("MODULE_COMPRESS_ZSTD", Compression::Zstd),
        ]
        .into_iter()
        .find(|(sym, _)| k.value(sym) == Some("y"))
        .map(|(_, c)| c)
    }

    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Gzip => ".gz",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
        }
    }

    /// The command `scripts/Makefile.modinst` of 6.12 runs on `<file>` (it replaces the file
    /// by `<file><suffix>`): `cmd_gzip`, `cmd_xz`, `cmd_zstd`.
    pub fn command(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Compression::Gzip => ("gzip", &["-n", "-f"]),
            Compression::Xz => ("xz", &["--check=crc32", "--lzma2=dict=1MiB", "-f"]),
            Compression::Zstd => ("zstd", &["--rm", "-f", "-q"]),
        }
    }

    /// The flags of `cmd_<alg>` as the Kbuild tree's own `scripts/Makefile.modinst` writes them
    /// (`cmd_zstd = $(ZSTD) -T0 --rm -f -q $<` on 6.1); `None` when it does not say.
    pub fn flags_in(self, modinst: &str) -> Option<Vec<String>> {
        let (name, var) = match self {
            Compression::Gzip => ("gzip", "KGZIP"),
            Compression::Xz => ("xz", "XZ"),
            Compression::Zstd => ("zstd", "ZSTD"),
        };
        modinst.lines().find_map(|l| {
            let rhs = l.trim().strip_prefix(&format!("cmd_{name}"))?.trim_start();
            let rhs = rhs.strip_prefix('=')?.trim();
            let rest = rhs.strip_prefix(&format!("$({var})"))?;
            let flags = rest.trim().strip_suffix("$<")?;
            Some(flags.split_whitespace().map(str::to_string).collect())
        })
    }
}

/// One staged module, for the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstalledModule {
    /// The module relative to the kernel tree (`drivers/net/dummy.ko`).
    pub module: String,
    /// The staged file relative to the package's output (`lib/modules/<rel>/kernel/...ko.xz`).
    pub path: String,
    pub size: u64,
    pub stripped: bool,
    pub signer: Option<String>,
    pub compression: Option<Compression>,
}

/// The decided install steps for a run.
#[derive(Debug, Clone)]
pub struct Installer {
    raw: bool,
    strip: Option<(String, Vec<String>)>,
    sign: Option<Signer>,
    compress: Option<Compression>,
    /// The compressor's flags, as the tree's `scripts/Makefile.modinst` gives them.
    compress_flags: Vec<String>,
    depmod: Option<Utf8PathBuf>,
    system_map: Option<Utf8PathBuf>,
    /// Said once per package result (e.g. why modules are not signed).
    pub notes: Vec<String>,
    /// What the staged bytes depend on besides the modules (part of the fresh key).
    pub identity: String,
}

fn tool(name: &str, role: &'static str) -> Result<Utf8PathBuf, Error> {
    let p = which::which(name).map_err(|_| KError::MissingTool {
        tool: name.to_string(),
        role,
    })?;
    Utf8PathBuf::from_path_buf(p).map_err(|p| {
        KError::io(
            "use",
            Utf8PathBuf::from(p.to_string_lossy().as_ref()),
            std::io::Error::other("not UTF-8"),
        )
        .into()
    })
}

/// The first layer of K holding `rel`.
fn in_layers(k: &KbuildTree, rel: &str) -> Option<Utf8PathBuf> {
    k.layers.iter().map(|l| l.join(rel)).find(|p| p.is_file())
}

impl Installer {
    pub fn resolve(k: &KbuildTree, opts: &InstallOptions) -> Result<Self, Error> {
        let mut me = Installer {
            raw: opts.raw,
            strip: None,
            sign: None,
            compress: None,
            compress_flags: Vec::new(),
            depmod: None,
            system_map: None,
            notes: Vec::new(),
            identity: String::new(),
        };
        if opts.raw {
            me.identity = "raw".into();
            return Ok(me);
        }
        if let Some(s) = opts.strip.as_deref().filter(|s| !s.is_empty()) {
            let args = if s == "1" {
                vec!["--strip-debug".to_string()]
            } else {
                s.split_whitespace().map(str::to_string).collect()
            };
            let strip = strip_tool(&k.make_vars);
            tool(&strip, "strip (INSTALL_MOD_STRIP)")?;
            me.strip = Some((strip, args));
        }
        me.sign = sign::signer(k, opts, &mut me.notes)?;
        me.compress = Compression::of(k);
        if let Some(c) = me.compress {
            tool(
                c.command().0,
                "the module compressor (CONFIG_MODULE_COMPRESS_*)",
            )?;
            let modinst = in_layers(k, "scripts/Makefile.modinst")
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            me.compress_flags = c
                .flags_in(&modinst)
                .unwrap_or_else(|| c.command().1.iter().map(|f| f.to_string()).collect());
        }
        me.depmod = which::which("depmod")
            .ok()
            .or_else(|| {
                let p = std::path::PathBuf::from("/sbin/depmod");
                p.is_file().then_some(p)
            })
            .and_then(|p| Utf8PathBuf::from_path_buf(p).ok());
        if me.depmod.is_none() {
            me.notes
                .push("depmod not found (package kmod): no modules.dep written".into());
        }
        me.system_map = in_layers(k, "System.map");
        let mut h = Sha256::new();
        h.update(format!("{:?}|{:?}|{:?}", me.strip, me.compress, me.compress_flags).as_bytes());
        if let Some(s) = &me.sign {
            h.update(format!("{}|{}|{}", s.hash, s.key, s.cert).as_bytes());
            for f in [s.key.as_str(), s.cert.as_str()] {
                if let Ok(bytes) = std::fs::read(f) {
                    h.update(Sha256::digest(&bytes));
                }
            }
        }
        me.identity = format!("{:x}", h.finalize());
        Ok(me)
    }

    pub fn install(
        &self,
        from: &Utf8Path,
        root: &Utf8Path,
        kernel_dir: &Utf8Path,
        module: &str,
    ) -> Result<InstalledModule, Error> {
        let to = kernel_dir.join(module);
        std::fs::create_dir_all(to.parent().expect("module has a directory"))
            .map_err(|e| KError::io("create", &to, e))?;
        if self.raw {
            if std::fs::hard_link(from, &to).is_err() {
                std::fs::copy(from, &to).map_err(|e| KError::io("copy", from, e))?;
            }
        } else {
            // A copy: the steps below rewrite the file in place.
            std::fs::copy(from, &to).map_err(|e| KError::io("copy", from, e))?;
        }
        if let Some((strip, args)) = &self.strip {
            let mut a = args.clone();
            a.push(to.to_string());
            process::run(
                duct::cmd(strip, &a).stdin_null(),
                &process::display(strip, &a),
                false,
            )?;
        }
        if let Some(s) = &self.sign {
            let a = vec![
                s.hash.clone(),
                s.key.clone(),
                s.cert.to_string(),
                to.to_string(),
            ];
            process::run(
                duct::cmd(s.sign_file.as_std_path(), &a).stdin_null(),
                &process::display(s.sign_file.as_str(), &a),
                false,
            )?;
        }
        let mut path = to.clone();
        if let Some(c) = self.compress {
            let prog = c.command().0;
            let mut a = self.compress_flags.clone();
            a.push(to.to_string());
            process::run(
                duct::cmd(prog, &a).stdin_null(),
                &process::display(prog, &a),
                false,
            )?;
            path = Utf8PathBuf::from(format!("{to}{}", c.suffix()));
        }
        let size = std::fs::metadata(&path)
            .map_err(|e| KError::io("stat", &path, e))?
            .len();
        Ok(InstalledModule {
            module: module.to_string(),
            path: path
                .strip_prefix(root)
                .map_or_else(|_| path.to_string(), |p| p.to_string()),
            size,
            stripped: self.strip.is_some(),
            signer: self.sign.as_ref().map(|s| s.name.clone()),
            compression: self.compress,
        })
    }

    /// Write `modules.order` (in the base build's order) and run `depmod` over
    /// `root/lib/modules/<release>`, as `scripts/depmod.sh` does (`-a`, `-F System.map`, `-e`
    /// when `check_symbols`). Its warnings go to `log`.
    pub fn depmod(
        &self,
        k: &KbuildTree,
        root: &Utf8Path,
        modules: &[String],
        check_symbols: bool,
        log: &mut dyn std::io::Write,
    ) -> Result<(), Error> {
        if self.raw {
            return Ok(());
        }
        let modlib = root.join("lib/modules").join(&k.kernelrelease);
        std::fs::create_dir_all(&modlib).map_err(|e| KError::io("create", &modlib, e))?;
        let order = modules_order(k.modules_order.as_deref(), modules);
        let path = modlib.join("modules.order");
        std::fs::write(&path, order).map_err(|e| KError::io("write", &path, e))?;
        let Some(depmod) = &self.depmod else {
            return Ok(());
        };
        let mut a = vec!["-a".to_string()];
        if let Some(map) = &self.system_map {
            if check_symbols {
                a[0] = "-ae".into();
            }
            a.extend(["-F".into(), map.to_string()]);
        }
        a.extend(["-b".into(), root.to_string(), k.kernelrelease.clone()]);
        let line = process::display(depmod.as_str(), &a);
        let fin = process::run(
            duct::cmd(depmod.as_std_path(), &a).stdin_null(),
            &line,
            false,
        )?;
        let _ = writeln!(log, "$ {line}");
        let _ = log.write_all(fin.stderr.as_bytes());
        Ok(())
    }
}

/// `modules.order` as `scripts/Makefile.modinst` installs it (`kernel/<path>.ko`), in the base
/// build's order, modules the base does not list last.
fn modules_order(base: Option<&[String]>, modules: &[String]) -> String {
    let mut rest: Vec<&String> = modules.iter().collect();
    let mut out = String::new();
    if let Some(order) = base {
        for o in order {
            let ko = format!("{}.ko", o.strip_suffix(".o").unwrap_or(o));
            if let Some(i) = rest.iter().position(|m| **m == ko) {
                rest.remove(i);
                out.push_str(&format!("kernel/{ko}\n"));
            }
        }
    }
    for m in rest {
        out.push_str(&format!("kernel/{m}\n"));
    }
    out
}

/// `$(STRIP)`: `$(CROSS_COMPILE)strip`, or `llvm-strip` for LLVM builds.
fn strip_tool(make_vars: &[String]) -> String {
    let llvm = make_vars.iter().find_map(|v| v.strip_prefix("LLVM="));
    match llvm {
        Some(l) if l.ends_with('/') => format!("{l}llvm-strip"),
        Some(l) if l.starts_with('-') => format!("llvm-strip{l}"),
        Some(_) => "llvm-strip".into(),
        None => {
            let cross = make_vars
                .iter()
                .find_map(|v| v.strip_prefix("CROSS_COMPILE="))
                .unwrap_or("");
            format!("{cross}strip")
        }
    }
}

/// Where `CONFIG_MODULE_SIG_KEY` points: a `pkcs11:` URI as is, an absolute path, or a path
/// relative to the kernel's object tree (Kbuild's `sig-key`). `Err` names where it looked.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_flags_are_kbuilds() {
        assert_eq!(
            Compression::Xz.command(),
            ("xz", &["--check=crc32", "--lzma2=dict=1MiB", "-f"][..])
        );
        assert_eq!(Compression::Gzip.command(), ("gzip", &["-n", "-f"][..]));
        assert_eq!(Compression::Zstd.suffix(), ".zst");
    }

    #[test]
    fn compressor_flags_come_from_the_trees_modinst() {
        let v612 = "quiet_cmd_xz = XZ      $@\n      cmd_xz = $(XZ) --check=crc32 --lzma2=dict=1MiB -f $<\n\
                    quiet_cmd_zstd = ZSTD    $@\n      cmd_zstd = $(ZSTD) --rm -f -q $<\n";
        let v61 =
            "      cmd_zstd = $(ZSTD) -T0 --rm -f -q $<\n      cmd_gzip = $(KGZIP) -n -f $<\n";
        assert_eq!(
            Compression::Xz.flags_in(v612).unwrap(),
            ["--check=crc32", "--lzma2=dict=1MiB", "-f"]
        );
        assert_eq!(
            Compression::Zstd.flags_in(v612).unwrap(),
            ["--rm", "-f", "-q"]
        );
        assert_eq!(
            Compression::Zstd.flags_in(v61).unwrap(),
            ["-T0", "--rm", "-f", "-q"]
        );
        assert_eq!(Compression::Gzip.flags_in(v61).unwrap(), ["-n", "-f"]);
        assert_eq!(Compression::Xz.flags_in(v61), None);
    }

    #[test]
    fn strip_follows_the_toolchain() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(strip_tool(&v(&["ARCH=x86"])), "strip");
        assert_eq!(
            strip_tool(&v(&["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"])),
            "aarch64-linux-gnu-strip"
        );
        assert_eq!(strip_tool(&v(&["LLVM=1"])), "llvm-strip");
        assert_eq!(strip_tool(&v(&["LLVM=-16"])), "llvm-strip-16");
        assert_eq!(
            strip_tool(&v(&["LLVM=/opt/llvm/bin/"])),
            "/opt/llvm/bin/llvm-strip"
        );
    }

    #[test]
    fn modules_order_follows_the_base_build() {
        let base = vec![
            "mm/zsmalloc.o".to_string(),
            "drivers/block/zram/zram.o".into(),
        ];
        let ours = vec![
            "drivers/block/zram/zram.ko".to_string(),
            "extra/new.ko".into(),
            "mm/zsmalloc.ko".into(),
        ];
        assert_eq!(
            modules_order(Some(&base), &ours),
            "kernel/mm/zsmalloc.ko\nkernel/drivers/block/zram/zram.ko\nkernel/extra/new.ko\n"
        );
        assert_eq!(
            modules_order(None, &ours[..1]),
            "kernel/drivers/block/zram/zram.ko\n"
        );
    }
}
