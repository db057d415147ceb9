//! FETCH (RFC 3501 §6.4.5, §7.4.2): which data a request needs and how each item is written.
//!
//! [`Plan`] decides up front whether bodies must be read at all: FLAGS, UID, RFC822.SIZE and
//! INTERNALDATE come from the folder index alone, so fetching them for thousands of messages
//! never touches a message body.

use std::borrow::Cow;

use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItemName, Section,
};
use mail_parser::Message;

use crate::mime;
use crate::selected::Entry;
use crate::wire;

pub struct Plan {
    pub items: Vec<MessageDataItemName<'static>>,
    /// Some item needs the message text.
    pub needs_body: bool,
    /// Some item needs the MIME parse (ENVELOPE, BODYSTRUCTURE, part sections).
    pub needs_parse: bool,
    /// Some item is a non-PEEK body fetch, which sets \Seen (RFC 3501 §6.4.5).
    pub sets_seen: bool,
}

pub fn plan(names: MacroOrMessageDataItemNames<'static>, uid_command: bool) -> Plan {
    use MessageDataItemName as N;
    let mut items = match names {
        MacroOrMessageDataItemNames::Macro(m) => match m {
            Macro::Fast => vec![N::Flags, N::InternalDate, N::Rfc822Size],
            Macro::All => vec![N::Flags, N::InternalDate, N::Rfc822Size, N::Envelope],
            Macro::Full => vec![
                N::Flags,
                N::InternalDate,
                N::Rfc822Size,
                N::Envelope,
                N::Body,
            ],
            _ => vec![N::Flags, N::InternalDate, N::Rfc822Size],
        },
        MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
    };
    // A UID command always reports the UID (RFC 3501 §6.4.8), first so clients find it early.
    if uid_command && !items.contains(&N::Uid) {
        items.insert(0, N::Uid);
    }
    let mut p = Plan {
        items,
        needs_body: false,
        needs_parse: false,
        sets_seen: false,
    };
    for item in &p.items {
        match item {
            N::Envelope | N::BodyStructure | N::Body => {
                p.needs_body = true;
                p.needs_parse = true;
            }
            N::Rfc822 | N::Rfc822Text => {
                p.needs_body = true;
                p.sets_seen = true;
            }
            N::Rfc822Header => p.needs_body = true,
            N::BodyExt { section, peek, .. } => {
                p.needs_body = true;
                p.sets_seen |= !*peek;
                p.needs_parse |= section_has_part(section);
            }
            _ => {}
        }
    }
    p
}

fn section_has_part(section: &Option<Section<'_>>) -> bool {
    matches!(
        section,
        Some(Section::Part(_))
            | Some(Section::Header(Some(_)))
            | Some(Section::HeaderFields(Some(_), _))
            | Some(Section::HeaderFieldsNot(Some(_), _))
            | Some(Section::Text(Some(_)))
            | Some(Section::Mime(_))
    )
}

fn part_path(p: &imap_codec::imap_types::fetch::Part) -> Vec<u32> {
    p.0.as_ref().iter().map(|n| n.get()).collect()
}

fn path_prefix(p: &Option<imap_codec::imap_types::fetch::Part>) -> String {
    match p {
        Some(p) => {
            let mut s: String = part_path(p)
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(".");
            s.push('.');
            s
        }
        None => String::new(),
    }
}

fn field_names<'a>(names: &'a [imap_codec::imap_types::core::AString<'a>]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_ref().to_vec()).collect()
}

/// The section text as echoed in the response, e.g. `1.2.HEADER.FIELDS (SUBJECT FROM)`.
fn section_name(section: &Option<Section<'_>>) -> Vec<u8> {
    let mut out = Vec::new();
    match section {
        None => {}
        Some(Section::Part(p)) => out.extend_from_slice(
            path_prefix(&Some(p.clone()))
                .trim_end_matches('.')
                .as_bytes(),
        ),
        Some(Section::Header(p)) => {
            out.extend_from_slice(format!("{}HEADER", path_prefix(p)).as_bytes())
        }
        Some(Section::Text(p)) => {
            out.extend_from_slice(format!("{}TEXT", path_prefix(p)).as_bytes())
        }
        Some(Section::Mime(p)) => {
            out.extend_from_slice(format!("{}MIME", path_prefix(&Some(p.clone()))).as_bytes())
        }
        Some(Section::HeaderFields(p, names)) | Some(Section::HeaderFieldsNot(p, names)) => {
            let not = matches!(section, Some(Section::HeaderFieldsNot(..)));
            out.extend_from_slice(path_prefix(p).as_bytes());
            out.extend_from_slice(if not {
                b"HEADER.FIELDS.NOT ("
            } else {
                b"HEADER.FIELDS ("
            });
            for (i, n) in names.as_ref().iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                wire::mailbox(
                    &mut out,
                    &String::from_utf8_lossy(n.as_ref()).to_ascii_uppercase(),
                );
            }
            out.push(b')');
        }
    }
    out
}

/// The octets of a section; `None` when it names a part the message does not have.
fn section_data<'a>(
    raw: &'a [u8],
    parsed: Option<&'a Message<'a>>,
    section: &Option<Section<'_>>,
) -> Option<Cow<'a, [u8]>> {
    let attached_raw = |p: &imap_codec::imap_types::fetch::Part| -> Option<&'a [u8]> {
        let loc = mime::locate(parsed?, &part_path(p))?;
        Some(mime::attached(&loc)?.raw_message())
    };
    Some(match section {
        None => Cow::Borrowed(raw),
        Some(Section::Header(None)) => Cow::Borrowed(&raw[..mime::header_end(raw)]),
        Some(Section::Text(None)) => Cow::Borrowed(&raw[mime::header_end(raw)..]),
        Some(Section::HeaderFields(p, names)) | Some(Section::HeaderFieldsNot(p, names)) => {
            let not = matches!(section, Some(Section::HeaderFieldsNot(..)));
            let msg = match p {
                None => raw,
                Some(p) => attached_raw(p)?,
            };
            Cow::Owned(mime::header_fields(
                &msg[..mime::header_end(msg)],
                &field_names(names.as_ref()),
                not,
            ))
        }
        Some(Section::Header(Some(p))) => {
            let m = attached_raw(p)?;
            Cow::Borrowed(&m[..mime::header_end(m)])
        }
        Some(Section::Text(Some(p))) => {
            let m = attached_raw(p)?;
            Cow::Borrowed(&m[mime::header_end(m)..])
        }
        Some(Section::Part(p)) => {
            let loc = mime::locate(parsed?, &part_path(p))?;
            Cow::Borrowed(mime::part_body(&loc))
        }
        Some(Section::Mime(p)) => {
            let loc = mime::locate(parsed?, &part_path(p))?;
            Cow::Borrowed(mime::part_mime(&loc))
        }
    })
}

/// Writes `* seq FETCH (...)` for one message. `raw` is `None` when the body was not needed
/// (or the message vanished meanwhile: body items are then NIL).
pub fn render(
    out: &mut Vec<u8>,
    seq: usize,
    entry: &Entry,
    plan: &Plan,
    raw: Option<&[u8]>,
    parsed: Option<&Message<'_>>,
    flags_changed: bool,
) {
    use MessageDataItemName as N;
    out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b' ');
        }
        first = false;
    };
    let mut flags_written = false;
    for item in &plan.items {
        sep(out);
        match item {
            N::Uid => out.extend_from_slice(format!("UID {}", entry.uid).as_bytes()),
            N::Flags => {
                out.extend_from_slice(b"FLAGS ");
                wire::flag_list(out, &entry.flags, entry.recent);
                flags_written = true;
            }
            N::Rfc822Size => {
                out.extend_from_slice(format!("RFC822.SIZE {}", entry.size).as_bytes())
            }
            N::InternalDate => {
                out.extend_from_slice(b"INTERNALDATE ");
                out.extend_from_slice(wire::internal_date(entry.date).as_bytes());
            }
            N::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                mime::envelope(out, parsed);
            }
            N::BodyStructure | N::Body => {
                let extended = matches!(item, N::BodyStructure);
                out.extend_from_slice(if extended {
                    b"BODYSTRUCTURE "
                } else {
                    b"BODY "
                });
                mime::body_structure(out, parsed, raw.unwrap_or_default(), extended);
            }
            N::Rfc822 => {
                out.extend_from_slice(b"RFC822 ");
                wire::nstring(out, raw);
            }
            N::Rfc822Header => {
                out.extend_from_slice(b"RFC822.HEADER ");
                wire::nstring(out, raw.map(|r| &r[..mime::header_end(r)]));
            }
            N::Rfc822Text => {
                out.extend_from_slice(b"RFC822.TEXT ");
                wire::nstring(out, raw.map(|r| &r[mime::header_end(r)..]));
            }
            N::BodyExt {
                section, partial, ..
            } => {
                out.extend_from_slice(b"BODY[");
                out.extend_from_slice(&section_name(section));
                out.push(b']');
                let data =
                    raw.map(|r| section_data(r, parsed, section).unwrap_or(Cow::Borrowed(b"")));
                match (data, partial) {
                    (Some(d), Some((start, len))) => {
                        out.extend_from_slice(format!("<{start}> ").as_bytes());
                        let s = (*start as usize).min(d.len());
                        let e = s.saturating_add(len.get() as usize).min(d.len());
                        wire::literal(out, &d[s..e]);
                    }
                    (Some(d), None) => {
                        out.push(b' ');
                        wire::literal(out, &d);
                    }
                    (None, _) => out.extend_from_slice(b" NIL"),
                }
            }
        }
    }
    if flags_changed && !flags_written {
        // \Seen was set as a side effect: tell the client (RFC 3501 §6.4.5).
        sep(out);
        out.extend_from_slice(b"FLAGS ");
        wire::flag_list(out, &entry.flags, entry.recent);
    }
    out.extend_from_slice(b")\r\n");
}
