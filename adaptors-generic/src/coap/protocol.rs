//! pyaiot's CoAP node protocol as text: alive and value messages, link-format discovery; plus
//! the few CoAP message checks the gateway makes. Pure. Values as thing data and names as
//! namespace parts are [`crate::pyaiot::value`]'s, re-exported here.

use coap_lite::{CoapOption, MessageClass, Packet};

// Values and names are the same for every pyaiot gateway: one module, shared.
pub use crate::pyaiot::value::{node_part, parse_value, put_payload, resource_part, to_part};

/// What a node said on `/alive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alive {
    /// `Alive:<uid>`, about every 30 s.
    Alive(String),
    /// `reset:<uid>` after a reboot: forget its cached values, keep the node.
    Reset(String),
}

/// Reads an `/alive` payload (`Alive:<uid>` or `reset:<uid>`, any case).
pub fn parse_alive(payload: &str) -> Option<Alive> {
    let (kind, uid) = payload.trim().split_once(':')?;
    let uid = uid.trim();
    if uid.is_empty() {
        return None;
    }
    match kind.trim().to_ascii_lowercase().as_str() {
        "alive" => Some(Alive::Alive(uid.to_owned())),
        "reset" => Some(Alive::Reset(uid.to_owned())),
        _ => None,
    }
}

/// Reads a `/server` payload, `<resource>:<value>`.
pub fn parse_server(payload: &str) -> Option<(&str, &str)> {
    let (resource, value) = payload.split_once(':')?;
    let resource = resource.trim();
    (!resource.is_empty()).then_some((resource, value))
}

/// One link of a node's `/.well-known/core`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The resource's path without the leading `/`, e.g. `temperature` or `sensors/temp`.
    pub path: String,
    /// True when the link carries `obs`: the resource can be observed (RFC 7641).
    pub observable: bool,
}

/// The node's own resources in a link-format (RFC 6690) document: absolute URIs, links with
/// `rel="impl-info"` and `/.well-known/core` itself are left out.
pub fn parse_links(text: &str) -> Vec<Link> {
    let mut out = Vec::new();
    for link in split_links(text) {
        let link = link.trim();
        let Some(rest) = link.strip_prefix('<') else {
            continue;
        };
        let Some((target, attrs)) = rest.split_once('>') else {
            continue;
        };
        if target.contains("://") || !target.starts_with('/') {
            continue;
        }
        let attrs: Vec<&str> = attrs
            .split(';')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        let rel_impl_info = attrs.iter().any(|a| {
            a.strip_prefix("rel=")
                .is_some_and(|v| v.trim_matches('"').split(' ').any(|r| r == "impl-info"))
        });
        let path = target.trim_start_matches('/').to_owned();
        if rel_impl_info || path.is_empty() || path == ".well-known/core" {
            continue;
        }
        let observable = attrs.iter().any(|a| *a == "obs" || a.starts_with("obs="));
        out.push(Link { path, observable });
    }
    out
}

/// Splits at the commas between links, not those inside quoted attribute values.
fn split_links(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// A response code as text, `2.05`.
pub fn code_text(c: MessageClass) -> String {
    let raw: u8 = c.into();
    format!("{}.{:02}", raw >> 5, raw & 0x1f)
}

/// Options this adaptor understands; an unknown critical (odd) one makes a request unusable.
pub fn known_option(n: u16) -> bool {
    matches!(
        n,
        1 | 3 | 4 | 5 | 6 | 7 | 8 | 11 | 12 | 14 | 15 | 17 | 20 | 23 | 27 | 28 | 35 | 39 | 60 | 258
    )
}

/// True when a request carries a critical (odd-numbered) option this adaptor does not know.
pub fn has_unknown_critical_option(p: &Packet) -> bool {
    p.options().any(|(n, _)| n % 2 == 1 && !known_option(*n))
}

/// A CoAP message, if it is one: the codec's checks plus what RFC 7252 also requires (version
/// 1; a payload marker is followed by a payload).
pub fn well_formed(bytes: &[u8]) -> Option<Packet> {
    if bytes.first().is_none_or(|b| b >> 6 != 1) {
        return None;
    }
    let p = Packet::from_bytes(bytes).ok()?;
    if p.payload.is_empty() && bytes.len() > 4 + p.get_token().len() && bytes.last() == Some(&0xff)
    {
        return None;
    }
    Some(p)
}

/// The request's Uri-Path options joined with `/`: `sensors/temp`.
pub fn uri_path(p: &Packet) -> String {
    p.get_option(CoapOption::UriPath)
        .map(|parts| {
            parts
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_and_server_payloads() {
        assert_eq!(parse_alive("Alive:1234"), Some(Alive::Alive("1234".into())));
        assert_eq!(parse_alive("reset:abc"), Some(Alive::Reset("abc".into())));
        assert_eq!(parse_alive("ALIVE: x "), Some(Alive::Alive("x".into())));
        assert_eq!(parse_alive("Alive:"), None);
        assert_eq!(parse_alive("hello"), None);
        assert_eq!(
            parse_server("temperature:23°C"),
            Some(("temperature", "23°C"))
        );
        assert_eq!(
            parse_server(r#"imu:[{"a":1}]"#),
            Some(("imu", r#"[{"a":1}]"#))
        );
        assert_eq!(parse_server(":x"), None);
    }

    #[test]
    fn links_keep_the_nodes_own_resources() {
        let links = parse_links(
            r#"</.well-known/core>;ct=40,</temperature>;rt="temperature";obs,</led>;rt="led, light",</board>,<http://riot-os.org>;rel="impl-info",</x>;rel="impl-info alternate",<coap://other/y>"#,
        );
        assert_eq!(
            links,
            [
                Link {
                    path: "temperature".into(),
                    observable: true
                },
                Link {
                    path: "led".into(),
                    observable: false
                },
                Link {
                    path: "board".into(),
                    observable: false
                },
            ]
        );
        assert!(parse_links("garbage").is_empty());
    }

    #[test]
    fn messages_codes_and_options() {
        use coap_lite::{MessageType, RequestType, ResponseType};
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(RequestType::Post);
        p.add_option(CoapOption::UriPath, b"sensors".to_vec());
        p.add_option(CoapOption::UriPath, b"temp".to_vec());
        p.payload = b"x".to_vec();
        let bytes = p.to_bytes().unwrap();
        let back = well_formed(&bytes).unwrap();
        assert_eq!(uri_path(&back), "sensors/temp");
        assert!(!has_unknown_critical_option(&back));
        // Version 2, nothing at all, and a payload marker with no payload are not CoAP.
        let mut v2 = bytes.clone();
        v2[0] = (v2[0] & 0x3f) | 0x80;
        assert!(well_formed(&v2).is_none());
        assert!(well_formed(&[]).is_none());
        let mut marker = Packet::new();
        marker.header.message_id = 7;
        let mut m = marker.to_bytes().unwrap();
        m.push(0xff);
        assert!(well_formed(&m).is_none());
        let mut odd = Packet::new();
        odd.add_option(CoapOption::Unknown(9), vec![1]);
        assert!(has_unknown_critical_option(&odd));
        let mut even = Packet::new();
        even.add_option(CoapOption::Unknown(10), vec![1]);
        assert!(!has_unknown_critical_option(&even));
        assert_eq!(
            code_text(MessageClass::Response(ResponseType::Content)),
            "2.05"
        );
        assert_eq!(
            code_text(MessageClass::Response(ResponseType::NotFound)),
            "4.04"
        );
    }
}
