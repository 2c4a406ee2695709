//! What Meta posts: `entry[].changes[].value` with inbound `messages`,
//! delivery `statuses` and account-level `errors`. Only the fields the
//! daemon uses are read; unknown fields are ignored (Meta adds fields
//! without notice), unknown message types and statuses are kept as such.
//!
//! `Debug` on these types never prints message content or numbers: they
//! hold PHI.

use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
pub struct Notification {
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub entry: Vec<Entry>,
}

#[derive(Deserialize, Default)]
pub struct Entry {
    #[serde(default)]
    pub changes: Vec<Change>,
}

#[derive(Deserialize, Default)]
pub struct Change {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub value: Value,
}

#[derive(Deserialize, Default)]
pub struct Value {
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub messages: Vec<InboundMessage>,
    #[serde(default)]
    pub statuses: Vec<Status>,
    #[serde(default)]
    pub errors: Vec<ApiError>,
}

#[derive(Deserialize, Default)]
pub struct Contact {
    pub wa_id: Option<String>,
    /// The business-scoped user id (`US.…`), present even without a number.
    pub user_id: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct InboundMessage {
    #[serde(default)]
    pub id: String,
    /// The sender's WhatsApp id (phone digits); absent for users who hide
    /// their number (then only `from_user_id` is given).
    pub from: Option<String>,
    pub from_user_id: Option<String>,
    #[serde(default)]
    pub timestamp: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    pub text: Option<Text>,
    pub interactive: Option<Interactive>,
    pub button: Option<QuickReply>,
    pub image: Option<Media>,
    pub document: Option<Media>,
    pub audio: Option<Media>,
    pub video: Option<Media>,
    pub sticker: Option<Media>,
    pub system: Option<System>,
    #[serde(default)]
    pub errors: Vec<ApiError>,
}

#[derive(Deserialize, Default)]
pub struct Text {
    #[serde(default)]
    pub body: String,
}

#[derive(Deserialize, Default)]
pub struct Interactive {
    pub button_reply: Option<Reply>,
    pub list_reply: Option<Reply>,
}

#[derive(Deserialize, Default)]
pub struct Reply {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub title: String,
}

/// A template's quick-reply button press.
#[derive(Deserialize, Default)]
pub struct QuickReply {
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub text: String,
}

#[derive(Deserialize, Default)]
pub struct Media {
    #[serde(default)]
    pub id: String,
    pub mime_type: Option<String>,
    pub caption: Option<String>,
    pub filename: Option<String>,
    /// Meta's checksum of the file (checked when it is fetched).
    pub sha256: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct System {
    #[serde(default)]
    pub body: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct Status {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub timestamp: String,
    pub recipient_id: Option<String>,
    pub recipient_user_id: Option<String>,
    /// Echoed from the send (`whatsapp::in_doubt`).
    pub biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    pub errors: Vec<ApiError>,
}

#[derive(Deserialize, Default, Clone)]
pub struct ApiError {
    #[serde(default)]
    pub code: i64,
    pub title: Option<String>,
}

/// A delivery state, in the order a message moves through them. A status
/// never goes backwards: `failed` outranks only `sent` (a message seen as
/// delivered or read did arrive, whatever a late failure says), and
/// `played` (a voice message listened to) is the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusKind {
    Sent,
    Failed,
    Delivered,
    Read,
    Played,
}

impl StatusKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sent" => Self::Sent,
            "failed" => Self::Failed,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "played" => Self::Played,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
        }
    }

    /// One bit per state, for the set of states seen for a message.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// What a patient sent, as it is sealed in the vault.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    Text {
        body: String,
    },
    ButtonReply {
        id: String,
        title: String,
    },
    ListReply {
        id: String,
        title: String,
    },
    /// A template's quick-reply button.
    QuickReply {
        payload: String,
        text: String,
    },
    Media {
        kind: String,
        media_id: String,
        mime_type: Option<String>,
        caption: Option<String>,
        filename: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    System {
        body: String,
        kind: Option<String>,
    },
    /// A type the daemon does not handle (`unsupported`, `reaction`, …).
    Unsupported {
        kind: String,
    },
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Content({})", self.kind())
    }
}

impl Content {
    /// The type's name, PHI-free (for events and logs).
    pub fn kind(&self) -> &str {
        match self {
            Content::Text { .. } => "text",
            Content::ButtonReply { .. } => "button_reply",
            Content::ListReply { .. } => "list_reply",
            Content::QuickReply { .. } => "button",
            Content::Media { kind, .. } => match kind.as_str() {
                "image" | "document" | "audio" | "video" | "sticker" => kind,
                _ => "media",
            },
            Content::System { .. } => "system",
            Content::Unsupported { .. } => "unsupported",
        }
    }

    /// The reply id the daemon put on a button or list row, if any: ours,
    /// PHI-free, what a workflow acts on.
    pub fn reply_id(&self) -> Option<&str> {
        match self {
            Content::ButtonReply { id, .. } | Content::ListReply { id, .. } => Some(id),
            Content::QuickReply { payload, .. } => Some(payload),
            _ => None,
        }
    }
}

impl InboundMessage {
    /// The content, whatever its type.
    pub fn content(&self) -> Content {
        let media = |kind: &str, m: &Media| Content::Media {
            kind: kind.to_owned(),
            media_id: m.id.clone(),
            mime_type: m.mime_type.clone(),
            caption: m.caption.clone(),
            filename: m.filename.clone(),
            sha256: m.sha256.clone(),
        };
        match self.kind.as_str() {
            "text" => {
                if let Some(t) = &self.text {
                    return Content::Text {
                        body: t.body.clone(),
                    };
                }
            }
            "interactive" => {
                if let Some(i) = &self.interactive {
                    if let Some(r) = &i.button_reply {
                        return Content::ButtonReply {
                            id: r.id.clone(),
                            title: r.title.clone(),
                        };
                    }
                    if let Some(r) = &i.list_reply {
                        return Content::ListReply {
                            id: r.id.clone(),
                            title: r.title.clone(),
                        };
                    }
                }
            }
            "button" => {
                if let Some(b) = &self.button {
                    return Content::QuickReply {
                        payload: b.payload.clone(),
                        text: b.text.clone(),
                    };
                }
            }
            "system" => {
                if let Some(s) = &self.system {
                    return Content::System {
                        body: s.body.clone(),
                        kind: s.kind.clone(),
                    };
                }
            }
            kind => {
                let m = match kind {
                    "image" => self.image.as_ref(),
                    "document" => self.document.as_ref(),
                    "audio" => self.audio.as_ref(),
                    "video" => self.video.as_ref(),
                    "sticker" => self.sticker.as_ref(),
                    _ => None,
                };
                if let Some(m) = m {
                    return media(kind, m);
                }
            }
        }
        Content::Unsupported {
            kind: if self.kind.len() <= 32
                && self
                    .kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                self.kind.clone()
            } else {
                "unknown".to_owned()
            },
        }
    }
}

/// Meta's timestamps are Unix seconds as a string.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse::<i64>()
        .ok()
        .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_kind_is_read() {
        let json = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
          "messaging_product":"whatsapp","metadata":{"phone_number_id":"1"},
          "contacts":[{"profile":{"name":"X"},"wa_id":"4915550100","user_id":"US.1"}],
          "messages":[
            {"from":"4915550100","id":"wamid.A","timestamp":"1800000000","type":"text","text":{"body":"hi"}},
            {"from":"4915550100","id":"wamid.B","timestamp":"1800000000","type":"interactive","interactive":{"type":"button_reply","button_reply":{"id":"confirm:1","title":"Yes"}}},
            {"from":"4915550100","id":"wamid.C","timestamp":"1800000000","type":"interactive","interactive":{"type":"list_reply","list_reply":{"id":"slot:9","title":"Mon","description":"d"}}},
            {"from":"4915550100","id":"wamid.D","timestamp":"1800000000","type":"button","button":{"payload":"stop","text":"Stop"}},
            {"from":"4915550100","id":"wamid.E","timestamp":"1800000000","type":"image","image":{"id":"m1","mime_type":"image/jpeg","sha256":"x"}},
            {"from_user_id":"US.1","id":"wamid.F","timestamp":"1800000000","type":"system","system":{"body":"changed","type":"user_changed_number"}},
            {"from":"4915550100","id":"wamid.G","timestamp":"1800000000","type":"unsupported","errors":[{"code":131051,"title":"Message type unknown"}]}
          ]}}]}]}"#;
        let n: Notification = serde_json::from_str(json).unwrap();
        let value = &n.entry[0].changes[0].value;
        let kinds: Vec<String> = value
            .messages
            .iter()
            .map(|m| m.content().kind().to_owned())
            .collect();
        assert_eq!(
            kinds,
            [
                "text",
                "button_reply",
                "list_reply",
                "button",
                "image",
                "system",
                "unsupported"
            ]
        );
        assert_eq!(value.messages[1].content().reply_id(), Some("confirm:1"));
        assert_eq!(value.messages[5].from, None);
        assert_eq!(value.messages[6].errors[0].code, 131051);
        assert_eq!(
            format!("{:?}", value.messages[0].content()),
            "Content(text)"
        );
    }

    #[test]
    fn statuses_are_ordered_and_never_go_backwards() {
        use StatusKind::*;
        assert!(Sent < Failed && Failed < Delivered && Delivered < Read && Read < Played);
        assert_eq!(StatusKind::parse("read"), Some(Read));
        assert_eq!(StatusKind::parse("deleted"), None);
    }
}
