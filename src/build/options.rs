//! What a build is asked to do (from the command line).

use crate::package::Package;
use camino::Utf8PathBuf;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub kbuild: Utf8PathBuf,
    pub srctree: Utf8PathBuf,
    pub objdir: Utf8PathBuf,
    pub dest: Utf8PathBuf,
    pub packages: Vec<Package>,
    pub jobs: Option<usize>,
    pub keep_going: bool,
    pub dry_run: bool,
    /// Build packages whose variant changes built-in code (labelled as not matching).
    pub allow_kernel_change: bool,
    /// make's jobserver, when extmod runs under make (from a `+` recipe line).
    pub inherited_jobserver: Option<jobserver::Client>,
    /// Run modpost as for an external module (`-e`: no `intree: Y` modinfo).
    pub external: bool,
    /// The `modules_install` steps (strip, sign, compress, depmod).
    pub install: crate::modinst::InstallOptions,
    /// Also install every package's modules into one tree (`INSTALL_MOD_PATH`) with depmod.
    pub install_mod_path: Option<Utf8PathBuf>,
    /// Fail at once when another run holds a package's lock, instead of waiting.
    pub no_wait: bool,
    /// A compiler launcher (ccache, distcc, ...) put before the kernel's compiler.
    pub cc_launcher: Option<String>,
}
