//! The kernel source and object trees of the test kernel are byte-for-byte what the build left:
//! compared with the fingerprints `scripts/test-kernel` took right after building them. Runs in
//! the suite and once more after it (scripts/test), so any write by any test is caught.

mod common;

#[test]
fn source_and_object_trees_are_unchanged() {
    check(common::test_kernel());
}

#[test]
fn cross_source_and_object_trees_are_unchanged() {
    for target in [common::Target::Arm64, common::Target::Armhf] {
        if target.available() {
            check(common::cross_kernel(target));
        }
    }
    if std::path::Path::new("/usr/src/linux-source-6.1.tar.xz").exists() {
        check(common::kernel(common::Target::X86_64, "6.1"));
    }
    check(common::kernel(common::Target::X86_64, "7.3"));
}

fn check(tk: &common::TestKernel) {
    for (tree, saved) in [(&tk.src, "fingerprint.src"), (&tk.obj, "fingerprint.obj")] {
        let want = std::fs::read_to_string(tk.dir.join(saved)).unwrap();
        let got = common::fingerprint(tree);
        if want != got {
            let diff: Vec<_> = got
                .lines()
                .filter(|l| !want.contains(*l))
                .chain(want.lines().filter(|l| !got.contains(*l)))
                .take(20)
                .collect();
            panic!(
                "{} changed since it was built:\n{}",
                tree.display(),
                diff.join("\n")
            );
        }
    }
}
