//! `extmod which` and `extmod map`: which modules a symbol builds, and what gates them.

use crate::kbuild::KbuildTree;
use crate::symbols::{Index, ModuleInfo, SymType};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct GateState {
    pub dir: String,
    /// Symbols that enter the directory, with their base values; empty: always entered.
    pub symbols: Vec<(String, Option<String>)>,
    pub enabled: bool,
    /// No parent Makefile line enters it that the index could read.
    pub unknown: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SymbolReport {
    pub symbol: String,
    #[serde(rename = "type")]
    pub ty: Option<SymType>,
    pub base: Option<String>,
    pub modules: Vec<ModuleInfo>,
    /// Gating chain of the first module's directory.
    pub gates: Vec<GateState>,
    /// Why there is no answer (unknown symbol, not a module option, no Makefile line).
    pub error: Option<String>,
}

pub fn report(index: &Index, k: &KbuildTree, symbol: &str) -> SymbolReport {
    let sym = symbol.strip_prefix("CONFIG_").unwrap_or(symbol).to_string();
    let ty = index.sym_type(&sym);
    let base = k.value(&sym).map(str::to_string);
    // Only tristate symbols build modules; a bool's objects go into vmlinux.
    let modules = if ty == Some(SymType::Tristate) {
        index.module_infos(&sym)
    } else {
        Vec::new()
    };
    let gates = modules
        .first()
        .map(|m| {
            index
                .gates(crate::symbols::module_dir(&m.path).as_str())
                .into_iter()
                .map(|g| {
                    let symbols: Vec<(String, Option<String>)> = g
                        .symbols
                        .iter()
                        .map(|s| (s.clone(), k.value(s).map(str::to_string)))
                        .collect();
                    let enabled = symbols.is_empty()
                        || symbols
                            .iter()
                            .any(|(_, v)| matches!(v.as_deref(), Some("y" | "m")));
                    GateState {
                        dir: g.dir,
                        symbols,
                        enabled,
                        unknown: g.unknown,
                    }
                })
                .collect()
        })
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
        gates,
        error,
    }
}

/// Every tristate symbol with at least one module.
pub fn map(index: &Index, k: &KbuildTree) -> Vec<SymbolReport> {
    index
        .tristates()
        .map(|s| report(index, k, s))
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
            m.path,
            if m.uncertain {
                "  (uncertain: inside a make conditional)"
            } else {
                ""
            }
        ));
        out.push(format!("    objects: {}", m.objects.join(" ")));
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
