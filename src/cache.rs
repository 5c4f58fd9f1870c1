//! extmod's cache directory: `$XDG_CACHE_HOME/extmod` (or `~/.cache/extmod`).

use camino::Utf8PathBuf;

pub fn dir(sub: &str) -> Utf8PathBuf {
    let base = std::env::var("XDG_CACHE_HOME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cache")))
        .unwrap_or_else(|| "/tmp".into());
    Utf8PathBuf::from(base).join("extmod").join(sub)
}
