//! Request bodies in the formats receivers take: JSON ([`crate::Request::json`]), XML,
//! form-encoded, CSV (which spreadsheet programs open) and multipart file attachments.

use crate::template::{percent_encode, xml_escape};
use crate::Request;

/// An XML element, built and then written with [`Xml::to_document`] or [`Request::xml`].
///
/// ```
/// use wasmhooks_guest::body::Xml;
/// let order = Xml::new("order").attr("id", "A&1").child(Xml::new("email").text("a@x.pl"));
/// assert_eq!(order.to_string(), r#"<order id="A&amp;1"><email>a@x.pl</email></order>"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xml {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Element(Xml),
    Text(String),
}

impl Xml {
    /// An empty element.
    pub fn new(name: impl Into<String>) -> Xml {
        Xml {
            name: name.into(),
            attributes: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Adds an attribute (its value is escaped).
    pub fn attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Xml {
        self.attributes.push((name.into(), value.into()));
        self
    }

    /// Adds text (escaped).
    pub fn text(mut self, text: impl Into<String>) -> Xml {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// Adds a child element.
    pub fn child(mut self, child: Xml) -> Xml {
        self.children.push(Node::Element(child));
        self
    }

    /// `<name>text</name>` as a child: the common case of a field.
    pub fn field(self, name: impl Into<String>, text: impl Into<String>) -> Xml {
        self.child(Xml::new(name).text(text))
    }

    /// The element with an XML declaration in front.
    pub fn to_document(&self) -> String {
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{self}")
    }
}

impl std::fmt::Display for Xml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}", self.name)?;
        for (name, value) in &self.attributes {
            write!(f, " {name}=\"{}\"", xml_escape(value))?;
        }
        if self.children.is_empty() {
            return f.write_str("/>");
        }
        f.write_str(">")?;
        for child in &self.children {
            match child {
                Node::Element(e) => write!(f, "{e}")?,
                Node::Text(t) => f.write_str(&xml_escape(t))?,
            }
        }
        write!(f, "</{}>", self.name)
    }
}

/// `application/x-www-form-urlencoded` text of these pairs (spaces as `+`).
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_component(k), form_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn form_component(text: &str) -> String {
    percent_encode(text).replace("%20", "+")
}

/// CSV text (RFC 4180, CRLF line ends): a header row, then the rows. Fields with a comma,
/// quote or line break are quoted, with quotes doubled.
pub fn csv<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    let mut out = String::new();
    let mut line = |fields: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> = fields.map(csv_field).collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(AsRef::as_ref));
    }
    out
}

fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// A `multipart/form-data` body: text fields and file attachments.
#[derive(Debug, Clone, Default)]
pub struct Multipart {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
struct Part {
    name: String,
    file: Option<(String, String)>,
    bytes: Vec<u8>,
}

impl Multipart {
    /// No parts yet.
    pub fn new() -> Multipart {
        Multipart::default()
    }

    /// A text field.
    pub fn text(mut self, name: impl Into<String>, value: impl Into<String>) -> Multipart {
        self.parts.push(Part {
            name: name.into(),
            file: None,
            bytes: value.into().into_bytes(),
        });
        self
    }

    /// A file: field name, file name, content type and bytes.
    pub fn file(
        mut self,
        name: impl Into<String>,
        file_name: impl Into<String>,
        content_type: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
    ) -> Multipart {
        self.parts.push(Part {
            name: name.into(),
            file: Some((file_name.into(), content_type.into())),
            bytes: bytes.into(),
        });
        self
    }

    /// The body and its content type. The boundary is derived from the content and checked
    /// not to occur in it.
    pub fn build(&self) -> (Vec<u8>, String) {
        let mut seed = self
            .parts
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, p| fnv(h, &p.bytes));
        let boundary = loop {
            let candidate = format!("wasmhooks-{seed:016x}");
            let clash = self
                .parts
                .iter()
                .any(|p| contains(&p.bytes, candidate.as_bytes()));
            if !clash {
                break candidate;
            }
            seed = fnv(seed, b"again");
        };
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut body = Vec::new();
        for part in &self.parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let mut disposition = format!("form-data; name=\"{}\"", quote(&part.name));
            if let Some((file_name, content_type)) = &part.file {
                disposition.push_str(&format!("; filename=\"{}\"", quote(file_name)));
                body.extend_from_slice(
                    format!("Content-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n")
                        .as_bytes(),
                );
            } else {
                body.extend_from_slice(
                    format!("Content-Disposition: {disposition}\r\n\r\n").as_bytes(),
                );
            }
            body.extend_from_slice(&part.bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        (body, format!("multipart/form-data; boundary={boundary}"))
    }
}

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Request {
    /// An XML body (`application/xml`) with a declaration.
    pub fn xml(document: &Xml) -> Request {
        Request::bytes(document.to_document().into_bytes(), "application/xml")
    }

    /// A form-encoded body (`application/x-www-form-urlencoded`).
    pub fn form(pairs: &[(&str, &str)]) -> Request {
        Request::bytes(
            form(pairs).into_bytes(),
            "application/x-www-form-urlencoded",
        )
    }

    /// A CSV body (`text/csv; charset=utf-8`).
    pub fn csv<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> Request {
        Request::bytes(csv(header, rows).into_bytes(), "text/csv; charset=utf-8")
    }

    /// A `multipart/form-data` body, such as a file attachment.
    pub fn multipart(parts: &Multipart) -> Request {
        let (body, content_type) = parts.build();
        Request::bytes(body, content_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escapes_text_and_attributes() {
        let doc = Xml::new("order")
            .attr("id", r#"A"1"#)
            .field("note", "<b>fish & chips</b>")
            .child(Xml::new("empty"));
        assert_eq!(
            doc.to_string(),
            r#"<order id="A&quot;1"><note>&lt;b&gt;fish &amp; chips&lt;/b&gt;</note><empty/></order>"#
        );
        assert!(doc.to_document().starts_with("<?xml version=\"1.0\""));
    }

    #[test]
    fn forms_and_csv_quote_what_they_must() {
        assert_eq!(
            form(&[("q", "a b&c=d"), ("ż", "/")]),
            "q=a+b%26c%3Dd&%C5%BC=%2F"
        );
        let text = csv(
            &["sku", "name"],
            &[vec!["S1", "plain"], vec!["S,2", "say \"hi\"\nbye"]],
        );
        assert_eq!(
            text,
            "sku,name\r\nS1,plain\r\n\"S,2\",\"say \"\"hi\"\"\nbye\"\r\n"
        );
    }

    #[test]
    fn multipart_frames_every_part_with_a_boundary_not_in_the_content() {
        let (body, content_type) = Multipart::new()
            .text("order", "A-1")
            .file(
                "invoice",
                "inv \"1\".csv",
                "text/csv",
                b"a,b\r\n1,2\r\n".to_vec(),
            )
            .build();
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"order\"\r\n\r\nA-1\r\n"
        )));
        assert!(text.contains(
            "Content-Disposition: form-data; name=\"invoice\"; filename=\"inv \\\"1\\\".csv\"\r\nContent-Type: text/csv\r\n\r\na,b\r\n1,2\r\n\r\n"
        ));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        assert_eq!(text.matches(boundary).count(), 3);
    }
}
