//! Command-line arguments of `kbuild-install`, shared by the standalone binary and
//! `extmod kbuild-install`.

use crate::error::Error;
use crate::install::{Event, Options};
use camino::Utf8PathBuf;

pub const ABOUT: &str = "Extract a self-sufficient Kbuild tree from a configured and built kernel";

pub const LONG_ABOUT: &str = "\
Extract a self-sufficient Kbuild tree from a configured and built kernel.

Terms:
  source tree (S)   the kernel sources, `srctree` in Kbuild. Read only.
  object tree (O)   where the kernel was configured and built (`make O=...`); the same as S
                    for an in-source build. Must hold .config, include/config/auto.conf and
                    Module.symvers (the exported symbols and their CRCs for MODVERSIONS).
  Kbuild tree       what external modules are built against: `make -C DEST M=<dir> modules`.

DEST holds what the kernel's scripts/package/install-extmod-build ships (top Makefile, arch
Makefiles and headers, include/, scripts/ with its host programs, generated headers,
Module.symvers, auto.conf, kernel.release), plus what config variants need: .config,
include/config/auto.conf.cmd (the toolchain environment Kconfig saw), every Kconfig file the
architecture parses, a built scripts/kconfig/conf, System.map, modules.order and
modules.builtin, and a manifest, extmod-kbuild.json.

Source files are hardlinked when DEST is on the same filesystem (tools that change sources
replace files, so the tree keeps the old content); everything taken from the object tree is
copied, because the next `make` rewrites those files in place. DEST is built in a temporary
sibling and renamed into place, so it is never left half-written. At the end a tiny module is
built against DEST and its vermagic compared with the kernel's.";

pub const AFTER_HELP: &str = "\
Examples:
  extmod kbuild-install --srctree ~/linux --objtree ~/build/x86 ~/kbuild/6.12
  kbuild-install --srctree /usr/src/linux --objtree /usr/src/linux --copy /srv/kbuild";

#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Kernel source tree (S); read only.
    #[arg(long, short = 's', value_name = "S")]
    pub srctree: Utf8PathBuf,
    /// Configured and built object tree (O=); may equal S for in-source builds.
    #[arg(long, short = 'o', value_name = "O")]
    pub objtree: Utf8PathBuf,
    /// Where to create the Kbuild tree; must be outside S and O.
    #[arg(value_name = "DEST")]
    pub dest: Utf8PathBuf,
    /// Copy every file instead of hardlinking source files.
    #[arg(long)]
    pub copy: bool,
    /// Replace DEST if it is a Kbuild tree made by kbuild-install.
    #[arg(long)]
    pub force: bool,
    /// Skip the self-test (building a tiny module against DEST).
    #[arg(long)]
    pub no_verify: bool,
    /// Print the manifest as JSON on stdout instead of progress lines.
    #[arg(long)]
    pub json: bool,
    /// Make variables the kernel was built with that reach the compiler (KCFLAGS=...,
    /// KCPPFLAGS=..., LLVM=..., CC=...), as given on its make command line; recorded in the
    /// manifest and passed to every module build. Checked against the base build's own
    /// compile commands.
    #[arg(value_name = "VAR=VALUE")]
    pub make_vars: Vec<String>,
}

impl InstallArgs {
    pub fn options(&self) -> Options {
        Options {
            srctree: self.srctree.clone(),
            objtree: self.objtree.clone(),
            dest: self.dest.clone(),
            copy: self.copy,
            force: self.force,
            verify: !self.no_verify,
            make_vars: self.make_vars.clone(),
        }
    }
}

/// Render one event as a plain status line (right-aligned verb, as cargo does).
pub fn event_line(event: &Event) -> String {
    match event {
        Event::Checked {
            kernelrelease,
            srcarch,
        } => format!("{:>12} kernel {kernelrelease} ({srcarch})", "Checked"),
        Event::Collected { files } => format!("{:>12} {files} files", "Collected"),
        Event::Populated { counts } => format!(
            "{:>12} {} hardlinked, {} copied ({:.1} MiB), {} symlinks, {} Kconfig files",
            "Populated",
            counts.linked,
            counts.copied,
            counts.bytes as f64 / (1024.0 * 1024.0),
            counts.symlinks,
            counts.kconfig_files
        ),
        Event::SelfTestStarted => format!("{:>12} building a test module", "Verifying"),
        Event::SelfTestPassed { vermagic } => format!("{:>12} vermagic `{vermagic}`", "Verified"),
        Event::Installed { dest } => format!("{:>12} {dest}", "Installed"),
    }
}

/// Write `text` to standard output and flush. A closed pipe (`| head`) ends the process as the
/// shell expects (by SIGPIPE, status 141), quietly; any other failure (a full disk) is reported
/// and ends it with the I/O exit code. Never a panic.
pub fn out(text: &str) {
    use std::io::Write;
    let mut so = std::io::stdout().lock();
    let r = so.write_all(text.as_bytes()).and_then(|()| so.flush());
    drop(so);
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            // SAFETY: restoring the default action and raising the signal is what a C program
            // writing to a closed pipe gets.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
            std::process::exit(141);
        }
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(i32::from(crate::exit::IO));
        }
    }
}

/// [`out`] with a newline.
pub fn outln(text: &str) {
    out(&format!("{text}\n"));
}

/// `error: <cause>` then `  hint: <hint>` on stderr.
pub fn print_error(prog: &str, err: &Error) {
    eprintln!("{prog}: error: {err}");
    if let Some(h) = err.hint() {
        eprintln!("  hint: {h}");
    }
}

/// Run an installation from parsed arguments; returns the process exit code.
pub fn run(prog: &str, args: &InstallArgs) -> u8 {
    crate::process::install_interrupt_handler();
    let json = args.json;
    let mut on_event = |e: Event| {
        if !json {
            eprintln!("{}", event_line(&e));
        }
    };
    match crate::install::install(&args.options(), &mut on_event) {
        Ok(manifest) => {
            if json {
                outln(&serde_json::to_string_pretty(&manifest).expect("serializes"));
            }
            0
        }
        Err(e) => {
            print_error(prog, &e);
            e.exit_code()
        }
    }
}
