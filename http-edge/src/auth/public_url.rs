//! The public URL a carrier called, rebuilt behind ingresses and proxies: Twilio signs it and
//! MessageBird's JWT hashes it, so both verifiers take it from here and nowhere else.
//!
//! Which URL is used, in order:
//! 1. the TCP peer is a trusted proxy (`--trusted-proxies`) and it names the host it was asked
//!    for (`Forwarded: host=` or `X-Forwarded-Host`): `{proto}://{host}` + path + query, the
//!    proto from `Forwarded: proto=` or `X-Forwarded-Proto`, else the base URL's scheme, else
//!    `http`;
//! 2. the configured public base URL (`--public-base-url`) + path + query;
//! 3. a trusted peer that names only the proto: `{proto}://{Host}` + path + query;
//! 4. otherwise `http://{Host}` + path + query (start-up refuses this for signature schemes
//!    that cover the URL, so it only happens when no such scheme is configured).
//!
//! The path and query are the request target exactly as received, byte for byte. From a peer
//! that is not a trusted proxy, forwarding headers are ignored.
//!
//! The same trust decides the client address that per-client limits are keyed by
//! ([`PublicUrl::client_ip`]): the TCP peer, or, behind trusted proxies, the address they recorded
//! in `Forwarded: for=` / `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

use super::{AuthError, Incoming};

/// How to rebuild the public URL of a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicUrl {
    /// `scheme://[userinfo@]host[:port][/prefix]`, without a trailing `/`.
    base: Option<String>,
    trusted: Vec<IpNet>,
}

impl PublicUrl {
    /// Validated settings: `base` is `--public-base-url`, `trusted_proxies` the comma-separated
    /// addresses or CIDR ranges of `--trusted-proxies`. Lists every problem.
    pub fn new(base: Option<&str>, trusted_proxies: Option<&str>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let base = match base.map(str::trim).filter(|b| !b.is_empty()) {
            None => None,
            Some(b) => match parse_base(b) {
                Ok(b) => Some(b),
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
        };
        let mut trusted = Vec::new();
        for item in trusted_proxies
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match parse_net(item) {
                Some(net) => trusted.push(net),
                None => problems.push(format!(
                    "--trusted-proxies: {item:?} is not an IP address or CIDR range"
                )),
            }
        }
        if problems.is_empty() {
            Ok(Self { base, trusted })
        } else {
            Err(problems)
        }
    }

    /// Whether the public URL comes from configuration (a base URL or trusted proxies) rather
    /// than from the request's own `Host` header.
    pub fn is_configured(&self) -> bool {
        self.base.is_some() || !self.trusted.is_empty()
    }

    /// The full URL `incoming` was sent to, as the carrier saw it.
    pub fn url_for(&self, incoming: &Incoming) -> Result<String, AuthError> {
        let target = incoming.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let trusted = self.is_trusted(incoming.peer.ip());
        let forwarded = if trusted {
            Forwarded::from_headers(&incoming.headers)
        } else {
            Forwarded::default()
        };
        // A configured base URL wins: forwarding headers can carry what a client wrote, and
        // must not re-point a signature at another host that shares the token.
        let origin = match (&forwarded.host, &self.base, &forwarded.proto) {
            (_, Some(base), _) => base.clone(),
            (Some(host), None, proto) => {
                let scheme = proto
                    .as_deref()
                    .or_else(|| {
                        self.base
                            .as_deref()
                            .and_then(|b| b.split_once("://"))
                            .map(|(s, _)| s)
                    })
                    .unwrap_or("http");
                format!("{scheme}://{host}")
            }
            (None, None, proto) => {
                let host = request_host(incoming).ok_or(AuthError::Missing(
                    "no Host header to rebuild the signed URL",
                ))?;
                format!("{}://{host}", proto.as_deref().unwrap_or("http"))
            }
        };
        Ok(format!("{origin}{target}"))
    }

    /// The settings for the start-up log: the base URL without any credentials in it, and the
    /// trusted proxies.
    pub fn describe(&self) -> String {
        let base = match &self.base {
            Some(b) => format!("public URL {}", redact_userinfo(b)),
            None => "public URL from the Host header (no --public-base-url)".to_owned(),
        };
        if self.trusted.is_empty() {
            base
        } else {
            let nets: Vec<String> = self.trusted.iter().map(ToString::to_string).collect();
            format!(
                "{base}; forwarding headers trusted from {}",
                nets.join(", ")
            )
        }
    }

    /// The address of the client that made a call: the TCP `peer`, unless it is a trusted proxy.
    /// Then the forwarding chain (`Forwarded: for=`, else `X-Forwarded-For`) is walked from the
    /// right, past every trusted proxy, to the first address no trusted proxy vouches for; an
    /// entry that is not an address (`unknown`, an obfuscated name) stops the walk at the proxy
    /// that wrote it. Entries left of that are whatever the client claimed, and never count.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.ip().to_canonical();
        if !self.is_trusted(client) {
            return client;
        }
        let from_forwarded = list_header(headers, "forwarded")
            .map(|v| {
                forwarded_elements(&v)
                    .iter()
                    .map(|pairs| param(pairs, "for").map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .filter(|chain| chain.iter().any(Option::is_some));
        let chain = from_forwarded.unwrap_or_else(|| {
            list_header(headers, "x-forwarded-for")
                .map(|v| v.split(',').map(|i| Some(i.trim().to_owned())).collect())
                .unwrap_or_default()
        });
        for hop in chain.iter().rev() {
            match hop.as_deref().and_then(node_ip) {
                Some(ip) if self.is_trusted(ip) => client = ip,
                Some(ip) => return ip,
                None => break,
            }
        }
        client
    }

    fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|net| net.contains(&peer))
    }
}

/// Every value of the list-valued header `name`, joined as one list: several header lines mean
/// the same as one comma-separated line (RFC 9110 5.3), and the line a proxy appended is not
/// always the first one.
fn list_header(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// An address as a forwarding header names a node: `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`. Anything else (`unknown`, `_hidden`) is not an address.
fn node_ip(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !after.is_empty() && !after.starts_with(':') {
            return None;
        }
        return v6
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    node.parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

/// `http(s)://[userinfo@]host[:port][/prefix]`, kept verbatim but for trailing slashes.
fn parse_base(base: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "--public-base-url must be http(s)://host[:port][/prefix] ({why}): {}",
            redact_userinfo(base)
        )
    };
    let (scheme, rest) = base.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(bad("scheme is not http or https"));
    }
    if base.contains(['?', '#']) || base.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("no query, fragment or spaces allowed"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("no host"));
    }
    Ok(base.trim_end_matches('/').to_owned())
}

/// An address (`10.0.0.7`, `::1`) or a CIDR range (`10.0.0.0/8`).
pub(crate) fn parse_net(item: &str) -> Option<IpNet> {
    item.parse::<IpNet>()
        .ok()
        .or_else(|| item.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|net| match net {
            // A v4-mapped v6 range matches nothing after canonicalisation; take its v4 form.
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) if v6.prefix_len() >= 96 => {
                    ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4)
                }
                _ => net,
            },
            v4 => v4,
        })
}

/// `user:password@` replaced by `***@`, for logs and error messages.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The host the client asked for: the request target's authority (HTTP/2, absolute form), else
/// the `Host` header.
fn request_host(incoming: &Incoming) -> Option<String> {
    if let Some(authority) = incoming.uri.authority() {
        return Some(authority.as_str().to_owned());
    }
    incoming
        .header("host")
        .map(str::trim)
        .filter(|h| valid_host(h))
        .map(str::to_owned)
}

/// What a trusted proxy says about the original request.
#[derive(Debug, Default, PartialEq, Eq)]
struct Forwarded {
    proto: Option<String>,
    host: Option<String>,
}

impl Forwarded {
    /// `Forwarded` (RFC 7239) first, `X-Forwarded-*` for what it leaves out; in each, the last
    /// (rightmost) entry: the one the trusted proxy in front of us appended. Earlier entries are
    /// whatever the client sent.
    fn from_headers(headers: &HeaderMap) -> Self {
        let mut out = list_header(headers, "forwarded")
            .map(|v| parse_forwarded(&v))
            .unwrap_or_default();
        if out.proto.is_none() {
            out.proto =
                list_header(headers, "x-forwarded-proto").and_then(|v| valid_proto(last_item(&v)));
        }
        if out.host.is_none() {
            out.host = list_header(headers, "x-forwarded-host")
                .filter(|v| valid_host(last_item(v)))
                .map(|v| last_item(&v).to_owned());
        }
        out
    }
}

fn last_item(value: &str) -> &str {
    value.rsplit(',').next().unwrap_or("").trim()
}

fn valid_proto(proto: &str) -> Option<String> {
    let proto = proto.trim();
    (proto.eq_ignore_ascii_case("http") || proto.eq_ignore_ascii_case("https"))
        .then(|| proto.to_ascii_lowercase())
}

/// A host with an optional port: no spaces, slashes, or other URL delimiters.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\' | b','))
}

/// The elements of a `Forwarded` header, each its `name=value` pairs with quotes removed. Values
/// may be quoted strings (required for `host="example.com:8443"`); commas and semicolons inside
/// quotes do not split.
fn forwarded_elements(value: &str) -> Vec<Vec<String>> {
    let mut elements = Vec::new();
    let mut pairs = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if quoted {
            match (escaped, c) {
                (true, _) => {
                    current.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                (false, _) => current.push(c),
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ';' => pairs.push(std::mem::take(&mut current)),
            ',' => {
                pairs.push(std::mem::take(&mut current));
                elements.push(std::mem::take(&mut pairs));
            }
            _ => current.push(c),
        }
    }
    pairs.push(current);
    elements.push(pairs);
    elements
}

/// The value of parameter `name` (case-insensitive) among an element's pairs; the first wins.
fn param<'a>(pairs: &'a [String], name: &str) -> Option<&'a str> {
    pairs.iter().find_map(|pair| {
        let (n, v) = pair.split_once('=')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v)
    })
}

/// The `proto` and `host` of the last element of a `Forwarded` header: the one the trusted proxy
/// in front of us appended.
fn parse_forwarded(value: &str) -> Forwarded {
    let elements = forwarded_elements(value);
    let last = elements.last().map(Vec::as_slice).unwrap_or_default();
    Forwarded {
        proto: param(last, "proto").and_then(valid_proto),
        host: param(last, "host")
            .map(str::trim)
            .filter(|h| valid_host(h))
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::incoming;

    fn from(peer: &str, uri: &str, headers: &[(&str, &str)]) -> Incoming {
        let mut req = incoming(uri, headers, b"");
        req.peer = peer.parse().unwrap();
        req
    }

    #[test]
    fn base_url_plus_raw_target() {
        let p = PublicUrl::new(Some("https://hooks.example.com/"), None).unwrap();
        let req = from(
            "10.0.0.9:1",
            "/twilio?b=2&a=%2B1&c='x'",
            &[("host", "edge.internal:8080")],
        );
        assert_eq!(
            p.url_for(&req).unwrap(),
            "https://hooks.example.com/twilio?b=2&a=%2B1&c='x'"
        );
        let p = PublicUrl::new(Some("https://hooks.example.com:8443/sms"), None).unwrap();
        assert_eq!(
            p.url_for(&req).unwrap(),
            "https://hooks.example.com:8443/sms/twilio?b=2&a=%2B1&c='x'"
        );
    }

    #[test]
    fn forwarding_headers_only_from_trusted_peers() {
        // The client wrote the first entry; the trusted proxy appended the last.
        let headers = [
            ("host", "edge.internal:8080"),
            ("x-forwarded-proto", "http, https"),
            ("x-forwarded-host", "spoofed.example, public.example.com"),
        ];
        let with_base = PublicUrl::new(
            Some("https://hooks.example.com"),
            Some("10.0.0.0/8, 192.168.1.1"),
        )
        .unwrap();
        // A configured base URL wins over any forwarding header.
        let trusted = from("10.1.2.3:5", "/twilio?x=1", &headers);
        assert_eq!(
            with_base.url_for(&trusted).unwrap(),
            "https://hooks.example.com/twilio?x=1"
        );
        let p = PublicUrl::new(None, Some("10.0.0.0/8, 192.168.1.1")).unwrap();
        assert_eq!(
            p.url_for(&trusted).unwrap(),
            "https://public.example.com/twilio?x=1"
        );
        let mapped = from("[::ffff:192.168.1.1]:5", "/twilio?x=1", &headers);
        assert_eq!(
            p.url_for(&mapped).unwrap(),
            "https://public.example.com/twilio?x=1"
        );
        let untrusted = from("172.16.0.1:5", "/twilio?x=1", &headers);
        assert_eq!(
            with_base.url_for(&untrusted).unwrap(),
            "https://hooks.example.com/twilio?x=1"
        );
        // No base: the untrusted peer gets the Host header over http, whatever it claims.
        let p = PublicUrl::new(None, Some("10.0.0.0/8")).unwrap();
        assert_eq!(
            p.url_for(&untrusted).unwrap(),
            "http://edge.internal:8080/twilio?x=1"
        );
        // A trusted peer naming only the proto keeps the Host header.
        let proto_only = from(
            "10.1.2.3:5",
            "/t",
            &[
                ("host", "public.example.com"),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert_eq!(
            p.url_for(&proto_only).unwrap(),
            "https://public.example.com/t"
        );
    }

    #[test]
    fn rfc7239_forwarded_last_element_wins_and_is_parsed_with_quotes() {
        let p = PublicUrl::new(None, Some("127.0.0.1")).unwrap();
        let req = from(
            "127.0.0.1:5",
            "/mb",
            &[
                ("host", "edge"),
                (
                    "forwarded",
                    r#"for=1.2.3.4;host=spoofed.example, for=5.6.7.8;proto=https;host="pub.example.com:8443""#,
                ),
                ("x-forwarded-host", "ignored.example"),
            ],
        );
        assert_eq!(p.url_for(&req).unwrap(), "https://pub.example.com:8443/mb");
        assert_eq!(
            parse_forwarded("For=x;Host=a.example;Proto=HTTP"),
            Forwarded {
                proto: Some("http".into()),
                host: Some("a.example".into())
            }
        );
        assert_eq!(
            parse_forwarded("proto=ftp;host=\"a b\""),
            Forwarded::default()
        );
    }

    #[test]
    fn host_header_fallback_and_missing_host() {
        let p = PublicUrl::default();
        assert!(!p.is_configured());
        let req = from("1.1.1.1:1", "/x", &[("host", "h.example:81")]);
        assert_eq!(p.url_for(&req).unwrap(), "http://h.example:81/x");
        let req = from("1.1.1.1:1", "/x", &[]);
        assert!(matches!(p.url_for(&req), Err(AuthError::Missing(_))));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn client_ip_believes_only_what_trusted_proxies_recorded() {
        let p = PublicUrl::new(None, Some("10.0.0.0/8, 192.168.1.1")).unwrap();
        let ip = |peer: &str, h: &[(&str, &str)]| {
            p.client_ip(peer.parse().unwrap(), &headers(h)).to_string()
        };
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            ip("203.0.113.5:1", &[("x-forwarded-for", "1.1.1.1")]),
            "203.0.113.5"
        );
        assert_eq!(
            ip("203.0.113.5:1", &[("forwarded", "for=1.1.1.1")]),
            "203.0.113.5"
        );
        // A trusted proxy: the entry it appended (the rightmost), not the client's own claims.
        assert_eq!(
            ip(
                "10.0.0.2:1",
                &[("x-forwarded-for", "6.6.6.6, 198.51.100.7")]
            ),
            "198.51.100.7"
        );
        // Two trusted hops (CDN → ingress): walk past both.
        assert_eq!(
            ip(
                "10.0.0.2:1",
                &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 192.168.1.1")]
            ),
            "198.51.100.7"
        );
        // Several header lines are one list; the last line is the proxy's.
        assert_eq!(
            ip(
                "10.0.0.2:1",
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "198.51.100.8")
                ]
            ),
            "198.51.100.8"
        );
        // RFC 7239, with ports and IPv6; Forwarded wins over X-Forwarded-For.
        assert_eq!(
            ip(
                "10.0.0.2:1",
                &[
                    (
                        "forwarded",
                        r#"for=6.6.6.6, for="[2001:db8::17]:4711";proto=https"#
                    ),
                    ("x-forwarded-for", "198.51.100.9"),
                ]
            ),
            "2001:db8::17"
        );
        assert_eq!(
            ip("10.0.0.2:1", &[("forwarded", "for=198.51.100.10:80")]),
            "198.51.100.10"
        );
        assert_eq!(
            ip(
                "[::ffff:10.0.0.2]:1",
                &[("x-forwarded-for", "::ffff:198.51.100.11")]
            ),
            "198.51.100.11"
        );
        // Not an address: the proxy that wrote it is the best we know.
        assert_eq!(
            ip("10.0.0.2:1", &[("forwarded", "for=unknown")]),
            "10.0.0.2"
        );
        assert_eq!(
            ip("10.0.0.2:1", &[("x-forwarded-for", "6.6.6.6, _hidden")]),
            "10.0.0.2"
        );
        // A trusted peer that forwards nothing is itself the client.
        assert_eq!(ip("10.0.0.2:1", &[]), "10.0.0.2");
    }

    #[test]
    fn forwarding_headers_on_several_lines_are_one_list() {
        let p = PublicUrl::new(None, Some("10.0.0.0/8")).unwrap();
        let req = from(
            "10.1.2.3:5",
            "/t",
            &[
                ("host", "edge"),
                ("x-forwarded-host", "spoofed.example"),
                ("x-forwarded-host", "public.example.com"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert_eq!(p.url_for(&req).unwrap(), "https://public.example.com/t");
    }

    #[test]
    fn configuration_is_validated_and_never_prints_credentials() {
        for bad in [
            "hooks.example.com",
            "ftp://hooks.example.com",
            "https://",
            "https://:443",
            "https://h.example/?a=1",
            "https://h.example/#f",
            "https://h .example",
        ] {
            assert!(PublicUrl::new(Some(bad), None).is_err(), "{bad}");
        }
        let err =
            PublicUrl::new(Some("https://user:s3cret@"), Some("10.0.0.0/33,nope")).unwrap_err();
        assert_eq!(err.len(), 3, "{err:?}");
        assert!(!err.iter().any(|e| e.contains("s3cret")), "{err:?}");
        let p = PublicUrl::new(
            Some("HTTPS://user:s3cret@h.example"),
            Some("::1, 10.0.0.0/8"),
        )
        .unwrap();
        assert!(p.is_configured());
        let d = p.describe();
        assert!(
            !d.contains("s3cret") && d.contains("HTTPS://***@h.example"),
            "{d}"
        );
        assert!(d.contains("10.0.0.0/8") && d.contains("::1/128"), "{d}");
        assert!(
            PublicUrl::new(None, Some("::ffff:10.0.0.0/104"))
                .unwrap()
                .is_trusted("10.2.3.4".parse().unwrap())
        );
    }
}
