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
