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
