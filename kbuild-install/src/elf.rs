//! Reading kernel modules (`.ko`): modinfo and section contents.

use crate::error::{Error, Result};
use camino::Utf8Path;
use object::{Object, ObjectSection};

/// The `.modinfo` entries of a module, in order (`vermagic`, `depends`, `license`, ...).
pub fn modinfo(path: &Utf8Path) -> Result<Vec<(String, String)>> {
    let data = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    modinfo_of(&data).map_err(|why| Error::io("parse module", path, std::io::Error::other(why)))
}

pub fn modinfo_of(data: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    let bytes = section_of(data, ".modinfo")?.unwrap_or_default();
    Ok(bytes
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// The raw bytes of a section (`None` when the file has no such section).
pub fn section_of(data: &[u8], name: &str) -> std::result::Result<Option<Vec<u8>>, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    match file.section_by_name(name) {
        Some(s) => s
            .data()
            .map(|d| Some(d.to_vec()))
            .map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// The first value of modinfo `key`.
pub fn modinfo_value(path: &Utf8Path, key: &str) -> Result<Option<String>> {
    Ok(modinfo(path)?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v))
}

/// The machine an object is for, as `"Aarch64 64-bit"` (architecture and word size).
pub fn machine(path: &Utf8Path) -> Result<String> {
    let data = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let file = object::File::parse(&*data)
        .map_err(|e| Error::io("parse module", path, std::io::Error::other(e)))?;
    let bits = if file.is_64() { 64 } else { 32 };
    Ok(format!("{:?} {bits}-bit", file.architecture()))
}

/// The marker `scripts/sign-file` appends after a module's signature.
pub const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// A module without its appended signature (`struct module_signature`: 12 bytes whose last
/// four are the big-endian length of the PKCS#7 blob before them, then the marker); the input
/// as it is when it carries none or the trailer is inconsistent.
pub fn without_signature(data: &[u8]) -> &[u8] {
    let Some(head) = data.strip_suffix(SIGNATURE_MAGIC) else {
        return data;
    };
    let Some(info_at) = head.len().checked_sub(12) else {
        return data;
    };
    let len = u32::from_be_bytes(head[info_at + 8..].try_into().expect("4 bytes")) as usize;
    match info_at.checked_sub(len) {
        Some(end) => &data[..end],
        None => data,
    }
}

/// The module with the descriptor of its `.note.gnu.build-id` zeroed: the build ID hashes the
/// linked file, debug information (and so the build directory) included.
pub fn with_build_id_zeroed(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    let mut out = data.to_vec();
    if let Some(s) = file.section_by_name(".note.gnu.build-id")
        && let Some((off, size)) = s.file_range()
    {
        // Elf note: namesz, descsz, type (4 bytes each), "GNU\0", then the descriptor.
        let (off, size) = (off as usize, size as usize);
        let desc = off + 16;
        if size > 16 && desc <= out.len() {
            let end = (off + size).min(out.len());
            out[desc..end].fill(0);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_cut_where_its_trailer_says() {
        let mut m = b"ELFDATA".to_vec();
        m.extend_from_slice(b"SIGNATURE");
        m.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        m.extend_from_slice(&9u32.to_be_bytes());
        m.extend_from_slice(SIGNATURE_MAGIC);
        assert_eq!(without_signature(&m), b"ELFDATA");
        assert_eq!(without_signature(b"plain"), b"plain");
        // A length beyond the file leaves it untouched.
        let mut bad = vec![0u8; 8];
        bad.extend_from_slice(&1000u32.to_be_bytes());
        bad.extend_from_slice(SIGNATURE_MAGIC);
        assert_eq!(without_signature(&bad), &bad[..]);
    }
}
