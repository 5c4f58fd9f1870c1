//! `--cc-launcher ccache` on the real test kernel: every module of the test config built as its
//! own package through ccache (its cache in the test's temporary directory), then again into
//! another object directory: every compile is a cache hit, the modules are byte-identical, Kbuild
//! sees the kernel's own compiler (no "compiler differs" warning), and a later build without
//! the launcher is a no-op.

mod common;

use assert_cmd::Command;
use serde_json::Value;
use std::path::Path;

/// ccache's counters (`ccache --print-stats`).
fn stats(cache: &Path) -> std::collections::BTreeMap<String, u64> {
    let o = std::process::Command::new("ccache")
        .arg("--print-stats")
        .env("CCACHE_DIR", cache)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `extmod build --raw --json` of `symbols` into `objs<n>`/`out<n>`, through `launcher` when
/// given, with `env` added; must succeed.
fn build(
    tk: &common::TestKernel,
    t: &Path,
    n: u32,
    symbols: &[String],
    launcher: Option<&str>,
    env: &[(&str, String)],
) -> Value {
    let mut c = Command::cargo_bin("extmod").unwrap();
    c.arg("build")
        .arg("-K")
        .arg(&tk.obj)
        .arg("-S")
        .arg(&tk.src)
        .arg("-D")
        .arg(t.join(format!("objs{n}")))
        .arg("-O")
        .arg(t.join(format!("out{n}")))
        .args(["--raw", "--json"])
        .args(symbols)
        .env("CCACHE_DIR", t.join("ccache"))
        .env_remove("CCACHE_BASEDIR")
        .env_remove("EXTMOD_CC_LAUNCHER")
        .envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(l) = launcher {
        c.args(["--cc-launcher", l]);
    }
    let o = c.output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn ccache_serves_every_compile_of_a_rebuild_in_another_objdir() {
    if which::which("ccache").is_err() {
        eprintln!("SKIP: ccache not installed (scripts/deps installs it)");
        return;
    }
    let tk = common::test_kernel();
    let tmp = common::tempdir("extmod-ccache-");
    let t = tmp.path();
    let symbols: Vec<String> = std::fs::read_to_string(tk.obj.join(".config"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_suffix("=m"))
        .map(str::to_string)
        .collect();
    let cold = build(tk, t, 1, &symbols, Some("ccache"), &[]);
    let after_cold = stats(&t.join("ccache"));
    assert!(after_cold["cache_miss"] > 20, "{after_cold:?}");
    let warm = build(tk, t, 2, &symbols, Some("ccache"), &[]);
    let after_warm = stats(&t.join("ccache"));
    assert_eq!(
        after_warm["cache_miss"], after_cold["cache_miss"],
        "a compile of the rebuild missed the cache: {after_warm:?}"
    );
    assert!(after_warm["direct_cache_hit"] > after_cold["direct_cache_hit"] + 20);
    // The same modules, and Kbuild saw the kernel's compiler.
    let mut modules = 0;
    for (a, b) in cold["packages"]
        .as_array()
        .unwrap()
        .iter()
        .zip(warm["packages"].as_array().unwrap())
    {
        assert_eq!(a["name"], b["name"]);
        let pkg = a["name"].as_str().unwrap();
        for m in a["installed"].as_array().unwrap() {
            let rel = m["path"].as_str().unwrap();
            let x = std::fs::read(t.join("out1").join(pkg).join(rel)).unwrap();
            let y = std::fs::read(t.join("out2").join(pkg).join(rel)).unwrap();
            assert!(x == y, "{rel} differs between the cold and the warm build");
            modules += 1;
        }
        let log = std::fs::read_to_string(t.join("objs2").join(pkg).join("build.log")).unwrap();
        assert!(log.contains("'CC=ccache "), "{pkg}: {log}");
        assert!(!log.contains("compiler differs"), "{pkg}: {log}");
    }
    assert!(modules >= 13, "{modules} modules");
    // The launcher is in no freshness key.
    let again = build(tk, t, 2, &symbols, None, &[]);
    for p in again["packages"].as_array().unwrap() {
        assert_eq!(p["status"], "fresh", "{p}");
    }
}

#[test]
fn a_missing_launcher_is_named() {
    let tk = common::test_kernel();
    let tmp = common::tempdir("extmod-launcher-");
    let o = Command::cargo_bin("extmod")
        .unwrap()
        .arg("build")
        .arg("-K")
        .arg(&tk.obj)
        .arg("-S")
        .arg(&tk.src)
        .arg("-D")
        .arg(tmp.path().join("objs"))
        .arg("-O")
        .arg(tmp.path().join("out"))
        .args(["--cc-launcher", "no-such-launcher-x", "CONFIG_DUMMY"])
        .assert()
        .code(17)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`no-such-launcher-x`") && err.contains("launcher") && err.contains("hint:"),
        "{err}"
    );
    assert!(!tmp.path().join("objs").exists());
    // It reaches make's CC and the shell: anything but one plain word is refused (exit 25).
    for bad in ["ccache;touch x", "ccache $(X)", "ccache -s"] {
        let o = Command::cargo_bin("extmod")
            .unwrap()
            .arg("build")
            .arg("-K")
            .arg(&tk.obj)
            .arg("-S")
            .arg(&tk.src)
            .arg("-D")
            .arg(tmp.path().join("objs"))
            .arg("-O")
            .arg(tmp.path().join("out"))
            .args(["--cc-launcher", bad, "CONFIG_DUMMY"])
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(25),
            "{bad}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!tmp.path().join("objs").exists(), "{bad}");
    }
}

/// Two distcc daemons on 127.0.0.1, stopped when dropped (also on a failed assertion).
struct Daemons(Vec<std::process::Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        // distccd forks its workers (as the `distccd` user when started as root): stop the
        // whole process group each daemon leads.
        for c in &mut self.0 {
            // SAFETY: kill(2) on a process group this test created.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn distcc_spreads_the_compiles_over_two_daemons_with_identical_modules() {
    if which::which("distccd").is_err() || which::which("distcc").is_err() {
        eprintln!("SKIP: distcc not installed (scripts/deps installs it)");
        return;
    }
    let tk = common::test_kernel();
    let tmp = common::tempdir("extmod-distcc-");
    let t = tmp.path();
    // distccd started as root runs as the `distccd` user: it must be able to write its log.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::create_dir(t.join("distcc-home")).unwrap();
    let ports = [free_port(), free_port()];
    let mut daemons = Daemons(Vec::new());
    for p in ports {
        daemons.0.push(
            std::os::unix::process::CommandExt::process_group(
                &mut std::process::Command::new("distccd"),
                0,
            )
            .args(["--daemon", "--no-detach", "--allow", "127.0.0.1"])
            .args(["--listen", "127.0.0.1", "--port", &p.to_string()])
            .args(["--jobs", "2", "--log-level", "info"])
            .arg(format!(
                "--log-file={}",
                t.join(format!("distccd-{p}.log")).display()
            ))
            .spawn()
            .unwrap(),
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let symbols = [
        "CONFIG_DUMMY",
        "CONFIG_ZRAM",
        "CONFIG_SQUASHFS",
        "CONFIG_NLS_UTF8",
    ]
    .map(String::from);
    let hosts = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}/2"))
        .collect::<Vec<_>>()
        .join(" ");
    let env = [
        ("DISTCC_HOSTS", hosts),
        ("DISTCC_FALLBACK", "0".to_string()),
        ("DISTCC_SKIP_LOCAL_RETRY", "1".to_string()),
        ("DISTCC_DIR", t.join("distcc-home").display().to_string()),
    ];
    let remote = build(tk, t, 8, &symbols, Some("distcc"), &env);
    drop(daemons);
    // Both daemons compiled objects.
    for p in ports {
        let log = std::fs::read_to_string(t.join(format!("distccd-{p}.log"))).unwrap_or_default();
        assert!(
            log.matches("COMPILE_OK").count() >= 2,
            "distccd on port {p} compiled nothing:\n{log}"
        );
    }
    // The same modules as a local build.
    build(tk, t, 9, &symbols, None, &[]);
    for p in remote["packages"].as_array().unwrap() {
        let pkg = p["name"].as_str().unwrap();
        for m in p["installed"].as_array().unwrap() {
            let rel = m["path"].as_str().unwrap();
            let a = std::fs::read(t.join("out8").join(pkg).join(rel)).unwrap();
            let b = std::fs::read(t.join("out9").join(pkg).join(rel)).unwrap();
            assert!(a == b, "{rel}: distcc's differs from the local build");
        }
        // distcc names gcc by its target triplet (x86_64-linux-gnu-gcc), so Kbuild's version
        // text differs from the recorded one by that name only: the same gcc.
        let log = std::fs::read_to_string(t.join("objs8").join(pkg).join("build.log")).unwrap();
        if let Some(at) = log.find("You are using:") {
            let line = log[at..].lines().next().unwrap();
            let version = line.split_once('(').map(|(_, v)| v).unwrap_or("");
            let want = std::fs::read_to_string(tk.obj.join("include/config/auto.conf"))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))
                .unwrap()
                .to_string();
            assert!(
                want.contains(version.trim_end_matches('"')),
                "{line} vs {want}"
            );
        }
    }
}
