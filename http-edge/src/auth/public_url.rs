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

use std::net::IpAddr;

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
            Forwarded::from_headers(incoming)
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

    fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|net| net.contains(&peer))
    }
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
fn parse_net(item: &str) -> Option<IpNet> {
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
    fn from_headers(incoming: &Incoming) -> Self {
        let mut out = incoming
            .header("forwarded")
            .map(parse_forwarded)
            .unwrap_or_default();
        if out.proto.is_none() {
            out.proto = incoming
                .header("x-forwarded-proto")
                .and_then(|v| valid_proto(last_item(v)));
        }
        if out.host.is_none() {
            out.host = incoming
                .header("x-forwarded-host")
                .map(last_item)
                .filter(|h| valid_host(h))
                .map(str::to_owned);
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

/// The `proto` and `host` of the last element of a `Forwarded` header. Values may be quoted
/// strings (required for `host="example.com:8443"`); commas and semicolons inside quotes do not
/// split.
fn parse_forwarded(value: &str) -> Forwarded {
    let mut out = Forwarded::default();
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
                // A new element: only the last one counts.
                pairs.clear();
                current.clear();
            }
            _ => current.push(c),
        }
    }
    pairs.push(current);
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("proto") && out.proto.is_none() {
            out.proto = valid_proto(value);
        } else if name.eq_ignore_ascii_case("host") && out.host.is_none() {
            let host = value.trim();
            if valid_host(host) {
                out.host = Some(host.to_owned());
            }
        }
    }
    out
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
