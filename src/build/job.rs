//! A package planned for building: its modules, the make calls (units) and what changed.

use crate::events::PackageResult;
use crate::package::Package;
use std::collections::BTreeSet;

/// One `make` call: the modules of a package in one directory.
#[derive(Debug, Clone)]
pub(super) struct Unit {
    pub(super) dir: String,
    pub(super) goals: Vec<String>,
}

#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) pkg: Package,
    pub(super) modules: Vec<String>,
    pub(super) units: Vec<Unit>,
    pub(super) key: String,
    pub(super) notes: Vec<String>,
    pub(super) variant: Option<crate::variant::Variant>,
    /// Directories the build writes into: the units' and those of every object of the modules
    /// (composite parts in subdirectories or `../`); real directories in the overlay.
    pub(super) write_dirs: BTreeSet<String>,
    /// Inputs whose content changed since the last build (real paths): their dependent outputs
    /// are removed before make runs.
    pub(super) changed: Vec<String>,
    /// How long planning took (Kconfig for its variant, Kbuild's evaluation).
    pub(super) plan_seconds: f64,
    /// Its dependencies, transitively, nearest first (their exports are chained).
    pub(super) all_depends: Vec<String>,
}

/// What planning decided for a package.
pub(super) enum Plan {
    /// Built before from the same inputs; its staged modules are still there.
    Fresh(PackageResult),
    /// Not built, with the reason and exit code.
    Refused(PackageResult),
    /// Could not be planned (its configuration variant could not be made).
    Failed(PackageResult),
    Build(Job),
}

impl Plan {
    /// The result of a package that is not built in this run, or its job.
    pub(super) fn settled(self) -> Result<PackageResult, Box<Job>> {
        match self {
            Plan::Fresh(r) | Plan::Refused(r) | Plan::Failed(r) => Ok(r),
            Plan::Build(job) => Err(Box::new(job)),
        }
    }

    pub(super) fn name(&self) -> &str {
        match self {
            Plan::Fresh(r) | Plan::Refused(r) | Plan::Failed(r) => &r.name,
            Plan::Build(job) => &job.pkg.name,
        }
    }
}
