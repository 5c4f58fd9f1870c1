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
    /// Where the time went, in seconds (built packages).
    pub phases: Option<Phases>,
}

/// A built package's time by phase, from the moments Kbuild printed its progress lines.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Planning: Kconfig for the package's variant and Kbuild's evaluation of its Makefiles.
    pub plan: f64,
    /// Overlay, variant and modpost set-up before the first make.
    pub setup: f64,
    /// From make's start to its first compile: Makefile parsing and compiler probes.
    pub make_startup: f64,
    /// Compiling the module's objects (up to `MODPOST`).
    pub compile: f64,
    /// modpost (up to its first output being compiled).
    pub modpost: f64,
    /// `.mod.o`, `.module-common.o` and the final link of each `.ko`.
    pub link: f64,
    /// strip, sign, compress, depmod and the rename into OUT.
    pub stage: f64,
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
            phases: None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    /// A package was planned (fresh, refused, or a job: Kconfig and Kbuild's evaluation ran).
    Planning { done: usize, total: usize },
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
    /// Something the user should know that stops nothing (an untested kernel version, ...).
    Warning(String),
}

impl Phases {
    /// Add one make run: started at `start`, first progress line `first`, `MODPOST` at
    /// `modpost`, first line after it `after`, finished at `end`.
    pub fn add_make(
        &mut self,
        start: std::time::Instant,
        first: Option<std::time::Instant>,
        modpost: Option<std::time::Instant>,
        after: Option<std::time::Instant>,
        end: std::time::Instant,
    ) {
        let secs = |a: std::time::Instant, b: std::time::Instant| {
            b.saturating_duration_since(a).as_secs_f64()
        };
        let compile_start = first.or(modpost).unwrap_or(end);
        self.make_startup += secs(start, compile_start);
        let modpost = modpost.unwrap_or(end);
        self.compile += secs(compile_start, modpost);
        let link_start = after.unwrap_or(end);
        self.modpost += secs(modpost, link_start);
        self.link += secs(link_start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn phases_split_a_make_run_at_its_progress_lines() {
        let t = Instant::now();
        let s = |n: u64| t + Duration::from_millis(n);
        let mut p = Phases::default();
        p.add_make(t, Some(s(700)), Some(s(1000)), Some(s(1100)), s(1500));
        assert!((p.make_startup - 0.7).abs() < 1e-9);
        assert!((p.compile - 0.3).abs() < 1e-9);
        assert!((p.modpost - 0.1).abs() < 1e-9);
        assert!((p.link - 0.4).abs() < 1e-9);
        // Nothing printed (all up to date): all of it is start-up.
        let mut q = Phases::default();
        q.add_make(t, None, None, None, s(200));
        assert!((q.make_startup - 0.2).abs() < 1e-9 && q.compile == 0.0);
    }
}
