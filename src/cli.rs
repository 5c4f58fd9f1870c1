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
    /// Write the man pages (extmod.1 and one per subcommand) into a directory.
    Man {
        /// Output directory.
        #[arg(default_value = "target/man")]
        dir: camino::Utf8PathBuf,
    },
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
