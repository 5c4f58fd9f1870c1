//! Judging a variant against the base: each changed symbol module-local or kernel-affecting,
//! and why a request Kconfig did not apply was not applied.

use super::{Change, Class, Inputs, NotApplied};
use crate::package::KconfigReq;
use crate::symbols::SymType;
use std::collections::{BTreeMap, BTreeSet};

type Diff = Vec<(String, Option<String>, Option<String>)>;

/// Each change of `raw` (base -> variant) but the toolchain's drift, classified by the base
/// build's record and Kbuild's evaluation of the Makefiles; with the change of built-in objects
/// that evaluation found.
pub(super) fn classify(
    inp: &Inputs,
    base: &BTreeMap<String, String>,
    variant: &BTreeMap<String, String>,
    raw: Diff,
    drifted: &BTreeSet<&String>,
) -> (Vec<Change>, Option<crate::locality::BuiltinDelta>) {
    let ty = |s: &str| inp.index.and_then(|i| i.sym_type(s));
    // The base build's record and Kbuild's evaluation of the Makefiles judge every change.
    let changed: Vec<String> = raw
        .iter()
        .filter(|(s, _, _)| !drifted.contains(s))
        .map(|(s, _, _)| s.clone())
        .collect();
    let locality = crate::locality::Locality::for_tree(inp.k);
    let delta = if changed.is_empty() || !locality.has_record() {
        None
    } else {
        crate::locality::makefile_root(inp.k, inp.src).map(|root| {
            let ev = crate::kbuild_eval::Evaluator {
                srctree: root,
                srcarch: inp.k.srcarch.clone(),
                make_vars: inp.k.make_vars.clone(),
                config: base.clone(),
            };
            let inputs = inp
                .index
                .map_or_else(|| inp.k.identity.clone(), |i| i.digest());
            crate::locality::delta_for(&inputs, &ev, variant)
        })
    };
    let verdicts = locality.judge(&changed, delta.as_ref(), inp.index);
    let mut changes = Vec::new();
    for (symbol, old, new) in raw {
        if drifted.contains(&symbol) {
            continue;
        }
        let new_module = old.is_none() && new.as_deref() == Some("m");
        let (class, why, objects) = if ty(&symbol) == Some(SymType::Tristate)
            && new.as_deref() == Some("y")
        {
            (
                Class::KernelAffecting,
                "a tristate built into the kernel (=y) changes vmlinux".to_string(),
                Vec::new(),
            )
        } else {
            match verdicts.get(&symbol) {
                Some(crate::locality::Verdict::Local) | None => (
                    Class::ModuleLocal,
                    if new_module {
                        "new module; no built-in object depends on it and the built-in objects stay the same"
                    } else {
                        "no built-in object depends on it and the built-in objects stay the same"
                    }
                    .to_string(),
                    Vec::new(),
                ),
                Some(crate::locality::Verdict::Kernel(why, objects)) => {
                    (Class::KernelAffecting, why.clone(), objects.clone())
                }
                Some(crate::locality::Verdict::Unjudged(why)) => {
                    (Class::KernelAffecting, why.clone(), Vec::new())
                }
            }
        };
        changes.push(Change {
            symbol,
            old,
            new,
            class,
            why,
            objects,
        });
    }
    (changes, delta)
}

/// The requests of `sorted` the variant does not have, each with the reason.
pub(super) fn not_applied(
    inp: &Inputs,
    sorted: &[KconfigReq],
    variant: &BTreeMap<String, String>,
) -> Vec<NotApplied> {
    let mut not_applied = Vec::new();
    for r in sorted {
        let want = r.value.clone().unwrap_or_else(|| "m".into());
        let got = variant.get(&r.symbol).cloned();
        // auto.conf holds strings without their quotes.
        let ok = if want == "n" {
            got.is_none()
        } else {
            got.as_deref() == Some(want.as_str())
                || got.as_deref() == Some(kbuild_install::tree::unquote(&want).as_str())
        };
        if ok {
            continue;
        }
        let why = why_not_applied(inp, r, &want, got.as_deref(), variant);
        not_applied.push(NotApplied {
            request: r.to_string(),
            got,
            why,
        });
    }
    not_applied
}

/// Why Kconfig did not give `r` the value `want` (it gave `got`).
fn why_not_applied(
    inp: &Inputs,
    r: &KconfigReq,
    want: &str,
    got: Option<&str>,
    variant: &BTreeMap<String, String>,
) -> String {
    let t = inp.index.and_then(|i| i.sym_type(&r.symbol));
    if t.is_none() && !variant.contains_key(&r.symbol) && inp.index.is_some() {
        format!("CONFIG_{} is not a Kconfig symbol of this kernel", r.symbol)
    } else if want == "m" && t == Some(SymType::Bool) {
        format!(
            "CONFIG_{} is a bool option: it cannot be a module (=m); ask for =y",
            r.symbol
        )
    } else if want == "m" && got == Some("y") {
        format!(
            "CONFIG_{} stays =y: a `select` from built-in code (or a =y dependency) forces it into vmlinux, so it cannot be a module of this kernel",
            r.symbol
        )
    } else if let Some(index) = inp.index {
        let chain = index.unmet_chain(&r.symbol, &|s| variant.get(s).cloned());
        // `depends on X=y` (or `X != m`) with X a module: the chain above only sees unset
        // symbols.
        let needs_y: Vec<String> = index
            .depends(&r.symbol)
            .iter()
            .flat_map(|e| {
                e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '='))
                    .filter_map(|w| w.strip_suffix("=y"))
                    .filter(|w| variant.get(*w).map(String::as_str) == Some("m"))
                    .map(|w| {
                        format!(
                            "CONFIG_{} depends on `{e}`: CONFIG_{w} is =m, not =y",
                            r.symbol
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        if !needs_y.is_empty() {
            needs_y.join("; ")
        } else if chain.is_empty() {
            format!(
                "Kconfig did not apply it although its dependencies are met: CONFIG_{} may have no prompt (only a `select` or a default sets it), or a `select`, a choice or a range decided otherwise",
                r.symbol
            )
        } else {
            format!("unmet dependencies: {}", chain.join("; "))
        }
    } else {
        "Kconfig did not apply it (unmet dependencies)".to_string()
    }
}
