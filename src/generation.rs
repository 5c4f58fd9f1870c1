//! How a Kbuild generation builds a package's modules so that they are the in-tree ones: the
//! one place that knows where make writes and what names it gives.
//!
//! Every package gets an overlay root `D/<pkg>/tree` (see [`crate::overlay`]): the Kbuild tree
//! and the source tree joined, with the package's directories real. What differs between
//! generations is how make is pointed at it.
//!
//! - **Up to 6.12** ([`Generation::InTreeDirs`]): `make -C <tree> M=drivers/net dummy.ko`. A
//!   relative `M` is taken from the objtree (the overlay), objects are written into the
//!   overlay's real `drivers/net/`, and Kbuild names them `drivers/net/dummy` as in-tree.
//! - **Since 6.13** ([`Generation::OutputDir`]): Kbuild changes into the output directory,
//!   `srcroot := $(realpath $(M))` and every name is relative to M: `M=drivers/net` would make
//!   `dummy` (Module.symvers, modules.order, `KBUILD_MODFILE`) and `__FILE__` `dummy.c`
//!   (`-fmacro-prefix-map=$(srcroot)/=`). So M is the overlay root itself, the goals are the
//!   in-tree paths (`drivers/net/dummy.ko`, Kbuild descends from the top `Kbuild` as the
//!   in-tree build does) and `MO=D/<pkg>/out` takes the objects: names, `KBUILD_MODFILE` and
//!   `__FILE__` are then the in-tree ones. Kbuild refuses a source root holding a
//!   `modules.order`, so the overlay does not link the Kbuild tree's (see [`Self::hides`]).
//!
//! Either way the overlay and the output directory are extmod's own (inside D); nothing is
//! written into the source tree or the Kbuild tree.

use camino::{Utf8Path, Utf8PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generation {
    /// Kernels up to 6.12: objects in the `M` directory, names relative to the objtree.
    InTreeDirs,
    /// Kernels since 6.13: objects in `MO`, names relative to `M`.
    OutputDir,
}

/// The first kernel whose Kbuild builds external modules in an output directory.
const OUTPUT_DIR_SINCE: (u32, u32) = (6, 13);

impl Generation {
    /// The generation of a kernel release (`7.3.4+deb13-amd64`); releases that do not start
    /// with a version are taken as the newest generation.
    pub fn of_release(release: &str) -> Self {
        match crate::kbuild::major_minor(release) {
            Some(v) if v < OUTPUT_DIR_SINCE => Generation::InTreeDirs,
            _ => Generation::OutputDir,
        }
    }

    /// Where make writes the package's objects: the overlay, or `D/<pkg>/out`.
    pub fn out_root(self, tree: &Utf8Path, pkg_dir: &Utf8Path) -> Utf8PathBuf {
        match self {
            Generation::InTreeDirs => tree.to_owned(),
            Generation::OutputDir => pkg_dir.join("out"),
        }
    }

    /// make's arguments that place a build of modules in `dir`: `-C`, `M` (and `MO`).
    pub fn placement(self, tree: &Utf8Path, out: &Utf8Path, dir: &str) -> Vec<String> {
        let mut args = vec!["-C".to_string(), tree.to_string()];
        match self {
            Generation::InTreeDirs => args.push(format!("M={dir}")),
            Generation::OutputDir => {
                args.push(format!("M={tree}"));
                args.push(format!("MO={out}"));
            }
        }
        args
    }

    /// make's goals for the modules `names` (file names) of `dir`.
    pub fn goals(self, dir: &str, names: &[String]) -> Vec<String> {
        match self {
            Generation::InTreeDirs => names.to_vec(),
            Generation::OutputDir => names.iter().map(|g| format!("{dir}/{g}")).collect(),
        }
    }

    /// The Module.symvers one build of the modules in `dir` writes (only that build's
    /// modules: a single-target build rewrites it).
    pub fn written_symvers(self, out: &Utf8Path, dir: &str) -> Utf8PathBuf {
        match self {
            Generation::InTreeDirs => out.join(dir).join("Module.symvers"),
            Generation::OutputDir => out.join("Module.symvers"),
        }
    }

    /// The directory Kbuild's `Makefile.modfinal` writes `.module-common.o` into for a build of
    /// the modules of `dir`: the external module directory up to 6.12, the output root since.
    pub fn common_object_dir(self, out: &Utf8Path, dir: &str) -> Utf8PathBuf {
        match self {
            Generation::InTreeDirs => out.join(dir),
            Generation::OutputDir => out.to_path_buf(),
        }
    }

    /// Top-level entries of the Kbuild tree the overlay must not show: a `modules.order` at
    /// the source root stops a 6.13+ external build ("The external module source tree is not
    /// clean"), and a build output make would find there through `VPATH` would be taken (and
    /// rewritten) instead of the output directory's own.
    pub fn hides(self) -> &'static [&'static str] {
        match self {
            Generation::InTreeDirs => &[],
            Generation::OutputDir => &["modules.order", ".module-common.o"],
        }
    }

    /// Whether make needs `ARCH_CORE`, `ARCH_LIB` and `ARCH_DRIVERS` from extmod: since 6.13
    /// an external build with M at the overlay root descends from the top `Kbuild`, whose
    /// `obj-y += $(ARCH_LIB)` (`lib/`, `arch/x86/lib/`) and the others the top Makefile sets only
    /// for in-tree builds; without them `lib/crc/crc16.o` would be compiled at the top as
    /// built-in code. extmod passes the values Kbuild's own evaluation of the architecture's
    /// Makefile gives under the package's configuration.
    pub fn needs_arch_dirs(self) -> bool {
        self == Generation::OutputDir
    }

    /// Files to create in the output directory before make runs, so that make takes them there
    /// rather than through `VPATH` in the overlay: since 6.13 the overlay is both `$(srcroot)`
    /// (VPATH) and `$(objtree)`, whose `Module.symvers` (the base exports modpost reads) has the
    /// name of the output modpost writes. An existing local file wins over directory search.
    pub fn local_outputs(self) -> &'static [&'static str] {
        match self {
            Generation::InTreeDirs => &[],
            Generation::OutputDir => &["Module.symvers"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_follows_the_kernel_version() {
        assert_eq!(
            Generation::of_release("6.1.0-37-amd64"),
            Generation::InTreeDirs
        );
        assert_eq!(
            Generation::of_release("6.12.118+deb12-amd64"),
            Generation::InTreeDirs
        );
        assert_eq!(Generation::of_release("6.13.0"), Generation::OutputDir);
        assert_eq!(
            Generation::of_release("7.3.4+deb13-amd64"),
            Generation::OutputDir
        );
        assert_eq!(Generation::of_release("5.15.0"), Generation::InTreeDirs);
    }

    #[test]
    fn make_is_pointed_at_the_overlay() {
        let (tree, out) = (Utf8Path::new("/d/p/tree"), Utf8Path::new("/d/p/out"));
        let goals = vec!["dummy.ko".to_string()];
        assert_eq!(
            Generation::InTreeDirs.placement(tree, out, "drivers/net"),
            ["-C", "/d/p/tree", "M=drivers/net"]
        );
        assert_eq!(
            Generation::InTreeDirs.goals("drivers/net", &goals),
            ["dummy.ko"]
        );
        assert_eq!(
            Generation::OutputDir.placement(tree, out, "drivers/net"),
            ["-C", "/d/p/tree", "M=/d/p/tree", "MO=/d/p/out"]
        );
        assert_eq!(
            Generation::OutputDir.goals("drivers/net", &goals),
            ["drivers/net/dummy.ko"]
        );
        assert_eq!(
            Generation::OutputDir.written_symvers(out, "drivers/net"),
            "/d/p/out/Module.symvers"
        );
    }
}
