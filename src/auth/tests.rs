use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use ring::hmac;

use super::*;
use crate::config::Secret;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    map
}

fn secrets(values: &[&str]) -> Vec<Secret> {
    values
        .iter()
        .map(|v| Secret::new((*v).to_owned()))
        .collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn cidr(text: &str) -> Cidr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

// Source allow-list

#[test]
fn cidr_parses_ranges_and_single_addresses() {
    assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
    assert_eq!(cidr("198.51.100.7").to_string(), "198.51.100.7/32");
    assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
    assert_eq!(cidr("::1").to_string(), "::1/128");
    assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
}

#[test]
fn cidr_errors_say_what_is_wrong() {
    assert!(matches!(
        "10.0.0/8".parse::<Cidr>(),
        Err(source::InvalidCidr::Syntax(_))
    ));
    assert!(matches!(
        "10.0.0.0/".parse::<Cidr>(),
        Err(source::InvalidCidr::Syntax(_))
    ));
    assert!(matches!(
        "10.0.0.0/+8".parse::<Cidr>(),
        Err(source::InvalidCidr::Syntax(_))
    ));
    assert!(matches!(
        "10.0.0.0/33".parse::<Cidr>(),
        Err(source::InvalidCidr::PrefixTooLong { max: 32, .. })
    ));
    let error = "10.1.2.3/8"
        .parse::<Cidr>()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("did you mean 10.0.0.0/8?"), "{error}");
}

#[test]
fn cidr_contains_by_prefix_and_family() {
    let range = cidr("203.0.113.0/24");
    assert!(range.contains(ip("203.0.113.0")));
    assert!(range.contains(ip("203.0.113.255")));
    assert!(!range.contains(ip("203.0.114.0")));
    assert!(!range.contains(ip("2001:db8::1")));
    // What a dual-stack listener reports for an IPv4 client.
    assert!(range.contains(ip("::ffff:203.0.113.9")));
    assert!(cidr("0.0.0.0/0").contains(ip("192.0.2.1")));
    assert!(cidr("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
    assert!(!cidr("2001:db8::/32").contains(ip("2001:db9::1")));
}

fn filter(allow: &[&str], trusted: &[&str]) -> SourceFilter {
    SourceFilter::new(
        allow.iter().map(|c| cidr(c)).collect(),
        trusted.iter().map(|c| cidr(c)).collect(),
    )
}

#[test]
fn forwarded_for_is_ignored_from_untrusted_peers() {
    let filter = filter(&["203.0.113.0/24"], &["10.0.0.0/8"]);
    let forged = headers(&[("x-forwarded-for", "203.0.113.5")]);
    assert!(!filter.allows(ip("198.51.100.1"), &forged));
    assert!(filter.allows(ip("203.0.113.5"), &HeaderMap::new()));
}

#[test]
fn forwarded_for_is_read_right_to_left_past_trusted_proxies() {
    let filter = filter(&["203.0.113.0/24"], &["10.0.0.0/8"]);
    // The client prepended a forged entry; the proxies appended the truth.
    let chain = headers(&[("x-forwarded-for", "203.0.113.5, 198.51.100.9, 10.0.0.2")]);
    assert_eq!(
        filter.client(ip("10.0.0.1"), &chain),
        Some(ip("198.51.100.9"))
    );
    assert!(!filter.allows(ip("10.0.0.1"), &chain));

    let honest = headers(&[("x-forwarded-for", "203.0.113.5, 10.0.0.2")]);
    assert!(filter.allows(ip("10.0.0.1"), &honest));

    // Two headers are one list, in order.
    let split = headers(&[
        ("x-forwarded-for", "198.51.100.9"),
        ("x-forwarded-for", "203.0.113.5"),
    ]);
    assert_eq!(
        filter.client(ip("10.0.0.1"), &split),
        Some(ip("203.0.113.5"))
    );
}

#[test]
fn forwarded_for_with_ports_and_ipv6() {
    let filter = filter(&["203.0.113.0/24", "2001:db8::/32"], &["10.0.0.0/8"]);
    let peer = ip("10.0.0.1");
    for value in [
        "203.0.113.5:4711",
        "[2001:db8::5]:4711",
        "2001:db8::5",
        "::ffff:203.0.113.5",
    ] {
        assert!(
            filter.allows(peer, &headers(&[("x-forwarded-for", value)])),
            "{value}"
        );
    }
}

#[test]
fn unreadable_forwarded_entries_refuse() {
    let filter = filter(&["0.0.0.0/0"], &["10.0.0.0/8"]);
    for value in [
        "unknown",
        "203.0.113.5:port",
        "_hidden",
        "203.0.113.5, bogus",
    ] {
        let map = headers(&[("x-forwarded-for", value)]);
        assert!(!filter.allows(ip("10.0.0.1"), &map), "{value}");
    }
}

#[test]
fn a_trusted_peer_without_forwarded_for_is_the_client() {
    let filter = filter(&["10.0.0.0/8"], &["10.0.0.0/8"]);
    assert!(filter.allows(ip("10.0.0.1"), &HeaderMap::new()));
    let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
    assert_eq!(
        filter.client(ip("10.0.0.1"), &all_trusted),
        Some(ip("10.9.9.9"))
    );
}

// HTTP Basic

fn basic_header(credentials: &str) -> HeaderMap {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    headers(&[("authorization", &format!("Basic {encoded}"))])
}

#[test]
fn basic_accepts_configured_pairs_only() {
    let basic =
        BasicAuth::new(&secrets(&["apizee:pa:ss", "other:word"])).unwrap_or_else(|e| panic!("{e}"));
    assert!(basic.allows(&basic_header("apizee:pa:ss")));
    assert!(basic.allows(&basic_header("other:word")));
    assert!(!basic.allows(&basic_header("apizee:pa")));
    assert!(!basic.allows(&basic_header("apizee:word")));
    assert!(!basic.allows(&basic_header("")));
    assert!(!basic.allows(&HeaderMap::new()));
    assert!(!basic.allows(&headers(&[("authorization", "Basic !!!")])));
    assert!(!basic.allows(&headers(&[("authorization", "Bearer apizee:pa:ss")])));
    // The scheme is case-insensitive.
    let lower = basic_header("other:word");
    let value = lower
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .replace("Basic", "bASIC");
    assert!(basic.allows(&headers(&[("authorization", &value)])));
}

#[test]
fn basic_refuses_unusable_pairs() {
    use basic::InvalidCredentials;
    assert_eq!(
        BasicAuth::new(&secrets(&["nocolon"])).err(),
        Some(InvalidCredentials::MissingColon)
    );
    assert_eq!(
        BasicAuth::new(&secrets(&[":pw"])).err(),
        Some(InvalidCredentials::EmptyUser)
    );
    assert_eq!(
        BasicAuth::new(&secrets(&["user:"])).err(),
        Some(InvalidCredentials::EmptyPassword("user".into()))
    );
    let shown = format!("{:?}", BasicAuth::new(&secrets(&["u:very-secret"])));
    assert!(!shown.contains("very-secret"), "{shown}");
}

// HMAC signatures

const BODY: &[u8] = br#"{"event":"update","time":1,"object":"ticket","objectId":1,"props":{}}"#;

fn mac(key: &str, message: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    hmac::sign(&key, message).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn signature(encoding: SignatureEncoding, keys: &[&str], timestamp: bool) -> Signature {
    Signature::new(
        HeaderName::from_static("x-signature"),
        encoding,
        &secrets(keys),
        timestamp.then(|| {
            (
                HeaderName::from_static("x-timestamp"),
                Duration::from_secs(300),
            )
        }),
    )
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn signature_in_hex_with_or_without_prefix() {
    let check = signature(SignatureEncoding::Hex, &["k1"], false);
    let tag = hex(&mac("k1", BODY));
    for value in [tag.clone(), format!("sha256={tag}"), tag.to_uppercase()] {
        let map = headers(&[("x-signature", &value)]);
        assert_eq!(check.verify(&map, BODY, at(0)), Ok(()), "{value}");
    }
    let other_body = headers(&[("x-signature", &tag)]);
    assert_eq!(
        check.verify(&other_body, b"{}", at(0)),
        Err(Denial::Signature)
    );
    for bad in [
        "",
        "zz",
        &tag[..62],
        &format!("{tag}00"),
        &hex(&mac("k2", BODY)),
    ] {
        let map = headers(&[("x-signature", bad)]);
        assert_eq!(
            check.verify(&map, BODY, at(0)),
            Err(Denial::Signature),
            "{bad:?}"
        );
    }
    assert_eq!(
        check.verify(&HeaderMap::new(), BODY, at(0)),
        Err(Denial::Signature)
    );
}

#[test]
fn signature_in_base64_and_key_rotation() {
    use base64::Engine as _;
    let check = signature(SignatureEncoding::Base64, &["old", "new"], false);
    for key in ["old", "new"] {
        let tag = base64::engine::general_purpose::STANDARD.encode(mac(key, BODY));
        let map = headers(&[("x-signature", &tag)]);
        assert_eq!(check.verify(&map, BODY, at(0)), Ok(()), "{key}");
    }
    let hex_tag = headers(&[("x-signature", &hex(&mac("new", BODY)))]);
    assert_eq!(check.verify(&hex_tag, BODY, at(0)), Err(Denial::Signature));
}

#[test]
fn timestamp_is_signed_and_bounded() {
    let check = signature(SignatureEncoding::Hex, &["k"], true);
    let now = 1_764_000_000;
    let signed = |ts: &str| {
        let mut message = format!("{ts}.").into_bytes();
        message.extend_from_slice(BODY);
        headers(&[
            ("x-timestamp", ts),
            ("x-signature", &hex(&mac("k", &message))),
        ])
    };
    let ts = now.to_string();
    assert_eq!(check.verify(&signed(&ts), BODY, at(now)), Ok(()));
    // Within the tolerance either side.
    assert_eq!(check.verify(&signed(&ts), BODY, at(now + 300)), Ok(()));
    assert_eq!(check.verify(&signed(&ts), BODY, at(now - 300)), Ok(()));
    // A replay after the tolerance, and a request from the future.
    assert_eq!(
        check.verify(&signed(&ts), BODY, at(now + 301)),
        Err(Denial::Timestamp)
    );
    assert_eq!(
        check.verify(&signed(&ts), BODY, at(now - 301)),
        Err(Denial::Timestamp)
    );
    // The timestamp is part of what is signed: changing it breaks the MAC.
    let mut moved = signed(&ts);
    moved.insert("x-timestamp", HeaderValue::from(now + 1));
    assert_eq!(check.verify(&moved, BODY, at(now)), Err(Denial::Signature));
    // A body signature alone is not enough once a timestamp is required.
    let unsigned_ts = headers(&[("x-timestamp", &ts), ("x-signature", &hex(&mac("k", BODY)))]);
    assert_eq!(
        check.verify(&unsigned_ts, BODY, at(now)),
        Err(Denial::Signature)
    );
    for bad in ["", "-1", "1e9", "17640000000000000000000", " "] {
        let map = headers(&[("x-timestamp", bad), ("x-signature", "00")]);
        assert_eq!(
            check.verify(&map, BODY, at(now)),
            Err(Denial::Timestamp),
            "{bad:?}"
        );
    }
    let missing = headers(&[("x-signature", &hex(&mac("k", BODY)))]);
    assert_eq!(
        check.verify(&missing, BODY, at(now)),
        Err(Denial::Timestamp)
    );
}

// The guard as a whole

#[test]
fn guard_runs_every_configured_check() {
    let open = Guard::default();
    assert_eq!(
        open.check_request(ip("192.0.2.1"), &HeaderMap::new()),
        Ok(())
    );
    assert_eq!(open.check_body(&HeaderMap::new(), BODY, at(0)), Ok(()));
    assert_eq!(open.challenge(), None);

    let guard = Guard {
        source: Some(filter(&["192.0.2.0/24"], &[])),
        user_agent: Some("Cloud Apizee".into()),
        shared_secret: Some(
            SharedSecret::new("x-apizee-secret", secrets(&["s3cret"]))
                .unwrap_or_else(|e| panic!("{e}")),
        ),
        basic: None,
        signature: Some(signature(SignatureEncoding::Hex, &["k"], false)),
    };
    let good = headers(&[
        ("user-agent", "Cloud Apizee"),
        ("x-apizee-secret", "s3cret"),
        ("x-signature", &hex(&mac("k", BODY))),
    ]);
    let peer = ip("192.0.2.1");
    assert_eq!(guard.check_request(peer, &good), Ok(()));
    assert_eq!(guard.check_body(&good, BODY, at(0)), Ok(()));

    assert_eq!(
        guard.check_request(ip("198.51.100.1"), &good),
        Err(Denial::SourceNotAllowed)
    );
    let mut versioned = good.clone();
    versioned.insert("user-agent", HeaderValue::from_static("Cloud Apizee/2.1"));
    assert_eq!(guard.check_request(peer, &versioned), Ok(()));
    for agent in ["curl/8.0", "cloud apizee", "Cloud"] {
        let mut map = good.clone();
        map.insert(
            "user-agent",
            HeaderValue::from_str(agent).unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(
            guard.check_request(peer, &map),
            Err(Denial::UserAgent),
            "{agent}"
        );
    }
    let mut no_agent = good.clone();
    no_agent.remove("user-agent");
    assert_eq!(guard.check_request(peer, &no_agent), Err(Denial::UserAgent));
    let mut wrong_secret = good.clone();
    wrong_secret.insert("x-apizee-secret", HeaderValue::from_static("nope"));
    assert_eq!(
        guard.check_request(peer, &wrong_secret),
        Err(Denial::SharedSecret)
    );
    assert_eq!(
        guard.check_body(&good, b"{}", at(0)),
        Err(Denial::Signature)
    );
}

#[test]
fn only_who_the_client_is_is_forbidden() {
    let forbidden: Vec<&str> = Denial::ALL
        .iter()
        .filter(|d| d.is_forbidden())
        .map(|d| d.as_str())
        .collect();
    assert_eq!(forbidden, ["source_not_allowed", "user_agent"]);
}

#[test]
fn basic_sets_the_challenge() {
    let guard = Guard {
        basic: Some(BasicAuth::new(&secrets(&["u:p"])).unwrap_or_else(|e| panic!("{e}"))),
        ..Guard::default()
    };
    assert_eq!(
        guard.challenge(),
        Some(r#"Basic realm="apizee-bridge", charset="UTF-8""#)
    );
    assert_eq!(
        guard.check_request(ip("192.0.2.1"), &HeaderMap::new()),
        Err(Denial::BasicAuth)
    );
}
