//! The one parser of Kconfig's outputs (`.config`, `include/config/auto.conf`) for the workspace.

use std::collections::BTreeMap;

/// A configuration: symbol (without `CONFIG_`) -> value as written (`y`, `m`, `"text"`, `0x10`).
/// Symbols that are not set are absent.
pub type Config = BTreeMap<String, String>;

/// `CONFIG_X=v` lines into a map; `# CONFIG_X is not set` and other lines are skipped.
pub fn parse(text: &str) -> Config {
    text.lines()
        .filter_map(|l| l.strip_prefix("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The value of one symbol (`sym` with or without `CONFIG_`) in config text.
pub fn value<'a>(text: &'a str, sym: &str) -> Option<&'a str> {
    let sym = sym.strip_prefix("CONFIG_").unwrap_or(sym);
    text.lines().find_map(|l| {
        l.strip_prefix("CONFIG_")?
            .strip_prefix(sym)?
            .strip_prefix('=')
    })
}

/// Render a configuration as auto.conf text (what make includes).
pub fn render(config: &Config) -> String {
    config
        .iter()
        .map(|(k, v)| format!("CONFIG_{k}={v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_and_skips_unset() {
        let c = parse("# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_AB=\"x=y\"\n");
        assert_eq!(c.len(), 2);
        assert_eq!(c["A"], "y");
        assert_eq!(c["AB"], "\"x=y\"");
        assert_eq!(value("CONFIG_AB=m\nCONFIG_A=y\n", "CONFIG_A"), Some("y"));
        assert_eq!(value("CONFIG_AB=m\n", "A"), None);
        assert_eq!(parse(&render(&c)), c);
    }
}
