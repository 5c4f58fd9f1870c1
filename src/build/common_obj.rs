//! `.module-common.o` made once per configuration rather than once per package.
//!
//! Since 6.10 every module links `scripts/module-common.c`, compiled by
//! `scripts/Makefile.modfinal` into `<M>/.module-common.o` (6.13+: `<MO>/.module-common.o`).
//! The in-tree build compiles it once; each package's make would compile it again. After a
//! package's make, extmod keeps the object and its `.cmd` file in `D/.common/<key>/`; before
//! the next package's make of the same configuration and directory, it copies them into place.
//! Kbuild still decides: `if_changed` rebuilds the object when the recorded command differs
//! from the one it would run or a recorded prerequisite is newer. Without debug information
//! only: its `DW_AT_comp_dir` names the overlay of the package that compiled it, so a shared
//! object would differ from the one the package's own make writes.

use super::ctx::Ctx;
use super::job::{Job, Unit};
use camino::Utf8PathBuf;
use sha2::{Digest, Sha256};

const OBJ: &str = ".module-common.o";
const CMD: &str = "..module-common.o.cmd";

/// Where the unit's make writes `.module-common.o`, and the cache entry for it; `None` when
/// the object is not shared (debug information, or a kernel without it).
fn places(ctx: &Ctx, job: &Job, unit: &Unit) -> Option<(Utf8PathBuf, Utf8PathBuf)> {
    // The base's value, unless the variant changed it (its recorded differences from the base).
    let changed = job.variant.as_ref().and_then(|v| {
        v.changes
            .iter()
            .chain(&v.drift)
            .find(|c| c.symbol == "DEBUG_INFO")
    });
    let debug_info = match changed {
        Some(c) => c.new.as_deref(),
        None => ctx.k.value("DEBUG_INFO"),
    };
    if debug_info == Some("y") {
        return None;
    }
    let dir = ctx
        .generation
        .common_object_dir(&ctx.out(&job.pkg.name), &unit.dir);
    let rel = dir
        .strip_prefix(ctx.out(&job.pkg.name))
        .map(|r| r.as_str().to_string())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(
        job.variant
            .as_ref()
            .map_or("", |v| v.dir.as_str())
            .as_bytes(),
    );
    h.update(b"\0");
    h.update(rel.as_bytes());
    let key = format!("{:x}", h.finalize());
    Some((dir, ctx.objdir.join(".common").join(&key[..16])))
}

/// Before a unit's make: the shared object and its command record, when there is one and the
/// package has none of its own.
pub(super) fn take(ctx: &Ctx, job: &Job, unit: &Unit) {
    let Some((dir, cached)) = places(ctx, job, unit) else {
        return;
    };
    if dir.join(OBJ).exists() || !cached.join(OBJ).is_file() || !cached.join(CMD).is_file() {
        return;
    }
    // Copies, not links: a make that rebuilds the object writes into the file it finds. The
    // record first: an object without it is rebuilt by make, never trusted.
    for f in [CMD, OBJ] {
        if std::fs::copy(cached.join(f), dir.join(f)).is_err() {
            let _ = std::fs::remove_file(dir.join(CMD));
            return;
        }
    }
}

/// After a unit's make succeeded: keep the object for the next packages, once.
pub(super) fn keep(ctx: &Ctx, job: &Job, unit: &Unit) {
    let Some((dir, cached)) = places(ctx, job, unit) else {
        return;
    };
    if !dir.join(OBJ).is_file() || !dir.join(CMD).is_file() {
        return;
    }
    // Another package may have kept its own meanwhile: the first one stays.
    let _ = kbuild_install::fsutil::publish_dir(&cached, |tmp| {
        for f in [CMD, OBJ] {
            std::fs::copy(dir.join(f), tmp.join(f))
                .map_err(|e| kbuild_install::Error::io("copy", dir.join(f), e))?;
        }
        Ok(())
    });
}
