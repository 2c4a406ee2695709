//! The media keys of `[whatsapp]` (see `whatsapp::media`).

use std::time::Duration;

/// The media keys of `[whatsapp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// A larger PDF is refused at enqueue. Meta accepts documents up to
    /// 100 MB; a clinic's letters and results are far smaller, and each
    /// stays sealed in the vault until it is sent.
    pub max_document_bytes: u64,
    /// An uploaded document is deleted at Meta once delivered, or this long
    /// after its upload, whichever comes first (Meta keeps media 30 days).
    pub media_ttl: Duration,
    /// Inbound media larger than this is not fetched (an event says so).
    pub max_inbound_media_bytes: u64,
    /// A patient's fetched media is purged from the vault this long after
    /// it came in.
    pub inbound_media_retention: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_document_bytes: 16 << 20,
            media_ttl: Duration::from_secs(24 * 3600),
            max_inbound_media_bytes: 16 << 20,
            inbound_media_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Validates the media keys of `[whatsapp]`.
pub(crate) fn validate_config(
    file: &super::config::WhatsappFile,
) -> Result<MediaConfig, super::config::Invalid> {
    use super::config::invalid;
    let d = MediaConfig::default();
    let bytes = |key: &'static str, v: Option<u64>, default: u64| match v {
        None => Ok(default),
        // 1 KiB to 100 MB (Meta's own ceiling for a document).
        Some(n) if (1024..=100_000_000).contains(&n) => Ok(n),
        Some(n) => Err(invalid(
            key,
            &n.to_string(),
            "out of range",
            "use 1024 to 100000000 bytes",
        )),
    };
    let span = |key: &'static str, v: Option<&str>, default: Duration, max_days: u64| match v {
        None => Ok(default),
        Some(v) => match crate::config::parse_duration(v) {
            Some(t)
                if t >= Duration::from_secs(60) && t <= Duration::from_secs(max_days * 86400) =>
            {
                Ok(t)
            }
            _ => Err(invalid(
                key,
                v,
                "not a duration in range",
                "write it like \"24h\" or \"30d\" (at least 1 minute)",
            )),
        },
    };
    Ok(MediaConfig {
        max_document_bytes: bytes(
            "whatsapp.max_document_bytes",
            file.max_document_bytes,
            d.max_document_bytes,
        )?,
        // Meta deletes media after 30 days by itself.
        media_ttl: span(
            "whatsapp.media_ttl",
            file.media_ttl.as_deref(),
            d.media_ttl,
            30,
        )?,
        max_inbound_media_bytes: bytes(
            "whatsapp.max_inbound_media_bytes",
            file.max_inbound_media_bytes,
            d.max_inbound_media_bytes,
        )?,
        inbound_media_retention: span(
            "whatsapp.inbound_media_retention",
            file.inbound_media_retention.as_deref(),
            d.inbound_media_retention,
            3650,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> Result<MediaConfig, super::super::config::Invalid> {
        let file: super::super::config::WhatsappFile = toml::from_str(toml_text).unwrap();
        validate_config(&file)
    }

    #[test]
    fn media_keys_have_defaults_and_ranges() {
        let c = check("").unwrap();
        assert_eq!(c, MediaConfig::default());
        assert_eq!(c.media_ttl, Duration::from_secs(86_400));
        let c = check("media_ttl = \"2h\"\ninbound_media_retention = \"7d\"\n").unwrap();
        assert_eq!(c.media_ttl, Duration::from_secs(7200));
        assert_eq!(c.inbound_media_retention, Duration::from_secs(7 * 86_400));
        for (text, key) in [
            ("media_ttl = \"31d\"", "whatsapp.media_ttl"),
            ("media_ttl = \"soon\"", "whatsapp.media_ttl"),
            ("max_document_bytes = 10", "whatsapp.max_document_bytes"),
            (
                "max_inbound_media_bytes = 200000000",
                "whatsapp.max_inbound_media_bytes",
            ),
            (
                "inbound_media_retention = \"1s\"",
                "whatsapp.inbound_media_retention",
            ),
        ] {
            assert_eq!(check(text).unwrap_err().key, key, "{text}");
        }
    }
}
