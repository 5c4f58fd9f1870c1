//! Signing as `modules_install` does: `scripts/sign-file $(CONFIG_MODULE_SIG_HASH) <key>
//! <cert>`, with the key `CONFIG_MODULE_SIG_KEY` names (relative to the kernel's object tree) or
//! `--sign-key`, checked against the certificate before anything is built.

use super::{InstallOptions, in_layers, tool};
use crate::error::Error;
use crate::kbuild::KbuildTree;
use camino::{Utf8Path, Utf8PathBuf};
use kbuild_install::Error as KError;
use kbuild_install::process;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub(super) struct Signer {
    pub(super) sign_file: Utf8PathBuf,
    pub(super) hash: String,
    pub(super) key: String,
    pub(super) cert: Utf8PathBuf,
    /// The certificate's subject common name (what `modinfo` shows as signer).
    pub(super) name: String,
}

fn signing(what: &str, path: impl Into<String>, why: impl Into<String>) -> Error {
    Error::Signing {
        what: what.to_string(),
        path: path.into(),
        why: why.into(),
    }
}

/// Whether and with what to sign; `None` with a note when the configuration signs but the
/// key is not available and the kernel does not insist.
pub(super) fn signer(
    k: &KbuildTree,
    opts: &InstallOptions,
    notes: &mut Vec<String>,
) -> Result<Option<Signer>, Error> {
    let sig_all = k.value("MODULE_SIG_ALL") == Some("y");
    if opts.no_sign || !(sig_all || opts.sign_key.is_some()) {
        return Ok(None);
    }
    let force = k.value("MODULE_SIG_FORCE") == Some("y");
    let hash = k
        .value("MODULE_SIG_HASH")
        .map(|h| h.trim_matches('"').to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sha256".into());
    let explicit = opts.sign_key.is_some();
    let key = match &opts.sign_key {
        Some(k) => k.clone(),
        None => match default_key(k) {
            Ok(key) => key,
            Err(looked) if !force => {
                notes.push(format!(
                    "not signed: no private key at `{looked}` (CONFIG_MODULE_SIG_KEY); \
                     give --sign-key to sign"
                ));
                return Ok(None);
            }
            Err(looked) => {
                return Err(signing(
                    "read the signing key",
                    looked,
                    "not found, and the kernel refuses unsigned modules \
                     (CONFIG_MODULE_SIG_FORCE=y)",
                ));
            }
        },
    };
    let pkcs11 = key.starts_with("pkcs11:");
    if !pkcs11 {
        std::fs::File::open(&key)
            .map_err(|e| signing("read the signing key", &key, e.to_string()))?;
        if explicit && std::fs::metadata(&key).is_ok_and(|m| m.is_dir()) {
            return Err(signing("read the signing key", &key, "is a directory"));
        }
    }
    let cert = match &opts.sign_cert {
        Some(c) => c.clone(),
        None => default_cert(k).ok_or_else(|| {
            signing(
                "find the signing certificate",
                "certs/signing_key.x509",
                "not in the Kbuild tree nor in the kernel's object tree",
            )
        })?,
    };
    std::fs::File::open(&cert)
        .map_err(|e| signing("read the signing certificate", cert.as_str(), e.to_string()))?;
    let sign_file = in_layers(k, "scripts/sign-file").ok_or_else(|| KError::MissingTool {
        tool: "scripts/sign-file".into(),
        role: "the kernel's module signer (built with CONFIG_MODULE_SIG)",
    })?;
    // A key and certificate already checked (same bytes) need no openssl run: a no-op
    // build stays fast.
    let checked = checked_pair(&key, &cert, pkcs11);
    if let Some(name) = checked
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        return Ok(Some(Signer {
            sign_file,
            hash,
            key,
            cert,
            name,
        }));
    }
    let openssl = tool(
        "openssl",
        "checking the signing key against its certificate",
    )?;
    let cert_pub = cert_public_key(&openssl, &cert)?;
    if !pkcs11 {
        let key_pub = process::run(
            duct::cmd(openssl.as_std_path(), ["pkey", "-pubout", "-in", &key]).stdin_null(),
            "openssl pkey",
            true,
        )?;
        if !key_pub.status.success() {
            return Err(signing(
                "read the signing key",
                &key,
                format!(
                    "not a private key openssl can read: {}",
                    key_pub.stderr.trim()
                ),
            ));
        }
        if key_pub.stdout.trim() != cert_pub.trim() {
            return Err(signing(
                "match the signing key",
                &key,
                format!("its public key is not the one in certificate `{cert}`"),
            ));
        }
    }
    let name = cert_subject_cn(&openssl, &cert).unwrap_or_default();
    if let Some(p) = &checked {
        // Best effort: without the record the next run checks again.
        let _ = std::fs::create_dir_all(p.parent().expect("in the cache"));
        let _ = std::fs::write(p, &name);
    }
    Ok(Some(Signer {
        sign_file,
        hash,
        key,
        cert,
        name,
    }))
}

/// Install one module: `from` (the build's `.ko`) to `<kernel_dir>/<module>` plus the
/// compression suffix; `root` is the package's staging root (paths in the result are
/// relative to it).
fn default_key(k: &KbuildTree) -> Result<String, String> {
    let key = k
        .value("MODULE_SIG_KEY")
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "certs/signing_key.pem".into());
    if key.starts_with("pkcs11:") {
        return Ok(key);
    }
    if key.starts_with('/') {
        return if Utf8Path::new(&key).is_file() {
            Ok(key)
        } else {
            Err(key)
        };
    }
    let mut candidates: Vec<Utf8PathBuf> = Vec::new();
    if let Some(m) = &k.manifest {
        candidates.push(m.made_from.objtree.join(&key));
    }
    candidates.extend(k.layers.iter().map(|l| l.join(&key)));
    candidates
        .iter()
        .find(|p| p.is_file())
        .map(|p| p.to_string())
        .ok_or_else(|| candidates[0].to_string())
}

/// `certs/signing_key.x509`: shipped in the Kbuild tree, else in the kernel's object tree.
fn default_cert(k: &KbuildTree) -> Option<Utf8PathBuf> {
    const CERT: &str = "certs/signing_key.x509";
    in_layers(k, CERT).or_else(|| {
        let m = k.manifest.as_ref()?;
        let p = m.made_from.objtree.join(CERT);
        p.is_file().then_some(p)
    })
}

/// Where the check of a key file and certificate with these exact bytes is recorded (the
/// certificate's CN inside); `None` for `pkcs11:` keys or unreadable files.
fn checked_pair(key: &str, cert: &Utf8Path, pkcs11: bool) -> Option<Utf8PathBuf> {
    if pkcs11 {
        return None;
    }
    let mut h = Sha256::new();
    h.update(Sha256::digest(std::fs::read(key).ok()?));
    h.update(Sha256::digest(std::fs::read(cert).ok()?));
    Some(crate::cache::dir("signing-checked").join(format!("{:x}", h.finalize())))
}

/// `openssl x509 -noout <query>` of a DER or PEM certificate (`Err` with openssl's words when
/// it is not one).
fn openssl_x509(openssl: &Utf8Path, cert: &Utf8Path, query: &[&str]) -> Result<String, Error> {
    let bytes = std::fs::read(cert)
        .map_err(|e| signing("read the signing certificate", cert.as_str(), e.to_string()))?;
    let form = if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        "PEM"
    } else {
        "DER"
    };
    let mut args = vec!["x509", "-noout", "-inform", form, "-in", cert.as_str()];
    args.extend_from_slice(query);
    let fin = process::run(
        duct::cmd(openssl.as_std_path(), &args).stdin_null(),
        &format!("openssl x509 {}", query.join(" ")),
        true,
    )?;
    if !fin.status.success() {
        return Err(signing(
            "read the signing certificate",
            cert.as_str(),
            format!("not an X.509 certificate: {}", fin.stderr.trim()),
        ));
    }
    Ok(fin.stdout)
}

/// The certificate's public key (PEM).
fn cert_public_key(openssl: &Utf8Path, cert: &Utf8Path) -> Result<String, Error> {
    openssl_x509(openssl, cert, &["-pubkey"])
}

/// The certificate subject's CN, as `modinfo` shows the signer.
fn cert_subject_cn(openssl: &Utf8Path, cert: &Utf8Path) -> Option<String> {
    openssl_x509(
        openssl,
        cert,
        &["-subject", "-nameopt", "sep_multiline,utf8,-esc_msb"],
    )
    .ok()?
    .lines()
    .find_map(|l| l.trim().strip_prefix("CN="))
    .map(str::to_string)
}
