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

/// `extmod map --json` with K = `kbuild`, as symbol -> (base value, modules, gates all on).
fn map(kbuild: &Path) -> BTreeMap<String, (String, Vec<String>, bool)> {
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
    doc.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let modules = r["modules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["path"].as_str().unwrap().to_string())
                .collect();
            let gates_on = r["gates"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["enabled"] == true);
            let sym = r["symbol"]
                .as_str()
                .unwrap()
                .trim_start_matches("CONFIG_")
                .to_string();
            (
                sym,
                (
                    r["base"].as_str().unwrap_or("n").to_string(),
                    modules,
                    gates_on,
                ),
            )
        })
        .collect()
}

fn predicted(map: &BTreeMap<String, (String, Vec<String>, bool)>) -> BTreeSet<String> {
    map.values()
        .filter(|(base, _, on)| base == "m" && *on)
        .flat_map(|(_, m, _)| m.iter().cloned())
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
    let m = map(&tk.obj);
    let built = modules_order(&tk.obj.join("modules.order"), "");
    assert_eq!(
        predicted(&m),
        built,
        "predicted modules differ from what the test kernel built"
    );
    // Every =m symbol predicts only modules the kernel built; every built module is found back.
    for (sym, (base, mods, _)) in &m {
        if base == "m" {
            for x in mods {
                assert!(
                    built.contains(x),
                    "CONFIG_{sym} predicts {x}, which was not built"
                );
            }
        }
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
                .any(|s| m.get(s).is_some_and(|(b, _, _)| b == "m")),
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

/// Debian's headers with the modules.order of the matching linux-image package.
fn debian_headers() -> Option<(PathBuf, PathBuf)> {
    let dir = common::debian_headers()?;
    let release = std::fs::read_to_string(dir.join("include/config/kernel.release")).ok()?;
    let order = PathBuf::from(format!("/lib/modules/{}/modules.order", release.trim()));
    if !order.is_file() {
        eprintln!(
            "SKIP: {} is absent (linux-image for the headers is not installed)",
            order.display()
        );
    }
    order.is_file().then_some((dir, order))
}

#[test]
fn debian_config_precision_and_recall() {
    let Some((headers, order)) = debian_headers() else {
        eprintln!(
            "SKIP: Debian linux-headers-6.12.*-amd64 with its modules.order is not installed"
        );
        return;
    };
    let m = map(&headers);
    let pred = predicted(&m);
    let truth = modules_order(&order, "kernel/");
    let tp = pred.intersection(&truth).count();
    let precision = tp as f64 / pred.len() as f64;
    let recall = tp as f64 / truth.len() as f64;
    let missed: Vec<_> = truth.difference(&pred).collect();
    let extra: Vec<_> = pred.difference(&truth).collect();
    eprintln!(
        "Debian config: {} modules built, {} predicted, precision {precision:.4}, recall {recall:.4}\nmissed: {missed:?}\nextra: {extra:?}",
        truth.len(),
        pred.len()
    );
    assert!(
        precision >= 0.995 && recall >= 0.99,
        "precision {precision}, recall {recall}"
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
    let m = map(&headers);
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
            .flat_map(|(_, mods, _)| mods.iter().cloned())
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
