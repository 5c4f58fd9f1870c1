//! `extmod which` and `extmod map`: which modules a symbol builds, and what gates them.

use crate::kbuild::KbuildTree;
use crate::kbuild_eval::Module;
use crate::modmap::Kmap;
use crate::symbols::{Index, SymType};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct GateState {
    pub dir: String,
    /// Symbols that enter the directory, with their base values; empty: always entered.
    pub symbols: Vec<(String, Option<String>)>,
    /// Kbuild enters the directory under the base configuration.
    pub enabled: bool,
    /// No parent Makefile line enters it that the index could read.
    pub unknown: bool,
}

/// A module of a symbol, with its gating chain.
#[derive(Debug, Clone, Serialize)]
pub struct MapModule {
    #[serde(flatten)]
    pub module: Module,
    /// The base configuration builds it (Kbuild enters its directory and lists it in obj-m).
    pub built: bool,
    pub gates: Vec<GateState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SymbolReport {
    pub symbol: String,
    #[serde(rename = "type")]
    pub ty: Option<SymType>,
    pub base: Option<String>,
    /// As Kbuild computes them (make evaluated the Makefiles).
    pub modules: Vec<MapModule>,
    /// Directories make could not evaluate, with its message.
    pub unevaluated: Vec<(String, String)>,
    /// Gating chain of the first module's directory.
    pub gates: Vec<GateState>,
    /// Why there is no answer (unknown symbol, not a module option, no Makefile line).
    pub error: Option<String>,
}

pub fn report(index: &Index, kmap: &Kmap, k: &KbuildTree, symbol: &str) -> SymbolReport {
    let sym = symbol.strip_prefix("CONFIG_").unwrap_or(symbol).to_string();
    let ty = index.sym_type(&sym);
    let base = k.value(&sym).map(str::to_string);
    // Only tristate symbols build modules; a bool's objects go into vmlinux.
    let unevaluated = kmap
        .syms
        .get(&sym)
        .map(|s| s.errors.clone())
        .unwrap_or_default();
    let gates_of = |path: &str| -> Vec<GateState> {
        index
            .gates(crate::symbols::module_dir(path).as_str())
            .into_iter()
            .map(|g| {
                let symbols: Vec<(String, Option<String>)> = g
                    .symbols
                    .iter()
                    .map(|s| (s.clone(), k.value(s).map(str::to_string)))
                    .collect();
                GateState {
                    enabled: kmap.base.reached.contains(&g.dir),
                    dir: g.dir,
                    symbols,
                    unknown: g.unknown,
                }
            })
            .collect()
    };
    let modules: Vec<MapModule> = if ty == Some(SymType::Tristate) {
        kmap.modules(&sym)
            .iter()
            .map(|m| MapModule {
                built: kmap.base.built.contains(&m.path),
                gates: gates_of(&m.path),
                module: m.clone(),
            })
            .collect()
    } else {
        Vec::new()
    };
    // The chain of the first module the base builds, else of the first.
    let gates = modules
        .iter()
        .find(|m| m.built)
        .or(modules.first())
        .map(|m| m.gates.clone())
        .unwrap_or_default();
    let error = match (ty, modules.is_empty()) {
        (None, _) => Some(format!(
            "CONFIG_{sym} is not a Kconfig symbol of this source tree"
        )),
        (Some(SymType::Tristate), true) => Some(format!(
            "no Makefile line builds a module for CONFIG_{sym} (it may only select or gate other options)"
        )),
        (Some(SymType::Tristate), false) => None,
        (Some(t), _) => Some(format!(
            "CONFIG_{sym} is a {} option, not a module option: it gates code in vmlinux or other options",
            format!("{t:?}").to_lowercase()
        )),
    };
    SymbolReport {
        symbol: format!("CONFIG_{sym}"),
        ty,
        base,
        modules,
        unevaluated,
        gates,
        error,
    }
}

/// Every tristate symbol with at least one module.
pub fn map(index: &Index, kmap: &Kmap, k: &KbuildTree) -> Vec<SymbolReport> {
    index
        .tristates()
        .map(|s| report(index, kmap, k, s))
        .filter(|r| !r.modules.is_empty())
        .collect()
}

pub fn lines(r: &SymbolReport) -> Vec<String> {
    let mut out = vec![format!(
        "{}  {}  base={}",
        r.symbol,
        r.ty.map_or("unknown".to_string(), |t| format!("{t:?}").to_lowercase()),
        r.base.as_deref().unwrap_or("n")
    )];
    if let Some(e) = &r.error {
        out.push(format!("  error: {e}"));
    }
    for m in &r.modules {
        out.push(format!(
            "  module {}{}",
            m.module.path,
            if m.built {
                ""
            } else {
                "  (not built by the base configuration)"
            }
        ));
        out.push(format!("    objects: {}", m.module.objects.join(" ")));
    }
    for (dir, why) in &r.unevaluated {
        out.push(format!("  make could not evaluate {dir}: {why}"));
    }
    if !r.gates.is_empty() {
        let chain: Vec<String> = r
            .gates
            .iter()
            .map(|g| {
                let cond = if g.unknown {
                    "not entered by any Makefile line found".to_string()
                } else if g.symbols.is_empty() {
                    "always".to_string()
                } else {
                    g.symbols
                        .iter()
                        .map(|(s, v)| format!("CONFIG_{s}={}", v.as_deref().unwrap_or("n")))
                        .collect::<Vec<_>>()
                        .join(" | ")
                };
                format!(
                    "{} [{}]{}",
                    g.dir,
                    cond,
                    if g.enabled { "" } else { " OFF" }
                )
            })
            .collect();
        out.push(format!("  gates: {}", chain.join(" -> ")));
    }
    out
}
