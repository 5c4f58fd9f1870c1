//! `extmod audit` on package sets against the real test kernel.

mod common;

use assert_cmd::Command;
use common::test_kernel;
use serde_json::Value;

fn audit(packages: &std::path::Path, extra: &[&str]) -> (i32, Value) {
    let tk = test_kernel();
    let o = Command::cargo_bin("extmod")
        .unwrap()
        .arg("audit")
        .arg("--json")
        .arg("-K")
        .arg(&tk.obj)
        .arg("-S")
        .arg(&tk.src)
        .arg("--packages")
        .arg(packages)
        .args(extra)
        .output()
        .unwrap();
    let doc = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code().unwrap(), doc)
}

fn has(doc: &Value, kind: &str, package: Option<&str>, text: &str) -> bool {
    doc["findings"].as_array().unwrap().iter().any(|f| {
        f["kind"] == kind
            && package.is_none_or(|p| f["package"] == p)
            && f["message"].as_str().unwrap().contains(text)
    })
}

#[test]
fn findings_for_a_flawed_package_set() {
    let tmp = common::tempdir("extmod-audit-");
    let pf = tmp.path().join("p.toml");
    std::fs::write(
        &pf,
        r#"
[[package]]
name = "kmod-zram"
kconfig = ["CONFIG_ZRAM"]
# depends on kmod-lib-zsmalloc is missing

[[package]]
name = "kmod-lib-zsmalloc"
kconfig = ["CONFIG_ZSMALLOC"]

[[package]]
name = "kmod-nls"
kconfig = ["CONFIG_NLS"]
files = ["fs/nls/nls_base.ko", "fs/nls/nls_utf8.ko"]

[[package]]
name = "kmod-hwrng"
kconfig = ["CONFIG_DUMMY", "CONFIG_HW_RANDOM=y"]

[[package]]
name = "kmod-typo"
kconfig = ["CONFIG_VETH"]
files = ["drivers/net/veth.ko", "drivers/net/vethh.ko"]

[[package]]
name = "kmod-old-name"
kconfig = ["CONFIG_CRC7", "CONFIG_CRC7_RENAMED_LONG_AGO"]
"#,
    )
    .unwrap();
    let (code, doc) = audit(&pf, &[]);
    assert_eq!(code, 30, "{doc}");
    assert!(
        has(
            &doc,
            "missing-dependency",
            Some("kmod-zram"),
            "needs module `zsmalloc`, which is in package kmod-lib-zsmalloc"
        ),
        "{doc}"
    );
    assert!(
        has(
            &doc,
            "missing-dependency",
            Some("kmod-zram"),
            "needs module `lzo_compress`, which no package provides"
        ),
        "{doc}"
    );
    assert!(
        has(
            &doc,
            "kernel-affecting",
            Some("kmod-hwrng"),
            "CONFIG_HW_RANDOM=y"
        ),
        "{doc}"
    );
    assert!(
        has(
            &doc,
            "default-reliance",
            Some("kmod-nls"),
            "CONFIG_NLS_UTF8"
        ),
        "{doc}"
    );
    assert!(
        has(
            &doc,
            "files-missing",
            Some("kmod-typo"),
            "drivers/net/vethh.ko"
        ),
        "{doc}"
    );
    assert!(
        has(
            &doc,
            "unpackaged",
            None,
            "unpackaged kernel module found: drivers/block/loop.ko"
        ),
        "{doc}"
    );
    assert!(
        has(
            &doc,
            "unknown-symbol",
            Some("kmod-old-name"),
            "CONFIG_CRC7_RENAMED_LONG_AGO is not a Kconfig symbol of this kernel"
        ),
        "{doc}"
    );
    assert!(!has(&doc, "unknown-symbol", Some("kmod-typo"), ""), "{doc}");
    assert!(
        !has(&doc, "unpackaged", None, "drivers/block/zram/zram.ko"),
        "{doc}"
    );

    // The catch-all package owns exactly the unpackaged modules, and builds.
    let tk = test_kernel();
    let o = Command::cargo_bin("extmod")
        .unwrap()
        .args(["audit", "--catch-all", "kmod-rest", "-K"])
        .arg(&tk.obj)
        .arg("-S")
        .arg(&tk.src)
        .arg("--packages")
        .arg(&pf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let toml_start = text.find("[[package]]").unwrap();
    let catch = tmp.path().join("catch.toml");
    std::fs::write(&catch, &text[toml_start..]).unwrap();
    assert!(text[toml_start..].contains("\"drivers/block/loop.ko\""));
    let (code, doc) = audit(&catch, &[]);
    assert!(!has(&doc, "unpackaged", None, "loop.ko"), "{doc}");
    assert!(code == 0 || code == 30);
}

#[test]
fn openwrt_table_audit_completes() {
    let table = common::repo().join("../shared/data/openwrt-kmods-6.12.tsv");
    if !table.is_file() {
        eprintln!(
            "SKIP: {} is absent (it lives beside the repository, not in it)",
            table.display()
        );
        return;
    }
    let (code, doc) = audit(&table, &[]);
    assert_eq!(code, 30);
    assert!(doc["packages"].as_u64().unwrap() > 1000);
    let count = |kind: &str| {
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == kind)
            .count()
    };
    eprintln!(
        "OpenWrt table vs test kernel: kernel-affecting {}, missing-dependency {}, files-missing {}, files-extra {}, default-reliance {}, autoload-not-in-files {}",
        count("kernel-affecting"),
        count("missing-dependency"),
        count("files-missing"),
        count("files-extra"),
        count("default-reliance"),
        count("autoload-not-in-files")
    );
    assert!(count("kernel-affecting") > 100);
    let summary = &doc["summary"];
    eprintln!("summary: {summary}");
    let buildable = summary["without_kernel_change"].as_u64().unwrap();
    let affecting = summary["kernel_affecting"].as_u64().unwrap();
    assert_eq!(buildable + affecting, doc["packages"].as_u64().unwrap());
    assert!(
        summary["kernel_affecting_symbols"][0][0]
            .as_str()
            .unwrap()
            .starts_with("CONFIG_")
    );
    assert!(
        count("autoload-not-in-files") >= 30,
        "the table's notes list 33"
    );
    assert!(has(
        &doc,
        "default-reliance",
        Some("kmod-fs-nfs-v3"),
        "no KCONFIG"
    ));
}

/// Kernel-affecting KCONFIG follows the base build's fixdep record, as `extmod variant` does.
#[test]
fn kernel_affecting_follows_the_base_builds_record() {
    let tk = test_kernel();
    // The truth: printk.o (built in) was compiled depending on PRINTK_TIME; nothing built in
    // depends on SQUASHFS_XZ.
    let cmd = |o: &str| std::fs::read_to_string(tk.obj.join(o)).unwrap();
    assert!(cmd("kernel/printk/.printk.o.cmd").contains("include/config/PRINTK_TIME)"));
    let tmp = common::tempdir("extmod-audit-locality-");
    let pf = tmp.path().join("p.toml");
    std::fs::write(
        &pf,
        r#"
[[package]]
name = "kmod-time"
kconfig = ["CONFIG_ZRAM", "CONFIG_PRINTK_TIME=y"]

[[package]]
name = "kmod-fs-squashfs"
kconfig = ["CONFIG_SQUASHFS", "CONFIG_SQUASHFS_XZ=y"]
"#,
    )
    .unwrap();
    let (code, doc) = audit(&pf, &[]);
    assert_eq!(code, 30, "{doc}");
    assert!(
        has(
            &doc,
            "kernel-affecting",
            Some("kmod-time"),
            "kernel/printk/printk.o"
        ),
        "{doc}"
    );
    assert!(
        !doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "kernel-affecting" && f["package"] == "kmod-fs-squashfs"),
        "{doc}"
    );
}
