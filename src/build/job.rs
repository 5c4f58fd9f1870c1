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
}

pub(super) enum Plan {
    Done(PackageResult),
    Build(Job),
}
