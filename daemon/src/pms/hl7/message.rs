//! The parsed shape of an HL7 v2 message and its accessors.
//!
//! The tree mirrors the wire syntax (segment → field → repetition →
//! component → subcomponent) so that nothing is lost; the accessors give the
//! mappers the usual `PID-5.1` style of addressing. Every accessor returns
//! `None` rather than panicking when a position is absent, and treats an
//! empty string as absent, because HL7 does not distinguish the two.

use super::charset::Encoding;
use smallvec::{smallvec, SmallVec};
use std::fmt;

/// The delimiters a message declares in MSH-1 and MSH-2.
///
/// All are single ASCII bytes. MSH-2 may be shorter than the usual four
/// characters; a missing delimiter is `None` and simply never splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    pub field: u8,
    pub component: Option<u8>,
    pub repetition: Option<u8>,
    pub escape: Option<u8>,
    pub subcomponent: Option<u8>,
    /// v2.7+ truncation character (usually `#`). It carries no meaning for
    /// parsing; we keep it only to decode `\P\`.
    pub truncation: Option<u8>,
}

impl Separators {
    /// `|^~\&`: what every system sends in practice and what we write.
    pub const STANDARD: Separators = Separators {
        field: b'|',
        component: Some(b'^'),
        repetition: Some(b'~'),
        escape: Some(b'\\'),
        subcomponent: Some(b'&'),
        truncation: None,
    };
}

impl Default for Separators {
    fn default() -> Self {
        Self::STANDARD
    }
}

/// One leaf-level container: the subcomponents of a component.
///
/// Values are patient data: `Debug` on this type and on [`Repetition`],
/// [`Field`], [`Segment`] and [`Message`] shows shapes (ids, counts), never
/// values, so that a stray `{:?}` cannot put PHI into a log or a panic.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Component {
    /// Inline when there is one (no `&`): most components.
    pub subcomponents: SmallVec<[String; 1]>,
}

/// One occurrence of a field (fields may repeat, separated by `~`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Repetition {
    pub components: Vec<Component>,
}

/// A field: zero repetitions when the field is empty on the wire.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Field {
    /// Inline when the field does not repeat: most fields.
    pub repetitions: SmallVec<[Repetition; 1]>,
}

/// A segment such as `PID`, with its fields numbered from 1.
#[derive(Clone, PartialEq, Eq)]
pub struct Segment {
    pub id: String,
    /// `fields[0]` is field 1. For MSH/BHS/FHS, field 1 is the field
    /// separator and field 2 the encoding characters, each as plain text.
    pub fields: Vec<Field>,
}

/// A parsed message. The first segment is always the MSH header.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub(super) segments: Vec<Segment>,
    pub(super) separators: Separators,
    pub(super) encoding: Encoding,
}

/// MSH-9, split: `SIU^S12^SIU_S12` is code `SIU`, trigger `S12`, structure
/// `SIU_S12`. The trigger is empty when absent (plain `ACK` in v2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageType {
    pub code: String,
    pub trigger: String,
    pub structure: Option<String>,
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Component")
            .field("subcomponents", &self.subcomponents.len())
            .finish()
    }
}

impl fmt::Debug for Repetition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repetition")
            .field("components", &self.components.len())
            .finish()
    }
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("repetitions", &self.repetitions.len())
            .finish()
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Segment ids are syntax (`PID`, `Z01`), not values.
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("fields", &self.fields.len())
            .finish()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // MSH-9 names the message type (no patient data); every other
        // value stays out, MSH-10 included (some senders embed names).
        let kind = self
            .message_type()
            .map(|t| format!("{}^{}", t.code, t.trigger))
            .unwrap_or_default();
        f.debug_struct("Message")
            .field("type", &kind)
            .field("segments", &self.segments.len())
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl Component {
    /// A component holding one subcomponent.
    pub fn from_text(value: impl Into<String>) -> Self {
        Self {
            subcomponents: smallvec![value.into()],
        }
    }

    /// Subcomponent `sub` (1-based), `None` when absent or empty.
    pub fn subcomponent(&self, sub: usize) -> Option<&str> {
        let i = sub.checked_sub(1)?;
        self.subcomponents.get(i).and_then(|s| non_empty(s))
    }

    /// The first subcomponent: the whole value when there are no `&`.
    pub fn text(&self) -> Option<&str> {
        self.subcomponent(1)
    }
}

impl Repetition {
    /// A repetition whose components each hold one plain value.
    pub fn from_components<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            components: values.into_iter().map(Component::from_text).collect(),
        }
    }

    /// Component `comp`, subcomponent `sub` (both 1-based).
    pub fn value(&self, comp: usize, sub: usize) -> Option<&str> {
        let i = comp.checked_sub(1)?;
        self.components.get(i)?.subcomponent(sub)
    }

    /// First subcomponent of component `comp` (1-based).
    pub fn component(&self, comp: usize) -> Option<&str> {
        self.value(comp, 1)
    }

    /// The first component's first subcomponent.
    pub fn text(&self) -> Option<&str> {
        self.value(1, 1)
    }
}

impl Field {
    /// A field holding one plain value.
    pub fn from_text(value: impl Into<String>) -> Self {
        Self {
            repetitions: smallvec![Repetition {
                components: vec![Component::from_text(value)],
            }],
        }
    }

    /// A non-repeating field whose components each hold one plain value.
    pub fn from_components<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            repetitions: smallvec![Repetition::from_components(values)],
        }
    }

    /// Repetition `rep` (0-based), component and subcomponent (1-based).
    pub fn value(&self, rep: usize, comp: usize, sub: usize) -> Option<&str> {
        self.repetitions.get(rep)?.value(comp, sub)
    }

    /// First repetition, first component, first subcomponent.
    pub fn text(&self) -> Option<&str> {
        self.value(0, 1, 1)
    }

    /// True when the field carries no non-empty value at all.
    pub fn is_empty(&self) -> bool {
        self.repetitions
            .iter()
            .flat_map(|r| &r.components)
            .flat_map(|c| &c.subcomponents)
            .all(String::is_empty)
    }
}

impl Segment {
    /// Field `n` (1-based, as in `PID-3`).
    pub fn field(&self, n: usize) -> Option<&Field> {
        self.fields.get(n.checked_sub(1)?)
    }

    /// `field` (1-based), repetition `rep` (0-based), `comp` and `sub`
    /// (1-based). `None` when absent or empty.
    pub fn value(&self, field: usize, rep: usize, comp: usize, sub: usize) -> Option<&str> {
        self.field(field)?.value(rep, comp, sub)
    }

    /// First repetition, first component, first subcomponent of `field`.
    pub fn text(&self, field: usize) -> Option<&str> {
        self.value(field, 0, 1, 1)
    }

    /// First subcomponent of component `comp` in the first repetition.
    pub fn component(&self, field: usize, comp: usize) -> Option<&str> {
        self.value(field, 0, comp, 1)
    }

    /// All repetitions of `field` (none when it is absent or empty).
    pub fn repetitions(&self, field: usize) -> impl Iterator<Item = &Repetition> {
        self.field(field)
            .map(|f| f.repetitions.as_slice())
            .unwrap_or_default()
            .iter()
    }
}

impl Message {
    /// All segments in wire order; the first is MSH.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The delimiters declared in MSH-1/MSH-2.
    pub fn separators(&self) -> Separators {
        self.separators
    }

    /// How the bytes were actually decoded (see [`Encoding::detect`]).
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Segments with this id, in wire order.
    pub fn segments_named<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.id == id)
    }

    /// The first segment with this id.
    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id == id)
    }

    /// The MSH segment.
    pub fn header(&self) -> Option<&Segment> {
        self.segments.first().filter(|s| s.id == "MSH")
    }

    fn msh(&self, field: usize, comp: usize) -> Option<&str> {
        self.header()?.component(field, comp)
    }

    /// MSH-3.1.
    pub fn sending_application(&self) -> Option<&str> {
        self.msh(3, 1)
    }

    /// MSH-4.1.
    pub fn sending_facility(&self) -> Option<&str> {
        self.msh(4, 1)
    }

    /// MSH-5.1.
    pub fn receiving_application(&self) -> Option<&str> {
        self.msh(5, 1)
    }

    /// MSH-6.1.
    pub fn receiving_facility(&self) -> Option<&str> {
        self.msh(6, 1)
    }

    /// MSH-9 split into code, trigger and structure.
    pub fn message_type(&self) -> Option<MessageType> {
        let code = self.msh(9, 1)?;
        Some(MessageType {
            code: code.to_owned(),
            trigger: self.msh(9, 2).unwrap_or_default().to_owned(),
            structure: self.msh(9, 3).map(str::to_owned),
        })
    }

    /// MSH-10, the sender's message control id (our idempotency key).
    pub fn control_id(&self) -> Option<&str> {
        self.msh(10, 1)
    }

    /// MSH-11.1: `P` production, `T` training, `D` debugging.
    pub fn processing_id(&self) -> Option<&str> {
        self.msh(11, 1)
    }

    /// MSH-12.1, e.g. `2.5.1`.
    pub fn version(&self) -> Option<&str> {
        self.msh(12, 1)
    }

    /// MSH-18 (first repetition) as sent, e.g. `8859/1` or `UNICODE UTF-8`.
    pub fn charset(&self) -> Option<&str> {
        self.msh(18, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_treat_zero_and_missing_positions_as_none() {
        let seg = Segment {
            id: "PID".into(),
            fields: vec![
                Field::from_text("1"),
                Field::default(),
                Field::from_components(["a", "", "c"]),
            ],
        };
        assert_eq!(seg.text(1), Some("1"));
        assert_eq!(seg.text(0), None);
        assert_eq!(seg.text(2), None);
        assert_eq!(seg.text(99), None);
        assert_eq!(seg.component(3, 2), None);
        assert_eq!(seg.component(3, 3), Some("c"));
        assert_eq!(seg.component(3, 0), None);
        assert_eq!(seg.value(3, 1, 1, 1), None);
        assert_eq!(seg.value(3, 0, 1, 0), None);
        assert_eq!(seg.repetitions(2).count(), 0);
        assert_eq!(seg.repetitions(3).count(), 1);
        assert!(seg.field(2).is_some_and(Field::is_empty));
    }

    #[test]
    fn debug_shows_shapes_never_values() {
        let bytes = b"MSH|^~\\&|ZZPMS|ZZCLINIC|||20261125093000||ADT^A04^ADT_A01|MSG1|P|2.5.1\r\
PID|1||000123^^^ZZHOSP^MR||ZZMARKERZZ^ANN&ZZMARKERZZ~ZZMARKERZZ||19010203";
        let m = super::super::parse(bytes).unwrap();
        let pid = m.segment("PID").unwrap();
        let shown = [
            format!("{m:?}"),
            format!("{m:#?}"),
            format!("{pid:?}"),
            format!("{:?}", pid.field(5).unwrap()),
            format!("{:?}", pid.repetitions(5).next().unwrap()),
            format!("{:?}", pid.field(5).unwrap().repetitions[0].components[1]),
            format!("{:?}", m.segments()),
        ];
        for s in &shown {
            assert!(!s.contains("ZZMARKERZZ"), "{s}");
            assert!(!s.contains("000123"), "{s}");
        }
        assert!(
            shown[0].contains("ADT^A04") && shown[0].contains("segments: 2"),
            "{}",
            shown[0]
        );
        assert!(shown[2].contains("PID"), "{}", shown[2]);
    }
}
