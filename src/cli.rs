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
    /// Generate a configuration variant with the kernel's own Kconfig and classify the change.
    #[command(long_about = VARIANT_LONG_ABOUT)]
    Variant(VariantArgs),
    /// Which modules a CONFIG symbol builds (or which symbols build a module), and what gates them.
    #[command(long_about = WHICH_LONG_ABOUT)]
    Which(WhichArgs),
    /// The whole symbol -> module table for every tristate symbol.
    Map(MapArgs),
    /// Check a package set against the kernel: unpackaged modules, missing DEPENDS,
    /// kernel-affecting KCONFIG, default reliance, FILES and AUTOLOAD mistakes.
    #[command(long_about = AUDIT_LONG_ABOUT)]
    Audit(AuditArgs),
    /// Write the man pages (extmod.1 and one per subcommand) into a directory.
    Man {
        /// Output directory.
        #[arg(default_value = "target/man")]
        dir: camino::Utf8PathBuf,
    },
    /// Print a shell completion script (bash: `extmod completions bash >
    /// /usr/share/bash-completion/completions/extmod`; zsh: into a `_extmod` file on $fpath).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

pub const BUILD_LONG_ABOUT: &str = "\
Build packages of in-tree kernel modules for an already-built kernel.

For each package, extmod runs `make -C <overlay> M=<dir> <module>.ko` in an object directory of
its own (D/<package>/): an overlay whose directories along the module's path are real and
everything else links into the Kbuild tree (K) and the source tree (S). Nothing is ever written
into K or S. Module names, symbol versions (MODVERSIONS CRCs) and .text match the in-tree build.

A package is a set of CONFIG symbols (Kconfig options; bare tristate symbols mean `=m`, bare
bool options `=y`, or an explicit `CONFIG_X=value`), the .ko files they build (derived from the
kernel's Makefiles when not given), and the packages it depends on. When the base configuration
does not satisfy the package, a configuration variant is generated with the kernel's own Kconfig
(see `extmod variant --help`) and the package is built against it; a variant that changes
built-in code is refused, naming each symbol, unless --allow-kernel-change. A bare symbol that is
built in (`=y`), unknown, or builds no module is refused with the reason.

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

pub const VARIANT_LONG_ABOUT: &str = "\
Generate a configuration variant: the base .config of a Kbuild tree made by `extmod
kbuild-install`, plus the requested settings, run through the kernel's own Kconfig
(scripts/kconfig/conf --olddefconfig, then --syncconfig) with the toolchain environment recorded
in the tree. Writes .config, include/config/auto.conf (+ per-symbol files),
include/generated/autoconf.h and rustc_cfg into DIR; never writes into K or S.

Passing CONFIG_X=m on make's command line is not a variant: C code reads autoconf.h, and no
`select`, sub-option or default is applied. A variant is what the kernel's build would see.

The difference from the base is classified:
  module-local       new =m symbols; =y/value sub-options used only inside the directories of
                     the modules requested (e.g. --set CONFIG_SQUASHFS=m --set
                     CONFIG_SQUASHFS_XZ=y: name the module's own symbol too)
  kernel-affecting   any other change of a =y, string, int or hex symbol: built-in code, struct
                     layouts, global flags; a module built with it may not match the kernel
  toolchain drift    what Kconfig recomputes differently on this machine with no request at all
                     (compiler, assembler, linker, pahole versions and capabilities)
  not applied        a request Kconfig rejected: unmet `depends on` (with the chain), a bool
                     asked as =m, a symbol forced =y by a select, an unknown symbol

Variants are cached by their inputs; asking again costs almost nothing. Exit code 0 when every
request applied and nothing is kernel-affecting, 27 when a request was not applied, 28 when the
variant is kernel-affecting.";

pub const WHICH_LONG_ABOUT: &str = "\
Which modules does CONFIG_X build, and what does it need?

For each symbol: its Kconfig type (tristate symbols can be modules; bool options gate code in
vmlinux), its value in the base configuration of K, the modules (.ko paths relative to the tree)
it builds when set to m, the objects of each module (composite `foo-y := a.o b.o` parts, with the
option that adds optional ones), and the gating chain: every parent directory's
`obj-$(CONFIG_P) += dir/` line that must be enabled for Kbuild to enter the module's directory.

Answers come from a textual index of the kernel's Kconfig files and Makefiles (cached; rebuilt
when one of them changes). Lines inside make conditionals (ifeq/ifdef) are marked uncertain.

With --module drivers/net/dummy.ko (or just dummy): the symbols that build that module.";

#[derive(Debug, Clone, clap::Args)]
pub struct WhichArgs {
    /// Kbuild tree (K), for the base configuration's values.
    #[arg(long, short = 'K', value_name = "K")]
    pub kbuild: camino::Utf8PathBuf,
    /// Kernel source tree (S) whose Kconfig files and Makefiles are read.
    #[arg(long, short = 'S', value_name = "S")]
    pub srctree: camino::Utf8PathBuf,
    /// Symbols to look up (CONFIG_X or X).
    #[arg(value_name = "CONFIG_X")]
    pub symbols: Vec<String>,
    /// The reverse question: which symbols build this module (path or name).
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MapArgs {
    /// Kbuild tree (K), for the base configuration's values.
    #[arg(long, short = 'K', value_name = "K")]
    pub kbuild: camino::Utf8PathBuf,
    /// Kernel source tree (S) whose Kconfig files and Makefiles are read.
    #[arg(long, short = 'S', value_name = "S")]
    pub srctree: camino::Utf8PathBuf,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub const AUDIT_LONG_ABOUT: &str = "\
Check a package set against the kernel, the way a distribution's maintainers would:

  unpackaged            built modules (K's modules.order) that no package owns
                        (\"WARNING: unpackaged kernel module found: foo/bar.ko\"); --catch-all NAME
                        prints a package definition that owns them all
  missing-dependency    a package's module needs (modinfo depends=) a module that lives in a
                        package outside its DEPENDS closure, or in no package
  kernel-affecting      KCONFIG that would change built-in code (a tristate forced =y, or a
                        =y/value option used outside the package's own module directories)
  default-reliance      modules that come from a symbol the package does not name, only through
                        its default (OpenWrt's kmod-fs-nfs-v3 case)
  files-missing/-extra  FILES that the kernel's Makefiles say are wrong, or modules the KCONFIG
                        builds that FILES does not list
  autoload-not-in-files AUTOLOAD names that are not among FILES

FILE is extmod's TOML package format or OpenWrt's package table (tab-separated, with the
columns package, depends_kmods, kconfig_6.12, files_6.12, files_conditional_6.12,
autoload_6.12), detected by its header. Module dependencies come from --modules DIR (a
modules.dep, or .ko files), else from the object tree K was made from. Exit code 30 when an
error-level finding exists.";

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Kbuild tree (K): base configuration and module list.
    #[arg(long, short = 'K', value_name = "K")]
    pub kbuild: camino::Utf8PathBuf,
    /// Kernel source tree (S).
    #[arg(long, short = 'S', value_name = "S")]
    pub srctree: camino::Utf8PathBuf,
    /// The package set (TOML or OpenWrt table).
    #[arg(long, value_name = "FILE")]
    pub packages: camino::Utf8PathBuf,
    /// Where module dependencies come from: a dir with modules.dep, or .ko files.
    #[arg(long, value_name = "DIR")]
    pub modules: Option<camino::Utf8PathBuf>,
    /// Print a package definition owning every unpackaged module, named NAME.
    #[arg(long, value_name = "NAME")]
    pub catch_all: Option<String>,
    /// Print findings as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct VariantArgs {
    /// Kbuild tree made by `extmod kbuild-install` (it ships Kconfig files and conf).
    #[arg(long, short = 'K', value_name = "K")]
    pub kbuild: camino::Utf8PathBuf,
    /// Kernel source tree, to find where changed options are used (without it every =y change
    /// counts as kernel-affecting).
    #[arg(long, short = 'S', value_name = "S")]
    pub srctree: Option<camino::Utf8PathBuf>,
    /// A setting: CONFIG_X=m, CONFIG_Y=y, CONFIG_Z=n, CONFIG_W=value (repeatable).
    #[arg(long = "set", value_name = "CONFIG_X=V", required = true)]
    pub sets: Vec<String>,
    /// Where to write the variant (.config, include/config, include/generated).
    #[arg(long, value_name = "DIR")]
    pub out: camino::Utf8PathBuf,
    /// Print the classification as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

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
    /// Build packages whose configuration variant changes built-in code anyway; they are
    /// labelled as not matching the running kernel.
    #[arg(long)]
    pub allow_kernel_change: bool,
    /// Run modpost as for an out-of-tree module (`-e`): no `intree: Y` modinfo, so loading the
    /// module taints the kernel (O). Default: as the in-tree build does.
    #[arg(long)]
    pub external: bool,
    /// Strip staged modules like INSTALL_MOD_STRIP: `1` for --strip-debug, or strip's options
    /// [default: $INSTALL_MOD_STRIP, else not stripped, as `make modules_install`].
    #[arg(long, value_name = "OPTS", allow_hyphen_values = true)]
    pub strip: Option<String>,
    /// Private key for signing (file or `pkcs11:` URI) [default: where CONFIG_MODULE_SIG_KEY
    /// points, relative to the kernel's object tree]. Never copied anywhere.
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<String>,
    /// X.509 certificate of the signing key [default: certs/signing_key.x509 of the build].
    #[arg(long, value_name = "CERT")]
    pub sign_cert: Option<camino::Utf8PathBuf>,
    /// Do not sign, even when the configuration has CONFIG_MODULE_SIG_ALL.
    #[arg(long, conflicts_with_all = ["sign_key", "sign_cert"])]
    pub no_sign: bool,
    /// Stage each .ko exactly as the build wrote it: no strip, signature, compression or
    /// depmod (what OpenWrt's KernelPackage copies from the kernel tree).
    #[arg(long, conflicts_with_all = ["strip", "sign_key", "sign_cert"])]
    pub raw: bool,
    /// Also install every package's modules into DIR/lib/modules/<release>/ with modules.order,
    /// modules.builtin and depmod, like `make modules_install INSTALL_MOD_PATH=DIR`.
    #[arg(long, value_name = "DIR")]
    pub install_mod_path: Option<camino::Utf8PathBuf>,
    /// Fail at once (exit 31) when another run is building one of these packages in D or OUT,
    /// instead of waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// Run the compiler through a launcher: `ccache`, `sccache`, `distcc` or a path, one word
    /// without shell or make metacharacters (default: $EXTMOD_CC_LAUNCHER). make gets `CC="<launcher> <compiler>"`; Kbuild still
    /// sees the kernel's compiler (its version text is the same), and the launcher is part of
    /// no freshness key: a later build without it is a no-op when nothing else changed.
    #[arg(long, value_name = "CMD")]
    pub cc_launcher: Option<String>,
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
