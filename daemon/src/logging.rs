//! Logging: journald when systemd started us, readable text on stderr
//! otherwise. Log lines name patients by pseudonymous id only; no PHI is
//! ever passed to a tracing macro (tests scan captured output for markers).

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::prelude::*;

/// Installs the global subscriber. Returns which sink was chosen.
pub fn init(cfg: &LogConfig) -> &'static str {
    let filter = tracing_subscriber::filter::LevelFilter::from_level(cfg.level);
    let want_journal = match cfg.format {
        LogFormat::Journald => true,
        LogFormat::Text => false,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    if want_journal {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer.with_syslog_identifier("clinic-relay".to_owned());
            if tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init()
                .is_ok()
            {
                return "journald";
            }
        }
    }
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(cfg.level)
        .with_target(false)
        .try_init();
    "stderr"
}

/// The most characters of an input-derived value written to a log line.
pub const MAX_LOGGED_CHARS: usize = 64;

/// An input-derived value (an HL7 field, a peer's name) as it may appear
/// in a log line: control characters (line breaks, ESC) and backslashes
/// escaped, so a value cannot forge a line or drive a terminal, and cut
/// after [`MAX_LOGGED_CHARS`] (issue 8: an `MSH-9` with `\X0A\` wrote a
/// forged line; a 10 KB one was logged whole).
pub fn clean(value: &str) -> Clean<'_> {
    Clean(value)
}

pub struct Clean<'a>(&'a str);

impl std::fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for (i, (at, c)) in self.0.char_indices().enumerate() {
            if i == MAX_LOGGED_CHARS {
                let rest = self.0.len().saturating_sub(at);
                return write!(f, "…(+{rest} bytes)");
            }
            // Unicode line and paragraph separators end a line in some viewers.
            if c.is_control() || c == '\\' || c == '\u{2028}' || c == '\u{2029}' {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Clean<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn control_characters_are_escaped_and_long_values_cut() {
        assert_eq!(clean("ADT^A04").to_string(), "ADT^A04");
        assert_eq!(
            clean("ADT^A99\n2026-12-01 ERROR FORGED").to_string(),
            "ADT^A99\\n2026-12-01 ERROR FORGED"
        );
        assert_eq!(clean("\x1b[31mred\r").to_string(), "\\u{1b}[31mred\\r");
        assert_eq!(clean("a\\nb").to_string(), "a\\\\nb");
        assert_eq!(clean("x\u{2028}y").to_string(), "x\\u{2028}y");
        let long = "é".repeat(100);
        let shown = clean(&long).to_string();
        assert!(shown.starts_with(&"é".repeat(64)), "{shown}");
        assert!(shown.ends_with("…(+72 bytes)"), "{shown}");
    }
}
