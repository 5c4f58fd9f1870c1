//! extmod's errors: whole-run errors (bad paths, trees, package files) and per-package refusals,
//! each with a hint and a documented exit code (README "Exit codes").

use camino::Utf8PathBuf;

/// Exit codes of `extmod build` beyond those shared with kbuild-install.
pub mod code {
    pub const PACKAGE_FAILED: u8 = 1;
    pub const UNKNOWN_SYMBOL: u8 = 20;
    pub const NO_MODULE: u8 = 21;
    pub const BUILT_IN: u8 = 22;
    pub const NEEDS_VARIANT: u8 = 23;
    pub const BAD_PACKAGES: u8 = 24;
    /// A module needs exports that neither the base kernel, its package nor its dependencies
    /// provide (found by modpost).
    pub const MISSING_EXPORTS: u8 = 26;
    pub const BAD_PATH: u8 = 25;
    pub const NOT_APPLIED: u8 = 27;
    pub const KERNEL_AFFECTING: u8 = 28;
    pub const NO_KCONFIG: u8 = 29;
    pub const AUDIT_ERRORS: u8 = 30;
    pub const SIGNING: u8 = 40;
    pub const COMPILER_TARGET: u8 = 41;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kbuild(#[from] kbuild_install::Error),

    #[error("path `{path}` contains {what}, which Kbuild cannot handle")]
    BadPath { path: Utf8PathBuf, what: String },

    #[error("package file `{path}`: {why}")]
    PackageFile { path: Utf8PathBuf, why: String },

    #[error("package `{package}` depends on unknown package `{dep}`")]
    UnknownDependency { package: String, dep: String },

    #[error("package dependency cycle: {0}")]
    Cycle(String),

    #[error("no packages given")]
    NoPackages,

    #[error("{0}")]
    Usage(String),

    #[error(
        "--objdir `{objdir}` and --dest `{dest}` overlap (the same directory, or one inside the other)"
    )]
    Overlap {
        objdir: Utf8PathBuf,
        dest: Utf8PathBuf,
    },

    #[error("`{path}` exists and was not made by extmod for {what}")]
    NotOurs { path: Utf8PathBuf, what: String },

    #[error(
        "Kbuild tree `{0}` cannot make configuration variants (no manifest, Kconfig files or scripts/kconfig/conf)"
    )]
    NoKconfig(Utf8PathBuf),

    #[error(
        "compiler `{cc}` generates code for `{triple}`, but Kbuild tree `{tree}` is for ARCH={srcarch}"
    )]
    CompilerTarget {
        cc: String,
        triple: String,
        tree: Utf8PathBuf,
        srcarch: String,
    },

    #[error("cannot {what} `{path}`: {why}")]
    Signing {
        what: String,
        path: String,
        why: String,
    },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Kbuild(e) => e.exit_code(),
            Error::BadPath { .. } => code::BAD_PATH,
            Error::PackageFile { .. }
            | Error::UnknownDependency { .. }
            | Error::Cycle(_)
            | Error::NoPackages => code::BAD_PACKAGES,
            Error::NoKconfig(_) => code::NO_KCONFIG,
            Error::Signing { .. } => code::SIGNING,
            Error::CompilerTarget { .. } => code::COMPILER_TARGET,
            Error::Usage(_) => kbuild_install::exit::USAGE,
            Error::Overlap { .. } => kbuild_install::exit::DEST_INSIDE_TREE,
            Error::NotOurs { .. } => kbuild_install::exit::DEST_EXISTS,
        }
    }

    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::Kbuild(e) => return e.hint(),
            Error::BadPath { .. } => {
                "Kbuild splits make variables on spaces and treats `:` and `%` as rule syntax; use a path without them".into()
            }
            Error::PackageFile { .. } => {
                "see `extmod build --help` for the format: [[package]] name, kconfig, files, depends".into()
            }
            Error::UnknownDependency { .. } => "define that package in the same file, or drop it from `depends`".into(),
            Error::Cycle(_) => "break the cycle: a package cannot depend on itself through others".into(),
            Error::NoPackages => "name CONFIG_ symbols or pass --packages FILE".into(),
            Error::Usage(_) => "see --help".into(),
            Error::NoKconfig(_) => "make the Kbuild tree with `extmod kbuild-install`, which ships Kconfig and conf".into(),
            Error::CompilerTarget { srcarch, .. } => format!(
                "put the cross compiler for {srcarch} on PATH (a tree without a manifest takes CROSS_COMPILE from the environment), or use the Kbuild tree of this compiler's kernel"
            ),
            Error::Signing { .. } => {
                "give the kernel's private key and certificate with --sign-key/--sign-cert (a `pkcs11:` URI works too), or --no-sign".into()
            }
            Error::Overlap { .. } => "give D and OUT separate directories, e.g. build/obj and build/out".into(),
            Error::NotOurs { .. } => "extmod replaces only what it made; move it away or choose another directory".into(),
        })
    }
}

/// Reject paths Kbuild cannot handle in `M=`, `-C` or `KBUILD_EXTRA_SYMBOLS`.
pub fn check_kbuild_path(path: &camino::Utf8Path) -> Result<(), Error> {
    let what = if path.as_str().contains(char::is_whitespace) {
        "whitespace"
    } else if path.as_str().contains(':') {
        "`:`"
    } else if path.as_str().contains('%') {
        "`%`"
    } else if path.as_str().contains(['#', '$', '\'', '"', '\\']) {
        "shell or make metacharacters"
    } else {
        return Ok(());
    };
    Err(Error::BadPath {
        path: path.to_owned(),
        what: what.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbuild_rejects_these_paths() {
        for bad in ["/a b", "/a:b", "/a%b", "/a$b"] {
            assert!(check_kbuild_path(bad.into()).is_err(), "{bad}");
        }
        assert!(check_kbuild_path("/tmp/x-y_z.1/+".into()).is_ok());
    }
}
