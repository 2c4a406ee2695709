//! The config file: any text gives a config or a `ConfigError` naming a key,
//! never a panic (what `config check` runs).
#![no_main]

use clinic_relay::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let path = std::path::Path::new("/nonexistent/clinic-relay-fuzz/config.toml");
    if let Err(e) = Config::from_toml(text, path) {
        let message = e.to_string();
        assert!(!message.is_empty(), "an error says what is wrong");
    }
});
