//! Kbuild's compiler probes, run once per build rather than once per package.
//!
//! Every make start-up evaluates the top Makefile and the architecture's, whose `cc-option`,
//! `as-instr`, `ld-option`, ... calls each run the compiler through `try-run`
//! (`scripts/Makefile.compiler`): about 35 compiler runs, most of a package's make start-up. The
//! in-tree build pays them once; a build of many packages pays them in every package. Kbuild
//! itself kept their results in `.cache.mk` until 5.x; extmod does the same for the makes of
//! one objdir: the overlay's `scripts/Makefile.compiler` is the Kbuild tree's own with
//! `try-run` answered from a cache when the same probe (the expanded command and both answers,
//! word for word) was run before by a make of this build, and run as Kbuild runs it
//! otherwise. New answers are written by the makes that parse the top Makefile (`$(obj)`
//! empty; one file per make level, so no two processes write one file) into the package's
//! `probes.new<level>`, which extmod merges into `D/.probes/<key>.mk` after the make. The
//! package's own directory (in the flags since 6.13: `-fmacro-prefix-map=$(srcroot)/=`) is a
//! placeholder in keys and answers, put back for the package that reads them. The file's
//! key covers what the command text does not name: the Kbuild tree (path and content), `PATH`, and the compiler
//! and linker binaries found on it (path, size, modification time). The answers are Kbuild's,
//! so the flags, `.cmd` files and modules are the same as without the cache (tested).

use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::Error as KError;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where the overlay takes `scripts/Makefile.compiler` from.
pub(super) const COMPILER_MK: &str = "scripts/Makefile.compiler";

/// The line of Kbuild's `scripts/Makefile.compiler` that defines `try-run` (6.1 to 7.3).
const TRY_RUN: &str = "try-run = $(shell set -e;";
const REAL: &str = "__extmod_try_run_real = $(shell set -e;";

/// Appended to the tree's `scripts/Makefile.compiler`: `try-run` through the cache. A cached
/// probe is found by comparing its key with each entry's (`$(value ...)`: no expansion).
const CACHED: &str = r#"
# --- Added by extmod: try-run answers cached across the makes of one build ---------------------
# The probe's key is its expanded command and both answers; an entry is used only when its key
# is the same text. The package's own directory ($(EXTMOD_PROBES_PKG), in flags since 6.13) is
# @pkg@/ in keys and answers. New answers of a make without $(obj) (the top Makefile's, one
# process per make level at a time) go to $(EXTMOD_PROBES_OUT)<level>, key and answer in one
# write.
-include $(EXTMOD_PROBES)
__extmod_probe_out = $(if $(EXTMOD_PROBES_PKG),$(subst $(EXTMOD_PROBES_PKG),@pkg@/,$(1)),$(1))
__extmod_probe_in = $(if $(EXTMOD_PROBES_PKG),$(subst @pkg@/,$(EXTMOD_PROBES_PKG),$(1)),$(1))
__extmod_probe_key = $(call __extmod_probe_out,$(1) ~~ $(2) ~~ $(3))
define __extmod_probe_nl


endef
__extmod_probe_eq = $(and $(findstring $(1),$(2)),$(findstring $(2),$(1)))
__extmod_probe_find = $(firstword $(foreach n,$(__extmod_probe_ids),$(if $(call __extmod_probe_eq,$(value __extmod_probe_k$(n)),$(1)),$(n))))
__extmod_probe_new = $(if $(EXTMOD_PROBES_OUT),$(if $(obj),,$(file >>$(EXTMOD_PROBES_OUT)$(MAKELEVEL),K $(2)$(__extmod_probe_nl)V $(call __extmod_probe_out,$(1)))))$(1)
__extmod_probe_run = $(if $(1),$(call __extmod_probe_in,$(value __extmod_probe_v$(1))),$(call __extmod_probe_new,$(call __extmod_try_run_real,$(3),$(4),$(5)),$(2)))
try-run = $(call __extmod_probe_run,$(call __extmod_probe_find,$(call __extmod_probe_key,$(1),$(2),$(3))),$(call __extmod_probe_key,$(1),$(2),$(3)),$(1),$(2),$(3))
"#;

/// The probe cache of one build.
pub(super) struct Probes {
    /// The overlay's `scripts/Makefile.compiler`.
    pub(super) compiler_mk: Utf8PathBuf,
    /// The answers so far, read by every make (`EXTMOD_PROBES`).
    cache: Utf8PathBuf,
    /// Serializes merges into `cache`.
    lock: Mutex<()>,
}

impl Probes {
    /// Set up the cache in `D/.probes`, or `None` when the tree's `scripts/Makefile.compiler`
    /// does not define `try-run` as Kbuild 6.1 to 7.3 do (the probes then run in every make).
    pub(super) fn new(
        objdir: &Utf8Path,
        layers: &[Utf8PathBuf],
        identity: &str,
        compiler: &str,
    ) -> Result<Option<Probes>, KError> {
        let Some(original) = layers
            .iter()
            .map(|l| l.join(COMPILER_MK))
            .find(|p| p.is_file())
        else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(&original).map_err(|e| KError::io("read", &original, e))?;
        let Some(ours) = with_cache(&text) else {
            return Ok(None);
        };
        let dir = objdir.join(".probes");
        std::fs::create_dir_all(&dir).map_err(|e| KError::io("create", &dir, e))?;
        let mut h = Sha256::new();
        h.update(ours.as_bytes());
        h.update(identity.as_bytes());
        for l in layers {
            h.update(l.as_str().as_bytes());
            h.update(b"\0");
        }
        let path = std::env::var("PATH").unwrap_or_default();
        h.update(path.as_bytes());
        let cross = compiler.strip_suffix("gcc").unwrap_or("");
        for tool in [
            compiler.to_string(),
            format!("{cross}ld"),
            format!("{cross}as"),
        ] {
            if let Some(id) = crate::fresh::tool_identity(&tool) {
                h.update(id.as_bytes());
                h.update(b"\0");
            }
        }
        let key = format!("{:x}", h.finalize());
        let compiler_mk = dir.join(format!("Makefile.compiler-{}", &key[..16]));
        if std::fs::read_to_string(&compiler_mk).ok().as_deref() != Some(ours.as_str()) {
            kbuild_install::fsutil::write_atomic(&compiler_mk, ours.as_bytes())?;
        }
        Ok(Some(Probes {
            compiler_mk,
            cache: dir.join(format!("{}.mk", &key[..16])),
            lock: Mutex::new(()),
        }))
    }

    /// The shared `scripts/` of the overlays built from the Kbuild layers and `src` (with only
    /// the top-level names `only` from the layers): the tree's own entries and
    /// [`Probes::compiler_mk`].
    pub(super) fn scripts_dir(&self, src: &Utf8Path, only: Option<&[&str]>) -> Utf8PathBuf {
        let mut h = Sha256::new();
        h.update(self.compiler_mk.as_str().as_bytes());
        h.update(b"\0");
        h.update(src.as_str().as_bytes());
        for n in only.unwrap_or_default() {
            h.update(b"\0");
            h.update(n.as_bytes());
        }
        let key = format!("{:x}", h.finalize());
        let dir = self.compiler_mk.parent().unwrap_or(Utf8Path::new("."));
        dir.join(format!("scripts-{}", &key[..16]))
    }

    /// The environment of a package's make: the cache to read and the file for new answers.
    pub(super) fn env(&self, pkg_dir: &Utf8Path) -> Vec<(&'static str, String)> {
        vec![
            ("EXTMOD_PROBES", self.cache.to_string()),
            ("EXTMOD_PROBES_OUT", pkg_dir.join(NEW).to_string()),
            ("EXTMOD_PROBES_PKG", format!("{pkg_dir}/")),
        ]
    }

    /// Merge the answers a package's make found into the cache (complete key/answer pairs
    /// only), and start the package's next make with an empty list.
    pub(super) fn merge(&self, pkg_dir: &Utf8Path) {
        let mut found = Vec::new();
        for e in std::fs::read_dir(pkg_dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(NEW) {
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    found.extend(parse_new(&text));
                }
                let _ = std::fs::remove_file(e.path());
            }
        }
        if found.is_empty() {
            return;
        }
        let _guard = self.lock.lock().expect("probe cache lock");
        let mut all = std::fs::read_to_string(&self.cache)
            .map(|t| parse_cache(&t))
            .unwrap_or_default();
        let before = all.len();
        for (k, v) in found {
            all.entry(k).or_insert(v);
        }
        if all.len() != before {
            let _ = kbuild_install::fsutil::write_atomic(&self.cache, render(&all).as_bytes());
        }
    }
}

const NEW: &str = "probes.new";

/// The tree's Makefile.compiler with `try-run` renamed and the cached one appended.
fn with_cache(text: &str) -> Option<String> {
    let defs = text.lines().filter(|l| l.starts_with(TRY_RUN)).count();
    if defs != 1 || text.contains("__extmod_") {
        return None;
    }
    let mut out = String::with_capacity(text.len() + CACHED.len());
    for l in text.split_inclusive('\n') {
        match l.strip_prefix(TRY_RUN) {
            Some(rest) => {
                out.push_str(REAL);
                out.push_str(rest);
            }
            None => out.push_str(l),
        }
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(CACHED);
    Some(out)
}

/// `K <key>` / `V <answer>` pairs as the make side writes them; a key without its answer (a
/// make killed in between) is dropped, as is any line make could not read back.
fn parse_new(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut key: Option<&str> = None;
    for l in text.lines() {
        if let Some(k) = l.strip_prefix("K ") {
            key = Some(k);
        } else if let (Some(v), Some(k)) = (l.strip_prefix('V'), key.take()) {
            let v = v.strip_prefix(' ').unwrap_or(v);
            if usable(k) && usable(v) {
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    out
}

/// Text that can sit on a line of a `define` body and come back unchanged through `$(value)`.
fn usable(s: &str) -> bool {
    let t = s.trim();
    !s.contains('\n') && !t.starts_with("endef") && !t.starts_with("define")
}

/// The cache file: `__extmod_probe_ids` and one `define` per key and answer.
fn render(all: &BTreeMap<String, String>) -> String {
    let mut out = String::from("# extmod: Kbuild's try-run answers (written by extmod)\n");
    out.push_str("__extmod_probe_ids :=");
    for i in 1..=all.len() {
        out.push_str(&format!(" {i}"));
    }
    out.push('\n');
    for (i, (k, v)) in all.iter().enumerate() {
        let n = i + 1;
        out.push_str(&format!(
            "define __extmod_probe_k{n}\n{k}\nendef\ndefine __extmod_probe_v{n}\n{v}\nendef\n"
        ));
    }
    out
}

fn parse_cache(text: &str) -> BTreeMap<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut keys = BTreeMap::new();
    let mut values = BTreeMap::new();
    let mut i = 0;
    while i + 2 < lines.len() {
        if let Some(name) = lines[i].strip_prefix("define __extmod_probe_")
            && lines[i + 2] == "endef"
        {
            let body = lines[i + 1].to_string();
            if let Some(n) = name.strip_prefix('k') {
                keys.insert(n.to_string(), body);
            } else if let Some(n) = name.strip_prefix('v') {
                values.insert(n.to_string(), body);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    keys.into_iter()
        .filter_map(|(n, k)| values.remove(&n).map(|v| (k, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TREE: &str = "TMPOUT = .tmp_$$$$\n\ntry-run = $(shell set -e;\t\\\n\tTMP=$(TMPOUT)/tmp;\t\\\n\tfi)\n\ncc-option = $(call try-run,x,$(1),$(2))\n";

    #[test]
    fn try_run_is_renamed_once_and_the_cached_one_appended() {
        let out = with_cache(TREE).unwrap();
        assert!(out.contains("\n__extmod_try_run_real = $(shell set -e;\t\\\n\tTMP="));
        assert!(!out.lines().any(|l| l.starts_with(TRY_RUN)));
        assert!(out.ends_with(CACHED));
        assert!(out.contains("cc-option = $(call try-run,x,$(1),$(2))"));
        // Not Kbuild's definition, or already ours: left alone.
        assert_eq!(with_cache("try-run = $(shell true)\n"), None);
        assert_eq!(with_cache(&out), None);
    }

    #[test]
    fn answers_round_trip_through_the_cache_file() {
        let new = "K gcc -Werror -mfoo -c -x c /dev/null -o \"$TMP\" ~~ -mfoo ~~\nV -mfoo\nK gcc -Wl,--x ~~ a ~~ b\nV \nK half written\n";
        let found = parse_new(new);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].1, "");
        let all: BTreeMap<String, String> = found.into_iter().collect();
        let text = render(&all);
        assert!(text.contains("__extmod_probe_ids := 1 2\n"));
        assert_eq!(parse_cache(&text), all);
    }

    #[test]
    fn a_line_make_would_misread_is_not_cached() {
        assert!(parse_new("K endef\nV x\n").is_empty());
        assert!(parse_new("K a\nV define x\n").is_empty());
    }
}
