//! What the build engine reports. The engine never prints; a reporter renders these.

use camino::Utf8PathBuf;
use serde::Serialize;

/// Why a package was not built, with the exit code class it maps to.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub code: u8,
    pub cause: String,
    pub hint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Built,
    Fresh,
    Failed,
    Refused,
    /// A package it depends on did not build.
    Skipped,
    /// `--dry-run`: what would run.
    Planned,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageResult {
    pub name: String,
    pub status: Status,
    /// Modules relative to the kernel tree (`drivers/net/dummy.ko`).
    pub modules: Vec<String>,
    /// Where the package's modules were staged (`OUT/<name>`).
    pub staged: Option<Utf8PathBuf>,
    pub log: Option<Utf8PathBuf>,
    pub seconds: f64,
    pub commands: Vec<String>,
    pub refusal: Option<Refusal>,
    /// For failures: the cause in words (modpost's complaint, the first compiler error, ...).
    pub error: Option<String>,
    /// Notes that do not stop the build (uncertain derivations, ...).
    pub notes: Vec<String>,
    /// The staged files: final path, size, signer, compression.
    pub installed: Vec<crate::modinst::InstalledModule>,
}

impl PackageResult {
    pub fn new(name: &str, status: Status) -> Self {
        PackageResult {
            name: name.to_string(),
            status,
            modules: Vec::new(),
            staged: None,
            log: None,
            seconds: 0.0,
            commands: Vec::new(),
            refusal: None,
            error: None,
            notes: Vec::new(),
            installed: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    /// The plan: how many packages, how many need make.
    Planned { packages: usize, to_build: usize },
    /// How make jobs are shared (extmod's own jobserver, or make's).
    Jobs { what: String },
    /// make started for a package.
    Started { package: String, command: String },
    /// A line of make's output (Kbuild's `  CC [M]  drivers/net/dummy.o` style).
    Output { package: String, line: String },
    /// A package reached its final state.
    Finished(Box<PackageResult>),
}
