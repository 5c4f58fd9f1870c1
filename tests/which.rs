//! `extmod which` / `extmod map` against real configurations: the test kernel (exact), Debian's
//! distribution config (precision and recall against the modules Debian's build made), and
//! OpenWrt's package table (agreement with its FILES lists).

mod common;

use assert_cmd::Command;
use common::test_kernel;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn extmod() -> Command {
    Command::cargo_bin("extmod").unwrap()
}

/// One module of `extmod map --json`: its symbol, the symbol's base value, whether the base
/// builds it, and its objects.
#[derive(Debug, Clone)]
struct Row {
    symbol: String,
    base: String,
    module: String,
    built: bool,
    objects: Vec<String>,
}

/// `extmod map --json` with K = `kbuild`, one row per (symbol, module).
fn map(kbuild: &Path) -> Vec<Row> {
    let tk = test_kernel();
    let o = extmod()
        .arg("map")
        .arg("--json")
        .arg("-K")
        .arg(kbuild)
        .arg("-S")
        .arg(&tk.src)
        .assert()
        .success();
    let doc: Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    let mut rows = Vec::new();
    for r in doc.as_array().unwrap() {
        for m in r["modules"].as_array().unwrap() {
            rows.push(Row {
                symbol: r["symbol"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("CONFIG_")
                    .to_string(),
                base: r["base"].as_str().unwrap_or("n").to_string(),
                module: m["path"].as_str().unwrap().to_string(),
                built: m["built"] == true,
                objects: m["objects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o.as_str().unwrap().to_string())
                    .collect(),
            });
        }
    }
    rows
}

/// The modules the base configuration builds, by Kbuild's evaluation.
fn predicted(rows: &[Row]) -> BTreeSet<String> {
    rows.iter()
        .filter(|r| r.built)
        .map(|r| r.module.clone())
        .collect()
}

/// Modules the base builds that no =m symbol claims.
fn unclaimed(rows: &[Row], built: &BTreeSet<String>) -> Vec<String> {
    let claimed: BTreeSet<&String> = rows
        .iter()
        .filter(|r| r.base == "m")
        .map(|r| &r.module)
        .collect();
    built
        .iter()
        .filter(|m| !claimed.contains(m))
        .cloned()
        .collect()
}

fn modules_order(path: &Path, strip: &str) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let l = l.strip_prefix(strip).unwrap_or(l);
            match l.strip_suffix(".o") {
                Some(stem) => format!("{stem}.ko"),
                None => l.to_string(),
            }
        })
        .collect()
}

#[test]
fn test_kernel_predictions_are_exact() {
    let tk = test_kernel();
    let rows = map(&tk.obj);
    let built = modules_order(&tk.obj.join("modules.order"), "");
    assert_eq!(
        predicted(&rows),
        built,
        "predicted modules differ from what the test kernel built"
    );
    assert_eq!(unclaimed(&rows, &built), Vec::<String>::new());
    // Every module's objects are exactly what Kbuild wrote into its .mod file.
    for r in rows.iter().filter(|r| r.built) {
        let mod_file = tk
            .obj
            .join(format!("{}.mod", r.module.trim_end_matches(".ko")));
        let recorded: Vec<String> = std::fs::read_to_string(&mod_file)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        assert_eq!(r.objects, recorded, "{}", r.module);
    }
    for module in &built {
        let o = extmod()
            .args(["which", "--json", "--module", module, "-K"])
            .arg(&tk.obj)
            .arg("-S")
            .arg(&tk.src)
            .assert()
            .success();
        let doc: Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
        let syms: Vec<String> = doc[0]["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        assert!(
            syms.iter()
                .any(|s| rows.iter().any(|r| &r.symbol == s && r.base == "m")),
            "{module}: {syms:?}"
        );
    }
}

#[test]
fn which_explains_symbols_and_errors() {
    let tk = test_kernel();
    let o = extmod()
        .args(["which", "-K"])
        .arg(&tk.obj)
        .arg("-S")
        .arg(&tk.src)
        .arg("CONFIG_ZRAM")
        .assert()
        .success();
    let text = String::from_utf8_lossy(&o.get_output().stdout).into_owned();
    assert!(text.contains("CONFIG_ZRAM  tristate  base=m"), "{text}");
    assert!(text.contains("module drivers/block/zram/zram.ko"), "{text}");
    assert!(text.contains("drivers/block/zram/zram_drv.o"), "{text}");
    assert!(
        text.contains("drivers/block/zram [CONFIG_ZRAM=m]"),
        "{text}"
    );
    let o = extmod()
        .args(["which", "-K"])
        .arg(&tk.obj)
        .arg("-S")
        .arg(&tk.src)
        .arg("CONFIG_NOT_A_SYMBOL")
        .assert()
        .code(20);
    assert!(String::from_utf8_lossy(&o.get_output().stdout).contains("is not a Kconfig symbol"));
    let o = extmod()
        .args(["which", "-K"])
        .arg(&tk.obj)
        .arg("-S")
        .arg(&tk.src)
        .arg("CONFIG_NET")
        .assert()
        .code(21);
    assert!(
        String::from_utf8_lossy(&o.get_output().stdout)
            .contains("bool option, not a module option")
    );
    // Not enabled in the base: still answered, with the gate that is off.
    let o = extmod()
        .args(["which", "--json", "-K"])
        .arg(&tk.obj)
        .arg("-S")
        .arg(&tk.src)
        .arg("CONFIG_ATA_OVER_ETH")
        .assert()
        .success();
    let doc: Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    assert_eq!(doc[0]["modules"][0]["path"], "drivers/block/aoe/aoe.ko");
    let last = doc[0]["gates"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["enabled"], false, "{doc}");
}

/// Debian's headers with the modules.order of the matching linux-image package: installed, or
/// `EXTMOD_DEBIAN_MODULES_ORDER` (e.g. extracted from `apt-get download
/// linux-image-<release>-unsigned`).
fn debian_headers() -> Option<(PathBuf, PathBuf)> {
    let dir = common::debian_headers()?;
    let release = std::fs::read_to_string(dir.join("include/config/kernel.release")).ok()?;
    let order = std::env::var_os("EXTMOD_DEBIAN_MODULES_ORDER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/lib/modules/{}/modules.order", release.trim())));
    if !order.is_file() {
        eprintln!(
            "SKIP: {} is absent (install linux-image for the headers, or set EXTMOD_DEBIAN_MODULES_ORDER)",
            order.display()
        );
    }
    order.is_file().then_some((dir, order))
}

#[test]
fn debian_config_module_set_is_exact() {
    let Some((headers, order)) = debian_headers() else {
        eprintln!(
            "SKIP: Debian linux-headers-6.12.*-amd64 with its modules.order is not installed"
        );
        return;
    };
    let rows = map(&headers);
    let pred = predicted(&rows);
    let truth = modules_order(&order, "kernel/");
    let missed: Vec<_> = truth.difference(&pred).collect();
    let extra: Vec<_> = pred.difference(&truth).collect();
    eprintln!(
        "Debian config: {} modules built, {} predicted\nmissed: {missed:?}\nextra: {extra:?}",
        truth.len(),
        pred.len()
    );
    assert!(missed.is_empty() && extra.is_empty());
    let unclaimed = unclaimed(&rows, &truth);
    assert!(
        unclaimed.is_empty(),
        "built modules no =m symbol claims: {unclaimed:?}"
    );
    // The cases text parsing got wrong.
    let of = |sym: &str| -> Vec<&Row> { rows.iter().filter(|r| r.symbol == sym).collect() };
    let hyperv: Vec<&str> = of("HYPERV").iter().map(|r| r.module.as_str()).collect();
    assert_eq!(
        hyperv,
        ["drivers/hv/hv_vmbus.ko"],
        "hv_common.o is built in"
    );
    let xfs = of("XFS_FS");
    assert!(
        xfs[0]
            .objects
            .contains(&"fs/xfs/libxfs/xfs_ag.o".to_string())
    );
    assert!(
        of("PPPOL2TP")
            .iter()
            .any(|r| r.module == "net/l2tp/l2tp_ppp.ko")
    );
}

#[test]
fn openwrt_files_agreement() {
    let table = common::repo().join("../shared/data/openwrt-kmods-6.12.tsv");
    let Ok(text) = std::fs::read_to_string(&table) else {
        eprintln!(
            "SKIP: {} is absent (it lives beside the repository, not in it)",
            table.display()
        );
        return;
    };
    let Some((headers, _)) = debian_headers() else {
        eprintln!("SKIP: Debian linux-headers-6.12.*-amd64 is not installed");
        return;
    };
    let rows = map(&headers);
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &rows {
        m.entry(r.symbol.clone())
            .or_default()
            .push(r.module.clone());
    }
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (c_src, c_pkg, c_kc, c_files, c_cond) = (
        col("source"),
        col("package"),
        col("kconfig_6.12"),
        col("files_6.12"),
        col("files_conditional_6.12"),
    );
    let (mut agree, mut disagree, mut compared) = (0, Vec::new(), 0);
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        let files: BTreeSet<String> = f[c_files].split_whitespace().map(str::to_string).collect();
        if !f[c_src].starts_with("package/kernel/linux/modules")
            || files.is_empty()
            || !f[c_cond].trim().is_empty()
        {
            continue;
        }
        // Symbols the package enables (entries forced to n or to a value are not module requests).
        let syms: Vec<&str> = f[c_kc]
            .split_whitespace()
            .filter(|k| !k.contains('=') || k.ends_with("=m"))
            .map(|k| k.split('=').next().unwrap().trim_start_matches("CONFIG_"))
            .collect();
        if !syms.iter().any(|s| m.contains_key(*s)) {
            continue;
        }
        compared += 1;
        let pred: BTreeSet<String> = syms
            .iter()
            .filter_map(|s| m.get(*s))
            .flat_map(|mods| mods.iter().cloned())
            .collect();
        if pred == files {
            agree += 1;
        } else {
            disagree.push((
                f[c_pkg].to_string(),
                files.difference(&pred).cloned().collect::<Vec<_>>(),
                pred.difference(&files).cloned().collect::<Vec<_>>(),
            ));
        }
    }
    eprintln!("OpenWrt FILES vs predicted: {agree} of {compared} packages agree");
    for (p, only_files, only_pred) in &disagree {
        eprintln!("  {p}: only in FILES {only_files:?}; only predicted {only_pred:?}");
    }
    assert!(compared > 800, "{compared}");
    assert!(agree as f64 / compared as f64 > 0.85, "{agree}/{compared}");
}
