//! Hostile input, concurrency and crashes: every case asserts the exit code, the message, and
//! that nothing outside the directories the command may write changed. Each command runs in a
//! private mount namespace where the source tree (S), the object tree (O) and the Kbuild tree
//! (K) are read-only bind mounts (when the machine allows it), so an attempted write fails
//! loudly instead of going unnoticed.
//!
//! `cargo test --test hostile -- --nocapture` prints the table of cases and their exit codes.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_extmod");
/// What an injected shell command would create.
const INJECTED: &str = "/tmp/extmod-hostile-INJECTED";

fn k() -> &'static Path {
    static K: OnceLock<PathBuf> = OnceLock::new();
    K.get_or_init(|| common::kbuild("hostile-k"))
}

fn tk() -> &'static common::TestKernel {
    common::test_kernel()
}

/// Whether commands can run with S, O and K as read-only bind mounts.
fn ro_namespace() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let ok = Command::new("unshare")
            .args(["-m", "--propagation", "private", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "NOTE: no private mount namespace here; S, O and K are checked by listing only"
            );
        }
        ok
    })
}

const RO_SCRIPT: &str = r#"set -e
n=$1; shift
while [ "$n" -gt 0 ]; do
  mount --bind "$1" "$1"; mount -o remount,bind,ro "$1" "$1"; shift; n=$((n-1))
done
exec "$@""#;

/// `extmod <args>` with S, O, K (and `extra_ro`) read-only.
fn guarded(args: &[OsString], extra_ro: &[&Path]) -> Command {
    let mut ro: Vec<PathBuf> = vec![tk().src.clone(), tk().obj.clone(), k().to_path_buf()];
    ro.extend(extra_ro.iter().map(|p| p.to_path_buf()));
    if !ro_namespace() {
        let mut c = Command::new(BIN);
        c.args(args);
        return c;
    }
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        RO_SCRIPT,
        "sh",
    ])
    .arg(ro.len().to_string())
    .args(&ro)
    .arg(BIN)
    .args(args);
    c
}

/// Size, mtime and inode of every entry below `root`, except below the `writable` paths.
fn listing(root: &Path, writable: &[PathBuf]) -> BTreeMap<PathBuf, (u64, i64, u64)> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    for e in walkdir::WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| !writable.iter().any(|w| e.path().starts_with(w)))
        .filter_map(Result::ok)
    {
        if let Ok(m) = e.path().symlink_metadata() {
            let mtime = if m.is_dir() { 0 } else { m.mtime() };
            out.insert(e.path().to_path_buf(), (m.len(), mtime, m.ino()));
        }
    }
    out
}

static TABLE: Mutex<Vec<(String, i32, String)>> = Mutex::new(Vec::new());

/// One hostile case.
struct Case {
    name: String,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    code: i32,
    msgs: Vec<String>,
    /// Paths the command may write (D, OUT, DEST, --out); everything else in the scratch
    /// directory must be unchanged.
    writable: Vec<PathBuf>,
    extra_ro: Vec<PathBuf>,
}

fn case(name: &str, code: i32, msg: &str) -> Case {
    Case {
        name: name.into(),
        args: Vec::new(),
        env: Vec::new(),
        code,
        msgs: if msg.is_empty() {
            vec![]
        } else {
            vec![msg.into()]
        },
        writable: Vec::new(),
        extra_ro: Vec::new(),
    }
}

impl Case {
    fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    fn msg(mut self, m: &str) -> Self {
        self.msgs.push(m.into());
        self
    }
    fn writes(mut self, p: &Path) -> Self {
        self.writable.push(p.to_path_buf());
        self
    }
    fn ro(mut self, p: &Path) -> Self {
        self.extra_ro.push(p.to_path_buf());
        self
    }

    /// Run it in `scratch`; assert code, messages, and an unchanged scratch outside what it
    /// may write.
    fn run(self, scratch: &Path) -> Output {
        let _ = std::fs::remove_file(INJECTED);
        let before = listing(scratch, &self.writable);
        let extra: Vec<&Path> = self.extra_ro.iter().map(PathBuf::as_path).collect();
        let mut c = guarded(&self.args, &extra);
        c.env("CI", "1").current_dir(scratch).stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        assert_eq!(
            code,
            self.code,
            "{}: exit code\n--- stdout\n{}\n--- stderr\n{err}",
            self.name,
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!err.contains("panicked"), "{}: panic\n{err}", self.name);
        let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
        for m in &self.msgs {
            assert!(
                all.contains(m.as_str()),
                "{}: no `{m}` in\n{all}",
                self.name
            );
        }
        assert!(
            !all.contains("Read-only file system") || self.code != 0,
            "{}: a write into S, O or K was attempted\n{all}",
            self.name
        );
        let after = listing(scratch, &self.writable);
        let changed: Vec<&PathBuf> = before
            .keys()
            .chain(after.keys())
            .filter(|p| before.get(*p) != after.get(*p))
            .collect();
        assert!(
            changed.is_empty(),
            "{}: files outside D/OUT changed: {changed:?}",
            self.name
        );
        assert!(
            !Path::new(INJECTED).exists(),
            "{}: injected shell code ran",
            self.name
        );
        let first = all
            .lines()
            .find(|l| l.contains("error") || l.contains("Failed") || l.contains("Refused"))
            .unwrap_or("")
            .trim()
            .chars()
            .take(110)
            .collect();
        TABLE
            .lock()
            .unwrap()
            .push((self.name.clone(), self.code, first));
        out
    }
}

fn print_table(title: &str) {
    let t = TABLE.lock().unwrap();
    eprintln!("\n{title}: {} cases so far in this process", t.len());
    for (n, c, m) in t.iter() {
        eprintln!("| {n} | {c} | {m} |");
    }
}

fn os<S: AsRef<std::ffi::OsStr>>(s: S) -> OsString {
    s.as_ref().to_os_string()
}

fn install_args(src: &Path, obj: &Path, dest: &Path) -> Vec<OsString> {
    vec![
        os("kbuild-install"),
        os("--no-verify"),
        os("--srctree"),
        os(src),
        os("--objtree"),
        os(obj),
        os(dest),
    ]
}

fn build_args(k: &Path, s: &Path, d: &Path, out: &Path) -> Vec<OsString> {
    vec![
        os("build"),
        os("--kbuild"),
        os(k),
        os("--srctree"),
        os(s),
        os("--objdir"),
        os(d),
        os("--dest"),
        os(out),
    ]
}

/// A hardlinked copy (`cp -al`): writable names, shared content until a file is replaced.
fn link_copy(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-al")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Replace `path` with new content (a new inode, as tar and editors do), its mtime set to
/// `age` ago.
fn replace(path: &Path, content: &[u8], age: Duration) {
    let tmp = path.with_extension("extmod-new");
    std::fs::write(&tmp, content).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(std::time::SystemTime::now() - age).unwrap();
    drop(f);
    std::fs::rename(&tmp, path).unwrap();
}

fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn read_only_guard_is_active() {
    if !ro_namespace() {
        return;
    }
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            RO_SCRIPT,
            "sh",
            "1",
        ])
        .arg(&tk().src)
        .args(["touch"])
        .arg(tk().src.join("extmod-probe"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"));
    assert!(!tk().src.join("extmod-probe").exists());
}

#[test]
fn catalogue_kbuild_install() {
    let (s, o) = (&tk().src, &tk().obj);
    let tmp = common::tempdir("extmod-hostile-ki-");
    let t = tmp.path();
    // Shell code in DEST (item 3), and other characters Kbuild and the shell misread.
    for (name, dest) in [
        ("ki: DEST with $(cmd)", format!("k$(date>>{INJECTED})")),
        ("ki: DEST with backticks", format!("k`date>>{INJECTED}`")),
        ("ki: DEST with ;", format!("k;date>>{INJECTED}")),
        ("ki: DEST with a space", "k x".to_string()),
        ("ki: DEST with :", "k:x".to_string()),
        ("ki: DEST with %", "k%x".to_string()),
        ("ki: DEST with a newline", "k\nx".to_string()),
    ] {
        let dest = t.join(dest);
        case(name, 25, "which Kbuild and the shell cannot handle")
            .msg("hint:")
            .args(install_args(s, o, &dest))
            .run(t);
        assert!(!dest.exists(), "{name}");
    }
    // S through a path with shell syntax.
    let odd = t.join("s$x");
    std::os::unix::fs::symlink(s, &odd).unwrap();
    case("ki: srctree path with $", 25, "cannot handle")
        .args(install_args(&odd, o, &t.join("k1")))
        .run(t);
    // DEST inside or around the trees.
    case("ki: DEST inside S", 14, "is inside the source tree")
        .args(install_args(s, o, &s.join("kb")))
        .run(t);
    case("ki: DEST inside O", 14, "is inside the object tree")
        .args(install_args(s, o, &o.join("kb")))
        .run(t);
    case("ki: DEST holds O", 14, "is inside destination")
        .args(install_args(s, o, o.parent().unwrap()))
        .run(t);
    // Data loss (item 6): a directory merely holding a file named like the manifest.
    let victim = t.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("extmod-kbuild.json"), "{}").unwrap();
    std::fs::write(victim.join("thesis.tex"), "precious").unwrap();
    case("ki: existing DEST without --force", 15, "already exists")
        .args(install_args(s, o, &victim))
        .run(t);
    case(
        "ki: --force on a directory with a fake manifest",
        15,
        "is not a kbuild tree made by kbuild-install",
    )
    .args(install_args(s, o, &victim))
    .args(["--force"])
    .run(t);
    assert_eq!(
        std::fs::read_to_string(victim.join("thesis.tex")).unwrap(),
        "precious"
    );
    let file_dest = t.join("a-file");
    std::fs::write(&file_dest, "x").unwrap();
    case("ki: --force on a plain file", 15, "is not a kbuild tree")
        .args(install_args(s, o, &file_dest))
        .args(["--force"])
        .run(t);
    // Trees that are not what they claim.
    case("ki: S does not exist", 10, "does not exist")
        .args(install_args(&t.join("nope"), o, &t.join("k2")))
        .run(t);
    case("ki: S is a file", 10, "not a directory")
        .args(install_args(&file_dest, o, &t.join("k2")))
        .run(t);
    case("ki: O is not configured", 11, "is not configured")
        .args(install_args(s, t, &t.join("k2")))
        .run(t);
    let fake = t.join("fake-src");
    std::fs::create_dir_all(fake.join("scripts/kconfig")).unwrap();
    std::fs::write(fake.join("Kconfig"), "").unwrap();
    std::fs::write(fake.join("scripts/Makefile.build"), "").unwrap();
    std::fs::write(
        fake.join("Makefile"),
        "VERSION = 5\nPATCHLEVEL = 1\nSUBLEVEL = 0\n",
    )
    .unwrap();
    case("ki: S of another version", 13, "is version 5.1.0")
        .args(install_args(&fake, o, &t.join("k2")))
        .run(t);
    // A damaged O (item 7): a truncated .config.
    let o2 = t.join("o2");
    link_copy(o, &o2);
    let cfg = std::fs::read_to_string(o.join(".config")).unwrap();
    replace(
        &o2.join(".config"),
        &cfg.as_bytes()[..cfg.len() / 2],
        Duration::ZERO,
    );
    case("ki: O with a truncated .config", 11, "missing from .config")
        .args(install_args(s, &o2, &t.join("k3")))
        .ro(&o2)
        .run(t);
    replace(&o2.join(".config"), b"", Duration::ZERO);
    case("ki: O with an empty .config", 11, "does not match")
        .args(install_args(s, &o2, &t.join("k3")))
        .ro(&o2)
        .run(t);
    std::fs::remove_dir_all(&o2).unwrap();
    // Stale temporaries of a killed run are removed by the next one; --force replaces its own
    // tree in one step.
    let good = t.join("good");
    case("ki: fresh install", 0, "Installed")
        .args(install_args(s, o, &good))
        .writes(&good)
        .run(t);
    let stale = t.join(format!(".good.kbuild-install-{}-x", dead_pid()));
    std::fs::create_dir_all(stale.join("include")).unwrap();
    let old_ino = good.metadata().unwrap().ino();
    case("ki: --force replaces its own tree", 0, "Installed")
        .args(install_args(s, o, &good))
        .args(["--force"])
        .writes(&good)
        .writes(&stale)
        .run(t);
    assert!(!stale.exists(), "stale temporary left");
    assert_ne!(good.metadata().unwrap().ino(), old_ino);
    let left: Vec<_> = std::fs::read_dir(t)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".good."))
        .collect();
    assert!(left.is_empty(), "left beside DEST: {left:?}");
    // A build holding the tree (shared lock) keeps --force waiting.
    let mut reader = Command::new("flock")
        .arg("-s")
        .arg(&good)
        .args(["sleep", "12"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    case("ki: --force waits for a build using the tree", 0, "Waiting")
        .args(install_args(s, o, &good))
        .args(["--force"])
        .writes(&good)
        .run(t);
    assert!(start.elapsed() >= Duration::from_secs(1), "did not wait");
    reader.wait().unwrap();
    // The self-test under a make above it (its MAKEFLAGS/MAKELEVEL must not leak in) and with a
    // TMPDIR Kbuild cannot take; a self-test directory left by a killed run is removed.
    let stale_selftest =
        std::env::temp_dir().join(format!("kbuild-install-selftest-{}-x", dead_pid()));
    std::fs::create_dir_all(&stale_selftest).unwrap();
    let odd_tmp = t.join("tmp$x");
    std::fs::create_dir_all(&odd_tmp).unwrap();
    let verified = t.join("verified");
    let mut args = install_args(s, o, &verified);
    args.retain(|a| a != "--no-verify");
    case(
        "ki: self-test under make, with a hostile TMPDIR",
        0,
        "Verified",
    )
    .args(args)
    .env(
        "MAKEFLAGS",
        "-j1 --jobserver-auth=fifo:/nonexistent -- KCFLAGS=-DBROKEN",
    )
    .env("MAKELEVEL", "3")
    .env("TMPDIR", odd_tmp.to_str().unwrap())
    .writes(&verified)
    .writes(&t.join(".verified.lock"))
    .run(t);
    assert!(!stale_selftest.exists(), "stale self-test directory left");
    // JSON to a full disk: an error, not a panic.
    case(
        "ki: --json to /dev/full",
        70,
        "cannot write to standard output",
    )
    .args(install_args(s, o, &t.join("k4")))
    .args(["--json"])
    .writes(&t.join("k4"))
    .writes(&t.join(".k4.lock"))
    .run_to_dev_full(t);
    print_table("kbuild-install");
}

impl Case {
    fn run_to_dev_full(self, scratch: &Path) -> Output {
        let mut args = vec![os("-c"), os("exec \"$0\" \"$@\" >/dev/full")];
        args.push(os(BIN));
        args.extend(self.args.iter().cloned());
        let mut c = self;
        c.args = args;
        // Run the shell instead of extmod directly.
        let out = Command::new("sh")
            .args(&c.args)
            .env("CI", "1")
            .current_dir(scratch)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(c.code), "{}: {err}", c.name);
        assert!(!err.contains("panicked"), "{}: {err}", c.name);
        for m in &c.msgs {
            assert!(err.contains(m.as_str()), "{}: {err}", c.name);
        }
        TABLE.lock().unwrap().push((
            c.name.clone(),
            c.code,
            err.lines().next().unwrap_or("").to_string(),
        ));
        out
    }
}

#[test]
fn catalogue_build() {
    let (s, o, k) = (&tk().src, &tk().obj, k());
    let tmp = common::tempdir("extmod-hostile-build-");
    let t = tmp.path();
    let (d, out) = (t.join("d"), t.join("out"));
    let b = |d: &Path, out: &Path| build_args(k, s, d, out);
    // D and OUT must stay out of every tree (item 2).
    for (name, dd, oo, msg) in [
        (
            "build: D inside S",
            s.join("d"),
            out.clone(),
            "inside the source tree",
        ),
        (
            "build: D inside K",
            k.join("d"),
            out.clone(),
            "inside the Kbuild tree",
        ),
        (
            "build: D inside O (K's origin)",
            o.join("d"),
            out.clone(),
            "inside the object tree",
        ),
        (
            "build: OUT inside O (K's origin)",
            d.clone(),
            o.join("x"),
            "inside the object tree",
        ),
        (
            "build: D holds K",
            k.parent().unwrap().to_path_buf(),
            out.clone(),
            "is inside destination",
        ),
        ("build: D equals OUT", d.clone(), d.clone(), "overlap"),
        ("build: OUT inside D", d.clone(), d.join("out"), "overlap"),
        ("build: D inside OUT", out.join("d"), out.clone(), "overlap"),
    ] {
        case(name, 14, msg)
            .args(b(&dd, &oo))
            .args(["CONFIG_DUMMY"])
            .run(t);
    }
    for (name, dd) in [
        (
            "build: D with $(cmd)",
            t.join(format!("d$(date>>{INJECTED})")),
        ),
        ("build: D with a space", t.join("d x")),
        ("build: D with :", t.join("d:x")),
    ] {
        case(name, 25, "cannot handle")
            .args(b(&dd, &out))
            .args(["CONFIG_DUMMY"])
            .run(t);
    }
    let file = t.join("plain-file");
    std::fs::write(&file, "").unwrap();
    case("build: D below a file", 16, "is not writable")
        .args(b(&file.join("d"), &out))
        .args(["CONFIG_DUMMY"])
        .run(t);
    case("build: K does not exist", 19, "is not a Kbuild tree")
        .args(build_args(&t.join("nope"), s, &d, &out))
        .args(["CONFIG_DUMMY"])
        .run(t);
    case("build: K is the source tree", 19, "is not a Kbuild tree")
        .args(build_args(s, s, &d, &out))
        .args(["CONFIG_DUMMY"])
        .run(t);
    // A damaged K (item 7).
    let cfg = std::fs::read_to_string(k.join(".config")).unwrap();
    let auto = std::fs::read_to_string(k.join("include/config/auto.conf")).unwrap();
    let manifest = std::fs::read_to_string(k.join("extmod-kbuild.json")).unwrap();
    type Damage = Box<dyn Fn(&Path)>;
    let damages: Vec<(&str, i32, &str, Damage)> = vec![
        (
            "build: K with an edited .config",
            11,
            "sha256 differs",
            Box::new({
                let cfg = cfg.clone();
                move |k2: &Path| {
                    replace(
                        &k2.join(".config"),
                        cfg.replace("CONFIG_DUMMY=m", "CONFIG_DUMMY=y").as_bytes(),
                        Duration::ZERO,
                    )
                }
            }),
        ),
        (
            "build: K with a truncated .config",
            11,
            "sha256 differs",
            Box::new({
                let cfg = cfg.clone();
                move |k2: &Path| {
                    replace(
                        &k2.join(".config"),
                        &cfg.as_bytes()[..cfg.len() / 3],
                        Duration::ZERO,
                    )
                }
            }),
        ),
        (
            "build: K with an empty manifest",
            19,
            "is damaged",
            Box::new(|k2: &Path| replace(&k2.join("extmod-kbuild.json"), b"", Duration::ZERO)),
        ),
        (
            "build: K with a garbage manifest",
            19,
            "is damaged",
            Box::new(|k2: &Path| {
                replace(
                    &k2.join("extmod-kbuild.json"),
                    b"{\"format\": [",
                    Duration::ZERO,
                )
            }),
        ),
        (
            "build: K with a manifest missing fields",
            19,
            "is damaged",
            Box::new({
                let m = manifest.clone();
                move |k2: &Path| {
                    let v: serde_json::Value = serde_json::from_str(&m).unwrap();
                    let mut v = v.as_object().unwrap().clone();
                    v.remove("config_sha256");
                    replace(
                        &k2.join("extmod-kbuild.json"),
                        serde_json::to_string(&v).unwrap().as_bytes(),
                        Duration::ZERO,
                    )
                }
            }),
        ),
        (
            "build: K with a corrupt auto.conf",
            11,
            "is not `CONFIG_X=value`",
            Box::new({
                let a = auto.clone();
                move |k2: &Path| {
                    replace(
                        &k2.join("include/config/auto.conf"),
                        format!("{a}%%% garbage\n").as_bytes(),
                        Duration::ZERO,
                    )
                }
            }),
        ),
        (
            "build: K with an auto.conf disagreeing with .config",
            11,
            "in auto.conf but",
            Box::new({
                let a = auto.clone();
                move |k2: &Path| {
                    replace(
                        &k2.join("include/config/auto.conf"),
                        a.replace("CONFIG_DUMMY=m", "CONFIG_DUMMY=y").as_bytes(),
                        Duration::ZERO,
                    )
                }
            }),
        ),
    ];
    for (i, (name, code, msg, damage)) in damages.iter().enumerate() {
        let k2 = t.join(format!("k{i}"));
        link_copy(k, &k2);
        damage(&k2);
        case(name, *code, msg)
            .args(build_args(&k2, s, &d, &out))
            .args(["CONFIG_DUMMY"])
            .ro(&k2)
            .run(t);
        std::fs::remove_dir_all(&k2).unwrap();
    }
    // Refusals.
    for (name, sym, code, msg) in [
        (
            "build: unknown symbol",
            "CONFIG_NO_SUCH_THING",
            20,
            "is not a Kconfig symbol",
        ),
        ("build: bool symbol", "CONFIG_NET", 21, "builds no module"),
        (
            "build: built-in symbol",
            "CONFIG_SERIAL_8250",
            22,
            "built into the base kernel",
        ),
        (
            "build: symbol with shell syntax",
            "CONFIG_$(id)",
            24,
            "is not a CONFIG symbol",
        ),
    ] {
        case(name, code, msg)
            .args(b(&d, &out))
            .args([sym])
            .writes(&d)
            .writes(&out)
            .run(t);
    }
    // Package files.
    let pf = t.join("p.toml");
    let long = "a".repeat(300);
    let long_pkg = format!("[[package]]\nname = \"{long}\"\nkconfig = [\"CONFIG_DUMMY\"]\n");
    for (name, text, code, msg) in [
        (
            "build: package file syntax error",
            "[[package]\nname=",
            24,
            "package file",
        ),
        (
            "build: unknown dependency",
            "[[package]]\nname = \"a\"\nkconfig = [\"CONFIG_DUMMY\"]\ndepends = [\"b\"]\n",
            24,
            "unknown package `b`",
        ),
        (
            "build: dependency cycle",
            "[[package]]\nname = \"a\"\nkconfig = [\"CONFIG_DUMMY\"]\ndepends = [\"b\"]\n[[package]]\nname = \"b\"\nkconfig = [\"CONFIG_VETH\"]\ndepends = [\"a\"]\n",
            24,
            "cycle",
        ),
        (
            "build: 300-character package name",
            long_pkg.as_str(),
            24,
            "at most 128",
        ),
        (
            "build: package name with a slash",
            "[[package]]\nname = \"../../etc\"\nkconfig = [\"CONFIG_DUMMY\"]\n",
            24,
            "may only hold",
        ),
        (
            "build: package name starting with a dot",
            "[[package]]\nname = \".extmod-locks\"\nkconfig = [\"CONFIG_DUMMY\"]\n",
            24,
            "may only hold",
        ),
        (
            "build: absolute module path",
            "[[package]]\nname = \"a\"\nkconfig = [\"CONFIG_DUMMY\"]\nfiles = [\"/etc/passwd.ko\"]\n",
            24,
            "relative to the kernel tree",
        ),
        (
            "build: module path climbing out",
            "[[package]]\nname = \"a\"\nkconfig = [\"CONFIG_DUMMY\"]\nfiles = [\"../../x.ko\"]\n",
            24,
            "relative to the kernel tree",
        ),
        (
            "build: kconfig value smuggling a line",
            "[[package]]\nname = \"a\"\nkconfig = [\"CONFIG_DUMMY=m\\nCONFIG_MODVERSIONS=n\"]\n",
            24,
            "is not a Kconfig value",
        ),
        (
            "build: package defined twice",
            "[[package]]\nname = \"a\"\nkconfig = [\"CONFIG_DUMMY\"]\n[[package]]\nname = \"a\"\nkconfig = [\"CONFIG_VETH\"]\n",
            24,
            "defined twice",
        ),
    ] {
        std::fs::write(&pf, text).unwrap();
        case(name, code, msg)
            .args(b(&d, &out))
            .args([os("--packages"), os(&pf)])
            .writes(&d)
            .writes(&out)
            .run(t);
    }
    // Directories extmod did not make are never replaced (item 6).
    let d2 = t.join("d2");
    let out2 = t.join("out2");
    std::fs::create_dir_all(out2.join("CONFIG_DUMMY")).unwrap();
    std::fs::write(out2.join("CONFIG_DUMMY/notes.txt"), "mine").unwrap();
    case("build: foreign OUT/<pkg>", 15, "was not made by extmod")
        .args(b(&d2, &out2))
        .args(["CONFIG_DUMMY"])
        .writes(&d2)
        .run(t);
    std::fs::create_dir_all(d2.join("CONFIG_DUMMY")).unwrap();
    std::fs::write(d2.join("CONFIG_DUMMY/notes.txt"), "mine").unwrap();
    // The refusal is per package: D itself is extmod's, so its locks and the compiler's
    // answers (`D/.probes/`, complete files written atomically) may be written.
    case("build: foreign D/<pkg>", 15, "was not made by extmod")
        .args(b(&d2, &t.join("out3")))
        .args(["CONFIG_DUMMY"])
        .writes(&d2.join(".extmod-locks"))
        .writes(&d2.join(".probes"))
        .writes(&t.join("out3"))
        .run(t);
    // A dry run writes nothing.
    case("build: --dry-run", 0, "make -C")
        .args(b(&t.join("dry-d"), &t.join("dry-out")))
        .args(["--dry-run", "CONFIG_DUMMY"])
        .run(t);
    assert!(!t.join("dry-d").exists() && !t.join("dry-out").exists());
    // A huge -j neither hangs nor is ignored.
    let start = Instant::now();
    case("build: -j 65536", 0, "built 1")
        .args(b(&d, &out))
        .args(["-j", "65536", "CONFIG_DUMMY"])
        .writes(&d)
        .writes(&out)
        .run(t);
    assert!(start.elapsed() < Duration::from_secs(300));
    // ... and SIGTERM still stops it promptly (130), no make left behind.
    let (dt, ot) = (t.join("d-term"), t.join("out-term"));
    let child = Command::new(BIN)
        .args(b(&dt, &ot))
        .args(["-j", "65536", "CONFIG_VETH"])
        .env("CI", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let start = Instant::now();
    let out_term = child.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(15), "SIGTERM ignored");
    assert_eq!(
        out_term.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out_term.stderr)
    );
    assert!(makes_running_below(&dt).is_empty());
    TABLE
        .lock()
        .unwrap()
        .push(("build: -j 65536 then SIGTERM".into(), 130, String::new()));
    case("build: fresh rerun", 0, "fresh 1")
        .args(b(&d, &out))
        .args(["CONFIG_DUMMY"])
        .writes(&d)
        .writes(&out)
        .run(t);
    // Another run holds the package: --no-wait fails at once naming it; without, it waits.
    let lock = d.join(".extmod-locks/CONFIG_DUMMY.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "4"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    case(
        "build: --no-wait on a locked package",
        31,
        "is in use by another run",
    )
    .args(b(&d, &out))
    .args(["--no-wait", "CONFIG_DUMMY"])
    .writes(&d)
    .writes(&out)
    .run(t);
    let start = Instant::now();
    case("build: a locked package waits", 0, "Waiting")
        .args(b(&d, &out))
        .args(["CONFIG_DUMMY"])
        .writes(&d)
        .writes(&out)
        .run(t);
    assert!(start.elapsed() >= Duration::from_secs(2), "did not wait");
    holder.wait().unwrap();
    // JSON to a full disk, and to a closed pipe.
    case(
        "build: --json to /dev/full",
        70,
        "cannot write to standard output",
    )
    .args(b(&d, &out))
    .args(["--json", "CONFIG_DUMMY"])
    .run_to_dev_full(t);
    // Stale staging directories of a killed run are removed.
    let stale = out.join(format!(".CONFIG_DUMMY.staging-{}-x", dead_pid()));
    std::fs::create_dir_all(stale.join("lib")).unwrap();
    case("build: stale staging of a killed run", 0, "fresh 1")
        .args(b(&d, &out))
        .args(["CONFIG_DUMMY"])
        .writes(&d)
        .writes(&out)
        .run(t);
    assert!(!stale.exists());
    print_table("build");
}

#[test]
fn catalogue_variant_which_map_audit() {
    let (s, o, k) = (&tk().src, &tk().obj, k());
    let tmp = common::tempdir("extmod-hostile-v-");
    let t = tmp.path();
    let cache = t.join("cache");
    let v = |out: &Path| {
        vec![
            os("variant"),
            os("--kbuild"),
            os(k),
            os("--srctree"),
            os(s),
            os("--out"),
            os(out),
        ]
    };
    case("variant: --out inside K", 14, "inside the Kbuild tree")
        .args(v(&k.join("v")))
        .args(["--set", "CONFIG_NLMON=m"])
        .env("XDG_CACHE_HOME", cache.to_str().unwrap())
        .writes(&cache)
        .run(t);
    case("variant: --out inside O", 14, "inside the object tree")
        .args(v(&o.join("v")))
        .args(["--set", "CONFIG_NLMON=m"])
        .env("XDG_CACHE_HOME", cache.to_str().unwrap())
        .writes(&cache)
        .run(t);
    case("variant: --out inside S", 14, "inside the source tree")
        .args(v(&s.join("v")))
        .args(["--set", "CONFIG_NLMON=m"])
        .env("XDG_CACHE_HOME", cache.to_str().unwrap())
        .writes(&cache)
        .run(t);
    case("variant: --out with $(cmd)", 25, "cannot handle")
        .args(v(&t.join(format!("v$(date>>{INJECTED})"))))
        .args(["--set", "CONFIG_NLMON=m"])
        .env("XDG_CACHE_HOME", cache.to_str().unwrap())
        .writes(&cache)
        .run(t);
    // Injection through --set (item 8).
    let vo = t.join("v1");
    case(
        "variant: --set smuggling a line",
        24,
        "is not a Kconfig value",
    )
    .args(v(&vo))
    .args(["--set", "CONFIG_NLMON=m\nCONFIG_MODVERSIONS=n"])
    .env("XDG_CACHE_HOME", cache.to_str().unwrap())
    .writes(&cache)
    .writes(&vo)
    .run(t);
    assert!(!vo.join(".config").exists());
    case(
        "variant: --set unbalanced quote",
        24,
        "is not a Kconfig value",
    )
    .args(v(&vo))
    .args(["--set", "CONFIG_DEFAULT_HOSTNAME=\"x"])
    .env("XDG_CACHE_HOME", cache.to_str().unwrap())
    .writes(&cache)
    .writes(&vo)
    .run(t);
    case("variant: --set bad symbol", 24, "is not a CONFIG symbol")
        .args(v(&vo))
        .args(["--set", "CONFIG_A B=m"])
        .env("XDG_CACHE_HOME", cache.to_str().unwrap())
        .writes(&cache)
        .writes(&vo)
        .run(t);
    // A quoted string is applied and classified (28), not reported as not applied (27).
    case(
        "variant: quoted string value",
        28,
        "CONFIG_DEFAULT_HOSTNAME",
    )
    .args(v(&vo))
    .args(["--set", "CONFIG_DEFAULT_HOSTNAME=\"extmod\""])
    .env("XDG_CACHE_HOME", cache.to_str().unwrap())
    .writes(&cache)
    .writes(&vo)
    .run(t);
    let auto = std::fs::read_to_string(vo.join("include/config/auto.conf")).unwrap();
    assert!(
        auto.contains("CONFIG_DEFAULT_HOSTNAME=extmod")
            || auto.contains("CONFIG_DEFAULT_HOSTNAME=\"extmod\"")
    );
    // The Kbuild tree is self-sufficient (item 4): S and O hidden under empty mounts.
    if ro_namespace() {
        let vo2 = t.join("v2");
        let script = format!(
            "mount -t tmpfs none '{}' && mount -t tmpfs none '{}' && exec \"$0\" \"$@\"",
            s.display(),
            o.display()
        );
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script, BIN])
            .args(["variant", "--kbuild"])
            .arg(k)
            .args(["--set", "CONFIG_NLMON=m", "--out"])
            .arg(&vo2)
            .env("XDG_CACHE_HOME", t.join("cache-hidden"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "variant with S hidden: {err}");
        assert!(
            std::fs::read_to_string(vo2.join(".config"))
                .unwrap()
                .contains("CONFIG_NLMON=m")
        );
        TABLE
            .lock()
            .unwrap()
            .push(("variant: S and O hidden".into(), 0, String::new()));
    }
    let w = |args: &[&str]| {
        let mut a = vec![os("which"), os("--kbuild"), os(k), os("--srctree"), os(s)];
        a.extend(args.iter().map(os));
        a
    };
    let idx = t.join("idx");
    case("which: --module nosuch", 21, "no module named `nosuch`")
        .args(w(&["--module", "nosuch"]))
        .env("XDG_CACHE_HOME", idx.to_str().unwrap())
        .writes(&idx)
        .run(t);
    case("which: no symbols", 2, "name at least one CONFIG_ symbol")
        .args(w(&[]))
        .env("XDG_CACHE_HOME", idx.to_str().unwrap())
        .writes(&idx)
        .run(t);
    case("which: unknown symbol", 20, "")
        .args(w(&["CONFIG_NO_SUCH_THING"]))
        .env("XDG_CACHE_HOME", idx.to_str().unwrap())
        .writes(&idx)
        .run(t);
    case("which: K is not a Kbuild tree", 19, "is not a Kbuild tree")
        .args(vec![
            os("which"),
            os("--kbuild"),
            os(t),
            os("--srctree"),
            os(s),
            os("CONFIG_DUMMY"),
        ])
        .run(t);
    case(
        "which: S is not a source tree",
        10,
        "is not a kernel source tree",
    )
    .args(vec![
        os("which"),
        os("--kbuild"),
        os(k),
        os("--srctree"),
        os(t),
        os("CONFIG_DUMMY"),
    ])
    .run(t);
    case(
        "which: output to /dev/full",
        70,
        "cannot write to standard output",
    )
    .args(w(&["CONFIG_DUMMY"]))
    .env("XDG_CACHE_HOME", idx.to_str().unwrap())
    .run_to_dev_full(t);
    // A closed pipe (`| head -1`) ends quietly, by SIGPIPE, never a panic.
    for (name, args) in [
        (
            "map: | head -1",
            vec![os("map"), os("--kbuild"), os(k), os("--srctree"), os(s)],
        ),
        (
            "which: | head -1",
            w(&["CONFIG_DUMMY", "CONFIG_VETH", "CONFIG_ZRAM"]),
        ),
    ] {
        let mut child = Command::new(BIN)
            .args(&args)
            .env("XDG_CACHE_HOME", &idx)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut so = child.stdout.take().unwrap();
        let mut first = [0u8; 1];
        use std::io::Read;
        so.read_exact(&mut first).unwrap();
        drop(so);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{name}: {err}");
        let code = out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        assert!(code == 141 || code == 0, "{name}: {code} {err}");
        TABLE
            .lock()
            .unwrap()
            .push((name.into(), 141, String::new()));
    }
    // audit.
    let pf = t.join("a.toml");
    std::fs::write(
        &pf,
        "[[package]]\nname = \"kmod-dummy\"\nkconfig = [\"CONFIG_DUMMY\"]\n",
    )
    .unwrap();
    let a = |more: &[OsString]| {
        let mut v = vec![
            os("audit"),
            os("--kbuild"),
            os(k),
            os("--srctree"),
            os(s),
            os("--packages"),
            os(&pf),
        ];
        v.extend(more.iter().cloned());
        v
    };
    let cyc = t.join("cycle.toml");
    std::fs::write(
        &cyc,
        "[[package]]\nname = \"a\"\nkconfig = [\"CONFIG_DUMMY\"]\ndepends = [\"b\"]\n\n[[package]]\nname = \"b\"\nkconfig = [\"CONFIG_VETH\"]\ndepends = [\"a\"]\n",
    )
    .unwrap();
    case("audit: dependency cycle", 24, "cycle: a -> b -> a")
        .args(vec![
            os("audit"),
            os("--kbuild"),
            os(k),
            os("--srctree"),
            os(s),
            os("--packages"),
            os(&cyc),
        ])
        .env("XDG_CACHE_HOME", idx.to_str().unwrap())
        .writes(&idx)
        .run(t);
    case("audit: --modules does not exist", 2, "holds no module list")
        .args(a(&[os("--modules"), os(t.join("nope"))]))
        .env("XDG_CACHE_HOME", idx.to_str().unwrap())
        .writes(&idx)
        .run(t);
    let garbage = t.join("garbage");
    std::fs::create_dir_all(&garbage).unwrap();
    std::fs::write(
        garbage.join("modules.dep"),
        "\u{0}\u{1}garbage without colons\n",
    )
    .unwrap();
    case("audit: garbage --modules", 2, "holds no module list")
        .args(a(&[os("--modules"), os(&garbage)]))
        .env("XDG_CACHE_HOME", idx.to_str().unwrap())
        .writes(&idx)
        .run(t);
    let o_out = case("audit: --catch-all with a quote", 0, "unpackaged modules")
        .args(a(&[os("--catch-all"), os("\"")]))
        .env("XDG_CACHE_HOME", idx.to_str().unwrap())
        .writes(&idx)
        .run(t);
    let stdout = String::from_utf8_lossy(&o_out.stdout);
    let toml_part = &stdout[stdout.find("[[package]]").expect("catch-all printed")..];
    let parsed: toml::Value = toml::from_str(toml_part).expect("catch-all is valid TOML");
    assert_eq!(parsed["package"][0]["name"].as_str(), Some("\""));
    print_table("variant, which, map, audit");
}

fn json_build(
    k: &Path,
    s: &Path,
    d: &Path,
    out: &Path,
    more: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut c = guarded(&build_args(k, s, d, out), &[s]);
    c.args(more)
        .arg("--json")
        .env("CI", "1")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "build failed:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {err}"))
}

fn statuses(v: &serde_json::Value) -> BTreeMap<String, String> {
    v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every staged file of a package (path → content), the ownership marker aside.
fn staged(out: &Path, pkg: &str) -> BTreeMap<PathBuf, Vec<u8>> {
    walkdir::WalkDir::new(out.join(pkg))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.file_name() != ".extmod-owner")
        .map(|e| {
            (
                e.path().strip_prefix(out).unwrap().to_path_buf(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Issue 9 part 3 and item 1: each input changed alone (a source replaced by an older file, a
/// header, KCFLAGS, a provider rebuilt in the same run) rebuilds; nothing changed is fresh fast.
#[test]
fn freshness_follows_exact_inputs() {
    let k = k();
    let tmp = common::tempdir("extmod-hostile-fresh-");
    let t = tmp.path();
    let s = t.join("s");
    link_copy(&tk().src, &s);
    let (d, out) = (t.join("d"), t.join("out"));
    let pf = t.join("p.toml");
    std::fs::write(
        &pf,
        "[[package]]\nname = \"kmod-dummy\"\nkconfig = [\"CONFIG_DUMMY\"]\n\n\
         [[package]]\nname = \"kmod-lib-zsmalloc\"\nkconfig = [\"CONFIG_ZSMALLOC\"]\n\n\
         [[package]]\nname = \"kmod-lib-lzo\"\nkconfig = [\"CONFIG_LZO_COMPRESS\"]\n\n\
         [[package]]\nname = \"kmod-zram\"\nkconfig = [\"CONFIG_ZRAM\"]\ndepends = [\"kmod-lib-zsmalloc\", \"kmod-lib-lzo\"]\n",
    )
    .unwrap();
    // `--raw`: modules staged as built (no signature, compression or depmod), so their text can
    // be checked and the no-op run measures freshness alone.
    let pkgs = ["--packages", pf.to_str().unwrap(), "--raw"];
    let all_built = json_build(k, &s, &d, &out, &pkgs, &[]);
    assert!(
        statuses(&all_built).values().all(|s| s == "built"),
        "{all_built}"
    );
    let fresh = |v: &serde_json::Value| -> Vec<String> {
        statuses(v)
            .into_iter()
            .filter(|(_, st)| st != "fresh")
            .map(|(n, _)| n)
            .collect()
    };
    // Nothing changed: fresh, within 50 ms (best of 10: the machine may be busy).
    let mut best = Duration::MAX;
    for _ in 0..10 {
        let start = Instant::now();
        let o = Command::new(BIN)
            .args(build_args(k, &s, &d, &out))
            .args(pkgs)
            .env("CI", "1")
            .output()
            .unwrap();
        best = best.min(start.elapsed());
        assert!(String::from_utf8_lossy(&o.stderr).contains("fresh 4"));
    }
    eprintln!("no-op run of 4 packages: {best:?}");
    assert!(best <= Duration::from_millis(50), "no-op took {best:?}");
    // A source replaced by an edited copy with an OLDER mtime than the object (tar, rsync -t).
    let dummy_c = s.join("drivers/net/dummy.c");
    let text = std::fs::read_to_string(&dummy_c).unwrap();
    replace(
        &dummy_c,
        text.replace("\"dummy\"", "\"dumm2\"").as_bytes(),
        Duration::from_secs(400 * 24 * 3600),
    );
    let v = json_build(k, &s, &d, &out, &pkgs, &[]);
    assert_eq!(fresh(&v), ["kmod-dummy"], "{v}");
    let ko = staged(&out, "kmod-dummy");
    assert!(
        ko.values().any(|c| contains(c, "dumm2")),
        "stale module staged"
    );
    // Same content, new inode and mtime (`cp -p` of the same file): still fresh.
    let same = std::fs::read(&dummy_c).unwrap();
    replace(&dummy_c, &same, Duration::from_secs(10));
    assert!(fresh(&json_build(k, &s, &d, &out, &pkgs, &[])).is_empty());
    // A local header, older too.
    let h = s.join("drivers/block/zram/zram_drv.h");
    let text = std::fs::read_to_string(&h).unwrap();
    replace(
        &h,
        format!("{text}\nstatic const char extmod_hdr_marker[] __attribute__((used)) = \"EXTMOD_HDR\";\n").as_bytes(),
        Duration::from_secs(400 * 24 * 3600),
    );
    let v = json_build(k, &s, &d, &out, &pkgs, &[]);
    assert_eq!(fresh(&v), ["kmod-zram"], "{v}");
    assert!(
        staged(&out, "kmod-zram")
            .values()
            .any(|c| contains(c, "EXTMOD_HDR"))
    );
    // A make variable from the environment that reaches the command line.
    let v = json_build(k, &s, &d, &out, &pkgs, &[("KCFLAGS", "-DEXTMOD_TEST_FLAG")]);
    assert_eq!(
        fresh(&v).len(),
        4,
        "KCFLAGS must rebuild every package: {v}"
    );
    let cmd = std::fs::read_to_string(d.join("kmod-dummy/tree/drivers/net/.dummy.o.cmd")).unwrap();
    assert!(cmd.contains("-DEXTMOD_TEST_FLAG"));
    let v = json_build(k, &s, &d, &out, &pkgs, &[]);
    assert_eq!(fresh(&v).len(), 4, "dropping KCFLAGS rebuilds too: {v}");
    // A provider rebuilt in this run rebuilds its dependents after it.
    let zs = s.join("mm/zsmalloc.c");
    let text = std::fs::read_to_string(&zs).unwrap();
    replace(
        &zs,
        format!(
            "{text}\nstatic const char extmod_zs_marker[] __attribute__((used)) = \"EXTMOD_ZS\";\n"
        )
        .as_bytes(),
        Duration::from_secs(400 * 24 * 3600),
    );
    let v = json_build(k, &s, &d, &out, &pkgs, &[]);
    assert_eq!(fresh(&v), ["kmod-lib-zsmalloc", "kmod-zram"], "{v}");
    assert!(
        staged(&out, "kmod-lib-zsmalloc")
            .values()
            .any(|c| contains(c, "EXTMOD_ZS"))
    );
    // Rebuilding from clean gives the same bytes as the incremental builds.
    let (d2, out2) = (t.join("d2"), t.join("out2"));
    json_build(k, &s, &d2, &out2, &pkgs, &[]);
    for p in [
        "kmod-dummy",
        "kmod-zram",
        "kmod-lib-zsmalloc",
        "kmod-lib-lzo",
    ] {
        let a: Vec<Vec<u8>> = staged(&out, p).into_values().collect();
        let b: Vec<Vec<u8>> = staged(&out2, p).into_values().collect();
        assert!(a == b, "{p}: incremental and clean builds differ");
    }
}

/// Two concurrent runs of the example package file on one D/OUT: both end with correct,
/// complete output (the second waits for the packages the first holds).
#[test]
fn concurrent_builds_on_one_objdir() {
    let (k, s) = (k(), &tk().src);
    let tmp = common::tempdir("extmod-hostile-conc-");
    let t = tmp.path();
    let (d, out) = (t.join("d"), t.join("out"));
    let pf = common::repo().join("examples/packages.toml");
    let spawn = || {
        guarded(&build_args(k, s, &d, &out), &[])
            .args(["--packages", pf.to_str().unwrap(), "--json"])
            .env("CI", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn();
    std::thread::sleep(Duration::from_millis(300));
    let b = spawn();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for (n, o) in [("first", &a), ("second", &b)] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{n} run failed:\n{err}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            statuses(&v).values().all(|s| s == "built" || s == "fresh"),
            "{n}: {v}"
        );
    }
    // Complete and equal to a build made alone.
    let (d2, out2) = (t.join("d2"), t.join("out2"));
    let o = guarded(&build_args(k, s, &d2, &out2), &[])
        .args(["--packages", pf.to_str().unwrap()])
        .env("CI", "1")
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: toml::Value = toml::from_str(&std::fs::read_to_string(&pf).unwrap()).unwrap();
    for p in v["package"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let (x, y) = (staged(&out, name), staged(&out2, name));
        assert!(!x.is_empty(), "{name} not staged");
        assert!(
            x == y,
            "{name}: concurrent output differs from a build alone"
        );
    }
}

fn makes_running_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.starts_with("make ") && cmd.contains(dir.to_str().unwrap()) {
                found.push(cmd);
            }
        }
    }
    found
}

/// `t/s`: a hardlinked copy of the test kernel's source whose drivers/net/Makefile ends with
/// `rules`.
fn source_with_net_rules(t: &Path, rules: &str) -> std::path::PathBuf {
    let s = t.join("s");
    link_copy(&tk().src, &s);
    let mk = s.join("drivers/net/Makefile");
    let text = std::fs::read_to_string(&mk).unwrap();
    replace(&mk, format!("{text}\n{rules}").as_bytes(), Duration::ZERO);
    s
}

/// `extmod build ARGS CONFIG_DUMMY` against the test kernel's Kbuild tree and the source `s`.
fn build_dummy(s: &Path, d: &Path, out: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(build_args(k(), s, d, out))
        .args(args)
        .arg("CONFIG_DUMMY")
        .env("CI", "1")
        .output()
        .unwrap()
}

/// Issue 9 part 4: a Makefile that writes through the overlay into `$(srctree)` fails with the
/// path named, and S is unchanged.
#[test]
fn hostile_makefile_cannot_write_into_the_trees() {
    if !kbuild_install::sandbox::available() {
        eprintln!("SKIP: no private mount namespace here");
        return;
    }
    let tmp = common::tempdir("extmod-hostile-mk-");
    let t = tmp.path();
    let s = source_with_net_rules(
        t,
        "$(obj)/dummy.o: extmod-hack\nPHONY += extmod-hack\nextmod-hack: ; touch $(srctree)/include/linux/EXTMOD_HACKED\n",
    );
    let (d, out) = (t.join("d"), t.join("out"));
    let o = build_dummy(&s, &d, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the build tried to write `./include/linux/EXTMOD_HACKED`"),
        "{err}"
    );
    for root in [&s, &tk().src, &k().to_path_buf()] {
        assert!(!root.join("include/linux/EXTMOD_HACKED").exists());
    }
}

/// A Makefile that writes a generated header into a subdirectory of the module's directory
/// that holds none of its objects. The overlay links such a directory to the source tree
/// (read-only for make), so the first make fails writing there; extmod builds the package
/// again with the directories below drivers/net real, and says so. The header lands in the
/// overlay, never in S.
#[test]
fn a_write_below_the_module_directory_is_built_again_with_real_directories() {
    if !kbuild_install::sandbox::available() {
        eprintln!("SKIP: no private mount namespace here");
        return;
    }
    let tmp = common::tempdir("extmod-hostile-subdir-");
    let t = tmp.path();
    let s = source_with_net_rules(
        t,
        "$(obj)/dummy.o: $(obj)/wan/extmod-generated.h\n$(obj)/wan/extmod-generated.h: ; echo '/* generated */' > $@\n",
    );
    let (d, out) = (t.join("d"), t.join("out"));
    let o = build_dummy(&s, &d, &out, &["--json"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &v["packages"][0];
    assert_eq!(p["status"], "built", "{p}");
    assert!(
        p["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("built again with those directories real")),
        "{p}"
    );
    let tree = d.join("CONFIG_DUMMY/tree/drivers/net/wan");
    assert!(!tree.is_symlink() && tree.join("extmod-generated.h").is_file());
    // Remembered: the next build (the staged module gone) makes one attempt, with them real.
    std::fs::remove_dir_all(out.join("CONFIG_DUMMY")).unwrap();
    let o = build_dummy(&s, &d, &out, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &v["packages"][0];
    assert_eq!(p["status"], "built", "{p}");
    assert!(!p.to_string().contains("built again"), "{p}");
    let log = std::fs::read_to_string(d.join("CONFIG_DUMMY/build.log")).unwrap();
    assert!(!log.contains("Read-only file system"), "{log}");
    assert!(!tree.is_symlink());
    for root in [&s, &tk().src] {
        assert!(!root.join("drivers/net/wan/extmod-generated.h").exists());
    }
}

/// SIGKILL at 20 points of a build, each followed by a rerun: no make outlives extmod, nothing
/// half-staged is used, and the final modules are byte-identical to a clean build.
#[test]
fn sigkill_at_random_points_then_rerun_matches_clean_build() {
    let (k, s) = (k(), &tk().src);
    let tmp = common::tempdir("extmod-hostile-kill-");
    let t = tmp.path();
    let (d, out) = (t.join("d"), t.join("out"));
    let pf = t.join("p.toml");
    std::fs::write(
        &pf,
        "[[package]]\nname = \"kmod-dummy\"\nkconfig = [\"CONFIG_DUMMY\"]\n\n\
         [[package]]\nname = \"kmod-veth\"\nkconfig = [\"CONFIG_VETH\"]\n",
    )
    .unwrap();
    let args = |d: &Path, out: &Path| {
        let mut a = build_args(k, s, d, out);
        a.extend([os("--packages"), os(&pf)]);
        a
    };
    let (dc, oc) = (t.join("dc"), t.join("oc"));
    let o = Command::new(BIN)
        .args(args(&dc, &oc))
        .env("CI", "1")
        .output()
        .unwrap();
    assert!(o.status.success());
    // Deterministic "random" points between 0 and ~2.5 s.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(x % 2500);
        // Every fourth kill lands after an input changed, so the rerun must rebuild.
        if i % 4 == 3 {
            let _ = std::fs::remove_file(d.join("kmod-dummy/state.json"));
        }
        let mut child = Command::new(BIN)
            .args(args(&d, &out))
            .env("CI", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
        // Makes die with extmod (PR_SET_PDEATHSIG).
        let deadline = Instant::now() + Duration::from_secs(3);
        while !makes_running_below(&d).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            makes_running_below(&d).is_empty(),
            "make outlived extmod (kill {i})"
        );
        if i % 5 == 4 {
            let o = Command::new(BIN)
                .args(args(&d, &out))
                .env("CI", "1")
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "rerun after kill {i}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            for p in ["kmod-dummy", "kmod-veth"] {
                let a: Vec<Vec<u8>> = staged(&out, p).into_values().collect();
                let b: Vec<Vec<u8>> = staged(&oc, p).into_values().collect();
                assert!(a == b, "{p}: differs from a clean build after kill {i}");
            }
        }
    }
    let o = Command::new(BIN)
        .args(args(&d, &out))
        .env("CI", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "rerun after kills failed:\n{err}");
    for p in ["kmod-dummy", "kmod-veth"] {
        let (a, b) = (staged(&out, p), staged(&oc, p));
        assert!(!a.is_empty());
        let strip = |m: BTreeMap<PathBuf, Vec<u8>>| -> Vec<Vec<u8>> { m.into_values().collect() };
        assert!(strip(a) == strip(b), "{p}: differs from a clean build");
    }
    // No temporaries left by the killed runs once the rerun is done.
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".staging-") || n.contains(".old-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
