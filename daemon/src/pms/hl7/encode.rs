//! Writing messages: [`MessageBuilder`] and [`SegmentBuilder`].
//!
//! We always write the standard separators `|^~\&` and CR segment
//! terminators; values are escaped, so callers pass plain text. Trailing
//! empty fields, repetitions, components and subcomponents are left out, as
//! the standard recommends, which also keeps positions that were never set
//! from showing up as a run of `|||`.
//!
//! ```
//! use clinic_relay::pms::hl7::{MessageBuilder, SegmentBuilder};
//!
//! let mut msh = SegmentBuilder::new("MSH");
//! msh.set(3, "CLINIC-RELAY").set_component(9, 1, "ADT").set_component(9, 2, "A08");
//! msh.set(10, "42").set(12, "2.5.1");
//! let mut pid = SegmentBuilder::new("PID");
//! pid.set_component(5, 1, "ZZTEST^JR").set_component(5, 2, "ANN");
//! let mut msg = MessageBuilder::new();
//! msg.push(msh).push(pid);
//! let bytes = msg.build().unwrap();
//! assert_eq!(bytes, b"MSH|^~\\&|CLINIC-RELAY||||||ADT^A08|42||2.5.1\rPID|||||ZZTEST\\S\\JR^ANN\r");
//! ```

use super::charset::Encoding;
use super::error::{valid_segment_id, EncodeError};
use super::escape::escape_into;
use super::message::{Component, Field, Repetition};

/// Largest field, repetition, component or subcomponent position accepted:
/// far beyond any real segment, small enough that a typo cannot make us
/// allocate gigabytes.
pub const MAX_POSITION: usize = 65_535;

/// One segment being written. Positions are 1-based as in the HL7 books,
/// except repetitions, which are 0-based list indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBuilder {
    id: String,
    fields: Vec<Field>,
    /// Misuse is recorded and reported by [`MessageBuilder::build`], so that
    /// the setters can be chained without a `Result` at every step.
    bad_position: bool,
    reserved: bool,
}

impl SegmentBuilder {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            fields: Vec::new(),
            bad_position: false,
            reserved: false,
        }
    }

    fn is_header(&self) -> bool {
        matches!(self.id.as_str(), "MSH" | "BHS" | "FHS")
    }

    /// The field at 1-based `field`, created if needed.
    fn slot(&mut self, field: usize) -> Option<&mut Field> {
        if self.is_header() && (field == 1 || field == 2) {
            self.reserved = true;
            return None;
        }
        match field.checked_sub(1) {
            Some(i) if field <= MAX_POSITION => grow(&mut self.fields, i),
            _ => {
                self.bad_position = true;
                None
            }
        }
    }

    /// Set `field` (first repetition, first component) to `value`.
    pub fn set(&mut self, field: usize, value: impl Into<String>) -> &mut Self {
        self.set_value(field, 0, 1, 1, value)
    }

    /// Set component `comp` of the first repetition of `field`.
    pub fn set_component(
        &mut self,
        field: usize,
        comp: usize,
        value: impl Into<String>,
    ) -> &mut Self {
        self.set_value(field, 0, comp, 1, value)
    }

    /// Set one value: `field`, `comp`, `sub` 1-based, `rep` 0-based.
    pub fn set_value(
        &mut self,
        field: usize,
        rep: usize,
        comp: usize,
        sub: usize,
        value: impl Into<String>,
    ) -> &mut Self {
        let valid = |n: usize| (1..=MAX_POSITION).contains(&n);
        if !(valid(comp) && valid(sub) && rep < MAX_POSITION) {
            self.bad_position = true;
            return self;
        }
        let placed = self.slot(field).and_then(|f| {
            let r = grow(&mut f.repetitions, rep)?;
            let c = grow(&mut r.components, comp - 1)?;
            grow(&mut c.subcomponents, sub - 1)
        });
        if let Some(slot) = placed {
            *slot = value.into();
        }
        self
    }

    /// Replace the whole of `field`, e.g. to copy one from a parsed message.
    pub fn set_field(&mut self, field: usize, value: Field) -> &mut Self {
        if let Some(slot) = self.slot(field) {
            *slot = value;
        }
        self
    }

    /// Append a repetition to `field` (OBX-5 chunks of a PDF, PID-3 ids).
    pub fn add_repetition(&mut self, field: usize, value: Repetition) -> &mut Self {
        if let Some(slot) = self.slot(field) {
            slot.repetitions.push(value);
        }
        self
    }
}

/// Make `items[i]` exist (filling with defaults) and return it; `items` is
/// any of the tree's vectors (`Vec`, `SmallVec`).
fn grow<T, V>(items: &mut V, i: usize) -> Option<&mut T>
where
    T: Default,
    V: std::ops::DerefMut<Target = [T]> + Extend<T>,
{
    let missing = (i + 1).saturating_sub(items.len());
    items.extend(std::iter::repeat_with(T::default).take(missing));
    items.get_mut(i)
}

/// A message being written: segments in order, the first one MSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBuilder {
    segments: Vec<SegmentBuilder>,
    encoding: Encoding,
}

impl Default for MessageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageBuilder {
    /// A builder writing UTF-8.
    pub fn new() -> Self {
        Self {
            segments: Vec::new(),
            encoding: Encoding::Utf8,
        }
    }

    /// Write in Latin-1 instead (when MSH-18 says `8859/1`). Setting MSH-18
    /// to match is the caller's job.
    pub fn encoding(&mut self, encoding: Encoding) -> &mut Self {
        self.encoding = encoding;
        self
    }

    /// Append a segment.
    pub fn push(&mut self, segment: SegmentBuilder) -> &mut Self {
        self.segments.push(segment);
        self
    }

    /// The encoded message, or what was wrong with the calls that built it.
    pub fn build(&self) -> Result<Vec<u8>, EncodeError> {
        self.validate()?;
        Ok(self.write())
    }

    pub(super) fn validate(&self) -> Result<(), EncodeError> {
        if self.segments.first().map(|s| s.id.as_str()) != Some("MSH") {
            return Err(EncodeError::MissingMsh);
        }
        for (i, seg) in self.segments.iter().enumerate() {
            let index = i + 1;
            if !valid_segment_id(seg.id.as_bytes()) {
                return Err(EncodeError::BadSegmentId { index });
            }
            if seg.bad_position {
                return Err(EncodeError::BadPosition { index });
            }
            if seg.reserved {
                return Err(EncodeError::ReservedMshField);
            }
        }
        Ok(())
    }

    /// Encode without validating; for callers whose ids and positions are
    /// constants (the ACK writer), checked once by a test.
    pub(super) fn write(&self) -> Vec<u8> {
        let mut out = String::new();
        for seg in &self.segments {
            out.push_str(&seg.id);
            let fields = if seg.is_header() {
                out.push_str("|^~\\&");
                seg.fields.get(2..).unwrap_or_default()
            } else {
                &seg.fields
            };
            for field in trimmed(fields, Field::is_empty) {
                out.push('|');
                write_field(field, &mut out);
            }
            out.push('\r');
        }
        let mut bytes = Vec::with_capacity(out.len());
        self.encoding.encode_into(&out, &mut bytes);
        bytes
    }
}

fn component_is_empty(c: &Component) -> bool {
    c.subcomponents.iter().all(String::is_empty)
}

fn repetition_is_empty(r: &Repetition) -> bool {
    r.components.iter().all(component_is_empty)
}

/// `items` without its trailing empty elements.
fn trimmed<T>(items: &[T], is_empty: impl Fn(&T) -> bool) -> &[T] {
    let keep = items
        .iter()
        .rposition(|x| !is_empty(x))
        .map_or(0, |i| i + 1);
    items.get(..keep).unwrap_or_default()
}

fn write_joined<T>(
    items: &[T],
    sep: char,
    out: &mut String,
    mut write: impl FnMut(&T, &mut String),
) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        write(item, out);
    }
}

fn write_field(field: &Field, out: &mut String) {
    let reps = trimmed(&field.repetitions, repetition_is_empty);
    write_joined(reps, '~', out, |rep, out| {
        let comps = trimmed(&rep.components, component_is_empty);
        write_joined(comps, '^', out, |comp, out| {
            let subs = trimmed(&comp.subcomponents, |s| s.is_empty());
            write_joined(subs, '&', out, |s, out| escape_into(s, out));
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msh() -> SegmentBuilder {
        let mut s = SegmentBuilder::new("MSH");
        s.set_component(9, 1, "ADT").set(10, "1");
        s
    }

    #[test]
    fn writes_msh_specially_and_escapes_values() {
        let mut pid = SegmentBuilder::new("PID");
        pid.set_value(3, 0, 1, 1, "000123")
            .set_value(3, 1, 1, 1, "A|B")
            .set_value(5, 0, 1, 2, "x&y")
            .set(11, "line1\nline2");
        let mut b = MessageBuilder::new();
        b.push(msh()).push(pid);
        assert_eq!(
            b.build().unwrap(),
            b"MSH|^~\\&|||||||ADT|1\rPID|||000123~A\\F\\B||&x\\T\\y||||||line1\\.br\\line2\r"
        );
    }

    #[test]
    fn misuse_is_reported_not_panicked() {
        let mut b = MessageBuilder::new();
        b.push(SegmentBuilder::new("PID"));
        assert_eq!(b.build(), Err(EncodeError::MissingMsh));

        let mut m = msh();
        m.set(2, "^~");
        assert_eq!(
            MessageBuilder::new().push(m).build(),
            Err(EncodeError::ReservedMshField)
        );

        for bad in [
            SegmentBuilder::new("pid"),
            SegmentBuilder::new("PIDX"),
            SegmentBuilder::new(""),
        ] {
            let r = MessageBuilder::new().push(msh()).push(bad).build();
            assert_eq!(r, Err(EncodeError::BadSegmentId { index: 2 }));
        }
        let mut zero = SegmentBuilder::new("PID");
        zero.set(0, "x");
        let mut huge = SegmentBuilder::new("PID");
        huge.set_value(1, usize::MAX, 1, 1, "x")
            .set_value(1, 0, usize::MAX, 1, "x");
        for bad in [zero, huge] {
            let r = MessageBuilder::new().push(msh()).push(bad).build();
            assert_eq!(r, Err(EncodeError::BadPosition { index: 2 }));
        }
    }

    #[test]
    fn latin1_output() {
        let mut pid = SegmentBuilder::new("PID");
        pid.set(5, "Ren\u{e9}");
        let mut b = MessageBuilder::new();
        b.encoding(Encoding::Latin1).push(msh()).push(pid);
        assert!(b.build().unwrap().ends_with(b"PID|||||Ren\xe9\r"));
    }
}
