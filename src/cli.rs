//! The command line: `extmod <subcommand>`.

use clap::{Parser, Subcommand};
use kbuild_install::cli::InstallArgs;

pub const LONG_ABOUT: &str = "\
extmod builds Linux kernel modules for an already-built kernel, one package at a time, without
touching the kernel's source tree, its build, or its configuration.

A typical flow:
  1. extmod kbuild-install --srctree S --objtree O KBUILD
         extract a reusable Kbuild tree from the built kernel (once per kernel build)
  2. extmod build --kbuild KBUILD --srctree S --objdir D --dest OUT CONFIG_DUMMY ...
         build the modules of each package in its own object directory

Kbuild terms used throughout: the source tree (S, `srctree`), the object tree (O, where `make O=`
wrote the kernel build), the Kbuild tree (what `make -C <tree> M=<dir>` builds external modules
against), Module.symvers (exported symbols with their MODVERSIONS CRCs), vermagic (the release
and flags a module must match to load).";

#[derive(Debug, Parser)]
#[command(name = "extmod", version, about = "Build kernel modules for an already-built kernel, one package at a time", long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Extract a self-sufficient Kbuild tree from a configured and built kernel.
    #[command(
        long_about = kbuild_install::cli::LONG_ABOUT,
        after_help = kbuild_install::cli::AFTER_HELP
    )]
    KbuildInstall(InstallArgs),
    /// Build packages of in-tree modules in split object directories.
    #[command(long_about = BUILD_LONG_ABOUT, after_help = BUILD_AFTER_HELP)]
    Build(BuildArgs),
    /// Write the man pages (extmod.1 and one per subcommand) into a directory.
    Man {
        /// Output directory.
        #[arg(default_value = "target/man")]
        dir: camino::Utf8PathBuf,
    },
}

pub const BUILD_LONG_ABOUT: &str = "\
Build packages of in-tree kernel modules for an already-built kernel.

For each package, extmod runs `make -C <overlay> M=<dir> <module>.ko` in an object directory of
its own (D/<package>/): an overlay whose directories along the module's path are real and
everything else links into the Kbuild tree (K) and the source tree (S). Nothing is ever written
into K or S. Module names, symbol versions (MODVERSIONS CRCs) and .text match the in-tree build.

A package is a set of CONFIG symbols (Kconfig options) that are `=m` (module) in the base
configuration, the .ko files they build (derived from the kernel's Makefiles when not given),
and the packages it depends on. Symbols that are built in (`=y`), not enabled, or that build no
module (bool options) are refused with the reason.

Results go to OUT/<package>/lib/modules/<release>/kernel/<path>.ko, like `make
modules_install`, with the package's Module.symvers; ready for `depmod -b`. Packages whose
inputs (sources, headers, flags, configuration, Kbuild tree) did not change since their last
build are reported fresh without running make. All makes share one GNU make jobserver of -j
slots (or make's own when extmod runs under make, from a `+` recipe line).";

pub const BUILD_AFTER_HELP: &str = "\
Package file (TOML):
  [[package]]
  name = \"kmod-zram\"
  kconfig = [\"CONFIG_ZRAM\"]
  files = [\"drivers/block/zram/zram.ko\"]    # optional
  depends = [\"kmod-lib-lzo\"]                # optional

Examples:
  extmod build --kbuild ~/kbuild/6.12 --srctree ~/linux --objdir /tmp/d --dest out CONFIG_DUMMY
  extmod build -K kb -S linux -D objs -O out --packages kmods.toml -j4 --keep-going
  extmod build ... --dry-run    # print the make command lines";

#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Kbuild tree (K): from `extmod kbuild-install`, install-extmod-build, a linux-headers
    /// package, or a kernel object dir.
    #[arg(long, short = 'K', value_name = "K")]
    pub kbuild: camino::Utf8PathBuf,
    /// Kernel source tree (S) the module sources come from; read only.
    #[arg(long, short = 'S', value_name = "S")]
    pub srctree: camino::Utf8PathBuf,
    /// Object directory (D): D/<package>/ holds everything a package's build writes.
    #[arg(long, short = 'D', value_name = "D")]
    pub objdir: camino::Utf8PathBuf,
    /// Output (OUT): OUT/<package>/lib/modules/<release>/kernel/... and Module.symvers.
    #[arg(long, short = 'O', value_name = "OUT")]
    pub dest: camino::Utf8PathBuf,
    /// Ad-hoc packages, one per symbol (e.g. CONFIG_DUMMY).
    #[arg(value_name = "CONFIG_X")]
    pub symbols: Vec<String>,
    /// Package definitions (TOML), see below.
    #[arg(long, value_name = "FILE")]
    pub packages: Option<camino::Utf8PathBuf>,
    /// Jobserver slots shared by all makes [default: make's jobserver, else the number of cores].
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Build the other packages when one fails.
    #[arg(long, short = 'k')]
    pub keep_going: bool,
    /// Print the make command lines per package; build nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Print results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_explains_kbuild_terms() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("kbuild-install")
            .unwrap()
            .render_long_help()
            .to_string();
        for term in [
            "source tree (S)",
            "object tree (O)",
            "Module.symvers",
            "vermagic",
            "--force",
        ] {
            assert!(help.contains(term), "kbuild-install --help lacks {term}");
        }
    }
}
