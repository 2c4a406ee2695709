//! The PDF inside a CDA document (HL7 CDA R2 "level 1": a header and a
//! `nonXMLBody` whose `<text mediaType="application/pdf" representation="B64">`
//! holds the PDF in base64), as IHE XDS-SD and the French CI-SIS profiles
//! send it in an `ED` observation.
//!
//! This is not an XML parser: it looks for the one element it needs with
//! plain byte searches. Everything is bounded by the input (itself bounded by
//! `pms.max_message_bytes`) and by the PDF limit, and nothing can panic.

use base64::Engine as _;

/// Base64 as senders write it: standard alphabet, white space anywhere (line
/// breaks every 76 characters are common), padding optional.
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Why no PDF came out of a base64 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    NotBase64,
    TooLarge,
}

/// Decodes base64 with white space removed, refusing (before decoding) a
/// text whose decoded size would exceed `max_bytes`.
pub fn base64(text: &[u8], max_bytes: usize) -> Result<Vec<u8>, Decode> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.len() / 4 * 3 > max_bytes.saturating_add(3) {
        return Err(Decode::TooLarge);
    }
    let bytes = LENIENT.decode(&compact).map_err(|_| Decode::NotBase64)?;
    if bytes.len() > max_bytes {
        return Err(Decode::TooLarge);
    }
    Ok(bytes)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of attribute `name` in an element's attribute text (between
/// the element name and `>`), with either quote character.
fn attribute<'a>(attrs: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut rest = attrs;
    loop {
        let at = find(rest, name)?;
        let before_ok = at == 0
            || rest
                .get(at - 1)
                .is_some_and(|b| b.is_ascii_whitespace() || *b == b':');
        let after = rest.get(at + name.len()..)?;
        rest = after;
        if !before_ok {
            continue;
        }
        let after = trim_start(after);
        let Some(after) = after.strip_prefix(b"=") else {
            continue;
        };
        let after = trim_start(after);
        let quote = *after.first()?;
        if quote != b'"' && quote != b'\'' {
            continue;
        }
        let value = after.get(1..)?;
        let end = value.iter().position(|b| *b == quote)?;
        return value.get(..end);
    }
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    b.get(n..).unwrap_or_default()
}

/// The PDF carried in a CDA level-1 document's `nonXMLBody`, if there is
/// one. `xml` is the CDA as bytes (UTF-8); element names may carry a
/// namespace prefix (`<cda:text …>`).
pub fn pdf_in_cda(xml: &[u8], max_bytes: usize) -> Option<Result<Vec<u8>, Decode>> {
    let body = find(xml, b"nonXMLBody")?;
    let mut rest = xml.get(body..)?;
    loop {
        // The next element named `text` (`<text` or `<prefix:text`).
        let at = find(rest, b"text")?;
        let name_end = at + 4;
        let before = rest.get(..at)?;
        let is_tag = match before.last() {
            Some(b'<') => true,
            Some(_) => {
                // `<prefix:text`: a ':' then an XML name back to a '<'.
                let colon = before.last() == Some(&b':');
                let lt = before.iter().rposition(|b| *b == b'<');
                colon
                    && lt.is_some_and(|lt| {
                        before
                            .get(lt + 1..before.len().saturating_sub(1))
                            .is_some_and(|p| {
                                !p.is_empty()
                                    && p.iter().all(|b| {
                                        b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-'
                                    })
                            })
                    })
            }
            None => false,
        };
        let follows = rest.get(name_end).copied();
        let after = rest.get(name_end..)?;
        rest = after;
        if !is_tag || !follows.is_some_and(|b| b.is_ascii_whitespace() || b == b'>') {
            continue;
        }
        let close = after.iter().position(|b| *b == b'>')?;
        let attrs = after.get(..close)?;
        let media = attribute(attrs, b"mediaType");
        let representation = attribute(attrs, b"representation");
        let is_pdf = media.is_some_and(|m| m.eq_ignore_ascii_case(b"application/pdf"));
        let is_b64 = representation.is_some_and(|r| r.eq_ignore_ascii_case(b"B64"));
        if !is_pdf || !is_b64 || attrs.last() == Some(&b'/') {
            continue;
        }
        let content = after.get(close + 1..)?;
        let end = content.iter().position(|b| *b == b'<')?;
        let mut data = content.get(..end)?;
        // A CDATA section around the base64 is legal XML too.
        if let Some(inner) = trim_start(content).strip_prefix(b"<![CDATA[") {
            let stop = find(inner, b"]]>")?;
            data = inner.get(..stop)?;
        }
        return Some(base64(data, max_bytes).and_then(|pdf| {
            if pdf.starts_with(b"%PDF-") {
                Ok(pdf)
            } else {
                Err(Decode::NotBase64)
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PDF: &[u8] = b"%PDF-1.4\n% synthetic ZZTEST document\n%%EOF\n";

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    pub fn cda_with_pdf(pdf: &[u8]) -> String {
        let data = b64(pdf);
        let wrapped: Vec<String> = data
            .as_bytes()
            .chunks(20)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ClinicalDocument xmlns=\"urn:hl7-org:v3\">\n\
             <title>ZZTEST report</title>\n<component>\n  <nonXMLBody>\n    \
             <text mediaType='application/pdf' representation=\"B64\">\n{}\n</text>\n  \
             </nonXMLBody>\n</component>\n</ClinicalDocument>\n",
            wrapped.join("\n")
        )
    }

    #[test]
    fn finds_the_pdf_in_a_level_one_cda() {
        let xml = cda_with_pdf(PDF);
        assert_eq!(pdf_in_cda(xml.as_bytes(), 1 << 20), Some(Ok(PDF.to_vec())));
        // With a namespace prefix and a CDATA section.
        let prefixed = format!(
            "<cda:ClinicalDocument><cda:nonXMLBody><cda:text representation=\"B64\" mediaType=\"application/pdf\"><![CDATA[{}]]></cda:text></cda:nonXMLBody></cda:ClinicalDocument>",
            b64(PDF)
        );
        assert_eq!(
            pdf_in_cda(prefixed.as_bytes(), 1 << 20),
            Some(Ok(PDF.to_vec()))
        );
    }

    #[test]
    fn no_pdf_no_body_or_too_large() {
        let structured = "<ClinicalDocument><component><structuredBody><text>ZZTEST</text></structuredBody></component></ClinicalDocument>";
        assert_eq!(pdf_in_cda(structured.as_bytes(), 1 << 20), None);
        let plain = "<ClinicalDocument><nonXMLBody><text mediaType=\"text/plain\">ZZTEST</text></nonXMLBody></ClinicalDocument>";
        assert_eq!(pdf_in_cda(plain.as_bytes(), 1 << 20), None);
        let xml = cda_with_pdf(PDF);
        assert_eq!(pdf_in_cda(xml.as_bytes(), 10), Some(Err(Decode::TooLarge)));
        let not_pdf = cda_with_pdf(b"hello ZZTEST");
        assert_eq!(
            pdf_in_cda(not_pdf.as_bytes(), 1 << 20),
            Some(Err(Decode::NotBase64))
        );
    }

    #[test]
    fn truncated_and_hostile_input_never_panics() {
        let xml = cda_with_pdf(PDF);
        for end in 0..xml.len() {
            let _ = pdf_in_cda(xml.as_bytes().get(..end).unwrap(), 1 << 20);
        }
        for junk in [
            &b"nonXMLBody"[..],
            b"nonXMLBody<text",
            b"nonXMLBody<:text mediaType=",
            b"nonXMLBody<text mediaType=\"application/pdf\" representation=\"B64\"",
            b"nonXMLBody<text mediaType=\"application/pdf\" representation=\"B64\">",
            b"nonXMLBody<text mediaType=\"application/pdf\" representation=\"B64\"><![CDATA[",
            b"nonXMLBody<text mediaType=\"application/pdf\" representation=\"B64\"/>",
            b"nonXMLBody text text<text <text",
        ] {
            let _ = pdf_in_cda(junk, 1 << 20);
        }
        assert_eq!(base64(b"!!!!", 100), Err(Decode::NotBase64));
        assert_eq!(base64(b"JVBERi0x\nLjQ", 100).unwrap(), b"%PDF-1.4");
    }
}
