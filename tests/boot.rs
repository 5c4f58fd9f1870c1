//! Boots the test kernel under qemu and loads a module into it, proving the qemu harness and
//! the test kernel work before extmod-built modules are checked the same way.

mod common;

use common::qemu::{Initramfs, boot};
use common::{tempdir, test_kernel};
use std::time::Duration;

#[test]
fn boots_test_kernel_and_loads_in_tree_module() {
    let tk = test_kernel();
    // As `make modules_install` installed it: signed (the kernel has CONFIG_MODULE_SIG_FORCE)
    // and xz-compressed.
    let ko = tk.dir.join(format!(
        "install/lib/modules/{}/kernel/drivers/net/dummy.ko.xz",
        tk.release()
    ));
    assert!(
        ko.is_file(),
        "{} missing from the test kernel",
        ko.display()
    );

    let tmp = tempdir("extmod-boot-");
    let initrd = Initramfs::new()
        .module(&ko, "kernel/drivers/net/dummy.ko.xz")
        .script(
            r#"
echo "UNAME=$(uname -r)"
if test -e /sys/class/net/dummy0; then echo "dummy0 exists before modprobe"; exit 1; fi
depmod
cat /lib/modules/$(uname -r)/modules.dep
modprobe dummy
lsmod
echo "NETDEVS: $(ls /sys/class/net | tr '\n' ' ')"
test -e /sys/class/net/dummy0
"#,
        )
        .build(tmp.path());

    let started = std::time::Instant::now();
    let res = boot(&tk.bzimage(), &initrd, Duration::from_secs(300));
    eprintln!(
        "booted in {:.1?}; script output:\n{}",
        started.elapsed(),
        res.script_output()
    );
    res.assert_ok();

    let out = res.script_output();
    let uname = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("UNAME="))
        .unwrap_or_else(|| panic!("no UNAME= line; console:\n{}", res.output));
    assert_eq!(uname, tk.release(), "guest runs a different kernel");
    assert!(
        out.lines().any(|l| l.starts_with("dummy ")),
        "lsmod does not list dummy; console:\n{}",
        res.output
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("NETDEVS:") && l.split_whitespace().any(|d| d == "dummy0")),
        "dummy0 not in /sys/class/net; console:\n{}",
        res.output
    );
}
