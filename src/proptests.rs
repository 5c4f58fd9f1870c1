//! Property tests for every parser fed by users or files: arbitrary input never panics, and
//! nothing accepted turns into a malformed file or command line.

use crate::package::{self, KconfigReq};
use proptest::prelude::*;

/// Text that looks like the input it is aimed at often enough to get past the first check.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~\\n\\t\"'$`\\\\]{0,200}",
        "(CONFIG_[A-Z0-9_]{1,12}=(y|m|n|\"[^\"\\n]{0,10}\"|[0-9]{1,4})\\n){0,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// Package files: no panic; every accepted package has a safe name and relative .ko files.
    #[test]
    fn package_files(text in texty(), name in "[ -~]{0,40}", kc in "[ -~\\n]{0,30}", file in "[ -~]{0,30}") {
        let _ = package::parse(&text);
        let doc = format!(
            "[[package]]\nname = {}\nkconfig = [{}]\nfiles = [{}]\n",
            serde_json::Value::from(name.as_str()),
            serde_json::Value::from(kc.as_str()),
            serde_json::Value::from(file.as_str()),
        );
        if let Ok(pkgs) = package::parse(&doc) {
            for p in pkgs {
                prop_assert!(!p.name.is_empty() && p.name.len() <= 128);
                prop_assert!(!p.name.starts_with('.'));
                prop_assert!(!p.name.contains('/') && !p.name.contains(char::is_whitespace));
                for f in &p.files {
                    prop_assert!(f.ends_with(".ko") && !f.starts_with('/') && !f.contains(".."));
                }
            }
        }
    }

    /// `--set` and kconfig entries: whatever is accepted adds exactly one line to `.config`.
    #[test]
    fn set_values_add_one_line(s in "(CONFIG_)?[A-Za-z0-9_ \\n]{0,12}(=[ -~\\n\\r\\t]{0,20})?") {
        if let Ok(r) = KconfigReq::parse(&s)
            && crate::variant::check_request(&r).is_ok()
        {
            let out = crate::variant::apply("CONFIG_BASE=y\n", std::slice::from_ref(&r));
            let lines: Vec<&str> = out.lines().collect();
            prop_assert_eq!(lines.len(), 2, "{:?} -> {:?}", s, out);
            let set = format!("CONFIG_{}=", r.symbol);
            let unset = format!("# CONFIG_{} is not set", r.symbol);
            let ok = lines[1].starts_with(&set) || lines[1] == unset;
            prop_assert!(ok, "{:?}", lines[1]);
        }
    }

    /// The OpenWrt package table: no panic, and names/files come out without separators.
    #[test]
    fn openwrt_table(rows in proptest::collection::vec("[ -~\\t]{0,60}", 0..6)) {
        let mut text = String::from(
            "source\tpackage\tdepends_kmods\tkconfig_6.12\tfiles_6.12\tfiles_conditional_6.12\tautoload_6.12\n",
        );
        for r in &rows {
            text.push_str(r);
            text.push('\n');
        }
        if let Ok(pkgs) = crate::audit::parse_openwrt_table(&text) {
            for p in pkgs {
                prop_assert!(!p.name.contains('\t') && !p.name.contains('\n'));
                for f in &p.files {
                    prop_assert!(f.ends_with(".ko") && !f.contains(char::is_whitespace));
                }
            }
        }
    }

    /// `.config`/auto.conf readers: no panic; a pair is accepted only when every auto.conf
    /// value is in .config.
    #[test]
    fn config_readers(a in texty(), b in texty()) {
        let _ = kbuild_install::config::parse(&a);
        let _ = kbuild_install::tree::config_value(&a, "A");
        let _ = kbuild_install::tree::kernelversion_of(&a);
        let _ = kbuild_install::tree::AutoConfCmd::parse(&a);
        let _ = kbuild_install::tree::unquote(&a);
        if kbuild_install::tree::check_config_pair(&a, &b).is_ok() {
            let cfg = kbuild_install::config::parse(&a);
            for (k, v) in kbuild_install::config::parse(&b) {
                let c = cfg.get(&k);
                prop_assert!(c.is_some(), "{} missing", k);
                let c = c.unwrap();
                prop_assert!(*c == v || kbuild_install::tree::unquote(c) == v
                    || c.trim_matches('"') == v);
            }
        }
    }

    /// The manifest: arbitrary text never panics; any manifest round-trips.
    #[test]
    fn manifest(text in texty(), cc in "[ -~]{0,20}", rel in "[ -~]{0,20}") {
        let _ = serde_json::from_str::<kbuild_install::Manifest>(&text);
        let d = tempfile::tempdir().unwrap();
        let dir = camino::Utf8Path::from_path(d.path()).unwrap();
        std::fs::write(dir.join(kbuild_install::manifest::MANIFEST), &text).unwrap();
        let _ = kbuild_install::Manifest::load(dir);
        let m = kbuild_install::Manifest {
            format: 1,
            kernelrelease: rel.clone(),
            kernelversion: rel,
            arch: "x86".into(),
            srcarch: "x86".into(),
            cross_compile: String::new(),
            cc: cc.clone(),
            cc_version_text: cc,
            toolchain_env: Default::default(),
            config_sha256: String::new(),
            vermagic: None,
            machine: None,
            make_vars_extra: Default::default(),
            made_from: kbuild_install::manifest::MadeFrom {
                srctree: "/s".into(),
                objtree: "/o".into(),
                made_at: 0,
                tool: "kbuild-install test".into(),
            },
            files: Default::default(),
        };
        m.store(dir).unwrap();
        prop_assert_eq!(kbuild_install::Manifest::load(dir).unwrap(), m);
    }

    /// Kbuild's `.cmd` files: no panic; dependencies never carry whitespace or rule syntax.
    #[test]
    fn cmd_files(text in texty()) {
        for d in crate::fresh::cmd_deps(&text) {
            prop_assert!(!d.contains(' ') && !d.starts_with("$("));
        }
    }

    /// Paths: an accepted path has nothing the shell or make would interpret.
    #[test]
    fn paths(p in "/[ -~\\n\\t]{0,30}") {
        if kbuild_install::paths::check_path(camino::Utf8Path::new(&p)).is_ok() {
            prop_assert!(p.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+,=@".contains(c)),
                "{:?} accepted", p);
        }
    }

    /// Module.symvers lines as the engine filters them (tab-separated): no panic.
    #[test]
    fn symvers(text in "([0-9a-fx]{0,10}\\t[A-Za-z_]{0,8}\\t[a-z/]{0,12}\\t[A-Z_]{0,12}\\t?\\n){0,6}") {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| l.split('\t').nth(2).is_none_or(|m| m != "drivers/net/dummy"))
            .collect();
        prop_assert!(kept.len() <= text.lines().count());
    }
}
