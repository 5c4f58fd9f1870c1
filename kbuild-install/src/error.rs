//! Errors of the kbuild-install component, each with a hint and a documented exit code.

use camino::Utf8PathBuf;
use std::process::ExitStatus;

/// Exit codes shared by `kbuild-install` and `extmod` (see README "Exit codes").
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 2;
    pub const NOT_KERNEL_SOURCE: u8 = 10;
    pub const NOT_CONFIGURED: u8 = 11;
    pub const NOT_BUILT: u8 = 12;
    pub const VERSION_MISMATCH: u8 = 13;
    pub const DEST_INSIDE_TREE: u8 = 14;
    pub const DEST_EXISTS: u8 = 15;
    pub const DEST_NOT_WRITABLE: u8 = 16;
    pub const MISSING_TOOL: u8 = 17;
    pub const SELF_TEST: u8 = 18;
    pub const NOT_KBUILD_TREE: u8 = 19;
    pub const BAD_PATH: u8 = 25;
    pub const LOCKED: u8 = 31;
    pub const IO: u8 = 70;
    pub const COMMAND: u8 = 71;
    pub const INTERRUPTED: u8 = 130;
}

/// Everything that can go wrong while inspecting kernel trees or installing a Kbuild tree.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("make variable `{var}`: {why}")]
    BadMakeVar { var: String, why: String },

    #[error("`{path}` is not a kernel source tree ({why})")]
    NotKernelSource { path: Utf8PathBuf, why: String },

    #[error("object tree `{path}` is not configured: `{missing}` is missing")]
    NotConfigured { path: Utf8PathBuf, missing: String },

    #[error("object tree `{path}` is not built: `{missing}` is missing")]
    NotBuilt { path: Utf8PathBuf, missing: String },

    #[error(
        "source tree `{srctree}` is version {src_version} but object tree `{objtree}` was built as {obj_release}"
    )]
    VersionMismatch {
        srctree: Utf8PathBuf,
        src_version: String,
        objtree: Utf8PathBuf,
        obj_release: String,
    },

    #[error("destination `{dest}` is inside the {which} tree `{tree}`")]
    DestInsideTree {
        dest: Utf8PathBuf,
        which: &'static str,
        tree: Utf8PathBuf,
    },

    #[error("the {which} tree `{tree}` is inside destination `{dest}`")]
    TreeInsideDest {
        dest: Utf8PathBuf,
        which: &'static str,
        tree: Utf8PathBuf,
    },

    #[error("destination `{0}` already exists")]
    DestExists(Utf8PathBuf),

    #[error("destination `{0}` exists and is not a kbuild tree made by kbuild-install")]
    DestNotOurs(Utf8PathBuf),

    #[error("destination directory `{path}` is not writable: {source}")]
    DestNotWritable {
        path: Utf8PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{tool}` not found in PATH (needed as {role})")]
    MissingTool { tool: String, role: &'static str },

    #[error("self-test of `{dest}` failed: {why}")]
    SelfTest { dest: Utf8PathBuf, why: String },

    #[error("`{0}` is not a Kbuild tree (no Makefile, scripts/Makefile.build or Module.symvers)")]
    NotKbuildTree(Utf8PathBuf),

    #[error("path `{path}` contains {what}, which Kbuild and the shell cannot handle")]
    BadPath { path: Utf8PathBuf, what: String },

    #[error("manifest `{path}` is damaged: {why}")]
    BadManifest { path: Utf8PathBuf, why: String },

    #[error("`{path}` does not match `{against}`: {why}")]
    ConfigMismatch {
        path: Utf8PathBuf,
        against: Utf8PathBuf,
        why: String,
    },

    #[error("`{path}` is in use by another run ({holder})")]
    Locked { path: Utf8PathBuf, holder: String },

    #[error("`{command}` failed ({status}){}", stderr_tail(.stderr))]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("cannot {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: Utf8PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("interrupted")]
    Interrupted,
}

fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(12)..];
    format!("\n--- stderr\n{}", tail.join("\n"))
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<Utf8PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn command(command: impl Into<String>, status: Option<ExitStatus>, stderr: String) -> Self {
        Error::Command {
            command: command.into(),
            status: status.map_or_else(|| "could not start".to_string(), |s| s.to_string()),
            stderr,
        }
    }

    /// The process exit code documented for this class of error.
    pub fn exit_code(&self) -> u8 {
        use exit::*;
        match self {
            Error::NotKernelSource { .. } => NOT_KERNEL_SOURCE,
            Error::NotConfigured { .. } => NOT_CONFIGURED,
            Error::NotBuilt { .. } => NOT_BUILT,
            Error::VersionMismatch { .. } => VERSION_MISMATCH,
            Error::DestInsideTree { .. } | Error::TreeInsideDest { .. } => DEST_INSIDE_TREE,
            Error::DestExists(_) | Error::DestNotOurs(_) => DEST_EXISTS,
            Error::DestNotWritable { .. } => DEST_NOT_WRITABLE,
            Error::MissingTool { .. } => MISSING_TOOL,
            Error::BadMakeVar { .. } => USAGE,
            Error::SelfTest { .. } => SELF_TEST,
            Error::NotKbuildTree(_) | Error::BadManifest { .. } => NOT_KBUILD_TREE,
            Error::ConfigMismatch { .. } => NOT_CONFIGURED,
            Error::BadPath { .. } => BAD_PATH,
            Error::Locked { .. } => LOCKED,
            Error::Command { .. } => COMMAND,
            Error::Io { .. } => IO,
            Error::Interrupted => INTERRUPTED,
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::NotKernelSource { .. } => {
                "pass the top of an unpacked kernel source (the directory holding Kconfig and scripts/)".into()
            }
            Error::NotConfigured { path, .. } => format!(
                "configure it first, e.g. `make -C <srctree> O={path} defconfig` (or olddefconfig)"
            ),
            Error::NotBuilt { path, .. } => format!(
                "build the kernel and its modules first: `make -C <srctree> O={path} -j$(nproc)`"
            ),
            Error::VersionMismatch { .. } => {
                "pass the source tree the object tree was built from (its `source` link points at it)".into()
            }
            Error::DestInsideTree { .. } | Error::TreeInsideDest { .. } => {
                "choose a destination outside the source and object trees".into()
            }
            Error::DestExists(_) => "pass --force to replace it".into(),
            Error::DestNotOurs(_) => {
                "remove it yourself or choose another destination; --force only replaces kbuild trees".into()
            }
            Error::DestNotWritable { .. } => "choose a destination in a directory you can write to".into(),
            Error::BadMakeVar { .. } => {
                "give the variables exactly as on the kernel's make command line (`KCFLAGS=-O2`); O, M and the tree variables are extmod's to set".into()
            }
            Error::MissingTool { tool, .. } => {
                let package = match tool.as_str() {
                    "xz" => "xz-utils",
                    "zstd" => "zstd",
                    "gzip" => "gzip",
                    "openssl" => "openssl",
                    "depmod" => "kmod",
                    "ccache" => "ccache",
                    "distcc" => "distcc",
                    "sccache" => "sccache",
                    _ => "build-essential",
                };
                format!("install it (Debian: `apt-get install {package}`) or put `{tool}` on PATH")
            }
            Error::SelfTest { .. } => {
                "the tree is unusable as is; rerun with --no-verify to keep it for inspection".into()
            }
            Error::NotKbuildTree(_) => {
                "pass a tree made by `extmod kbuild-install`, install-extmod-build, a linux-headers package, or a built object dir".into()
            }
            Error::BadPath { .. } => {
                "Kbuild splits make variables on spaces, treats `:` and `%` as rule syntax, and passes paths to the shell; use a path without them".into()
            }
            Error::BadManifest { .. } => {
                "the tree was changed after `extmod kbuild-install` made it; make it again (`--force` replaces it)".into()
            }
            Error::ConfigMismatch { .. } => {
                "the configuration was edited or truncated after the kernel was built; restore it or rebuild the kernel (and the Kbuild tree)".into()
            }
            Error::Locked { .. } => {
                "wait for the other run to finish, or run without --no-wait to wait for it".into()
            }
            Error::Command { .. } => "see the command's output above".into(),
            Error::Io { .. } => "check the path, its permissions and free disk space".into(),
            Error::Interrupted => return None,
        })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
