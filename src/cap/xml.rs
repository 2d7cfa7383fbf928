//! A small namespace-aware element tree over quick-xml's `NsReader`. CAP
//! documents are a few kilobytes (a national ATOM index a few hundred), and
//! a tree lets the parser read ATOM entries, CAP 1.1 and 1.2 alike.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// Nesting deeper than this is not a CAP document; it is refused rather than
/// followed (a crafted document could otherwise exhaust memory).
const MAX_DEPTH: usize = 64;

#[derive(Debug, Default)]
pub struct El {
    /// Namespace URI, if bound.
    pub ns: Option<String>,
    /// Local name, without prefix.
    pub name: String,
    pub children: Vec<El>,
    /// Character data directly inside this element, entities resolved.
    pub text: String,
}

impl El {
    pub fn child(&self, name: &str) -> Option<&El> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a El> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Trimmed text of the first child called `name`; none when absent or empty.
    pub fn text_of(&self, name: &str) -> Option<String> {
        self.child(name)
            .map(|c| c.text.trim().to_string())
            .filter(|t| !t.is_empty())
    }
}

/// Parses a whole document into its root element.
pub fn parse(text: &str) -> Result<El, String> {
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<El> = Vec::new();
    let mut root: Option<El> = None;
    loop {
        let pos = reader.buffer_position();
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("{e} (near byte {pos})"))?;
        let ns = match ns {
            ResolveResult::Bound(n) => Some(String::from_utf8_lossy(n.as_ref()).into_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(p) => {
                return Err(format!(
                    "unknown namespace prefix `{}` (near byte {pos})",
                    String::from_utf8_lossy(&p)
                ));
            }
        };
        match event {
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(format!("content after the root element (near byte {pos})"));
            }
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("elements nested deeper than {MAX_DEPTH}"));
                }
                stack.push(element(ns, &e)?);
            }
            Event::Empty(e) => {
                let el = element(ns, &e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("an end tag without a start tag")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t.decode().map_err(|e| e.to_string())?);
                } else if !t.decode().map_err(|e| e.to_string())?.trim().is_empty() {
                    return Err(format!("text outside the root element (near byte {pos})"));
                }
            }
            Event::CData(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t.decode().map_err(|e| e.to_string())?);
                }
            }
            Event::GeneralRef(r) => {
                let name = r.decode().map_err(|e| e.to_string())?;
                let resolved = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| format!("unknown entity `&{name};` (near byte {pos})"))?
                        .to_string(),
                };
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(format!(
            "the document ends inside `<{}>`",
            stack.last().map(|e| e.name.as_str()).unwrap_or("")
        ));
    }
    root.ok_or_else(|| "no root element".to_string())
}

fn element(ns: Option<String>, e: &quick_xml::events::BytesStart<'_>) -> Result<El, String> {
    // Attributes carry nothing CAP needs; they are not read.
    Ok(El {
        ns,
        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
        ..El::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_tree_with_namespaces_and_entities() {
        let doc = r#"<a xmlns="urn:x" xmlns:p="urn:p"><p:b k="v">1 &amp; 2 &#x41;</p:b><c/></a>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.ns.as_deref(), Some("urn:x"));
        let b = root.child("b").unwrap();
        assert_eq!(b.ns.as_deref(), Some("urn:p"));
        assert_eq!(b.text, "1 & 2 A");
        assert!(root.child("c").is_some());
    }

    #[test]
    fn refuses_broken_documents() {
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a>").is_err());
        assert!(parse("").is_err());
        assert!(parse("<a/><b/>").is_err());
    }
}
