//! Shared pieces of the fuzz targets of the parsers of untrusted input (`p05_fuzz_*`
//! tests beside each parser): the case count, and generators of kubeconfigs and
//! objects that are mostly well-formed, hold marker strings in every credential
//! field, and are then cut or corrupted.
//!
//! The targets are `proptest` properties, so they run on the stable toolchain in
//! `cargo test`. Each runs [`cases`] inputs: 1,000 by default (CI), more with
//! `MCR_FUZZ_CASES` (the long run recorded in `docs/decisions/untrusted-input.md`).

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value, json};

/// Marker strings put in credential fields; none may appear in an error.
pub(crate) const MARKERS: [&str; 6] = [
    "MARKERtoken7f3a",
    "MARKERpassword91c2",
    "MARKERclientkey55d0",
    "MARKERexecenv0b1e",
    "MARKERexecarg6a4f",
    "MARKERuserinfo3e8d",
];

/// How many inputs each target runs: `MCR_FUZZ_CASES`, default 1,000.
pub(crate) fn cases() -> u32 {
    std::env::var("MCR_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000)
}

/// The proptest configuration of a fuzz target: [`cases`] inputs, no file of
/// regressions (a failure prints its minimal input).
pub(crate) fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Panics if `text` holds a marker; `what` says where the text came from.
pub(crate) fn assert_no_marker(what: &str, text: &str) {
    for marker in MARKERS {
        assert!(!text.contains(marker), "{what} quotes a credential: {text}");
    }
}

/// A marker, alone or inside other text.
fn secret() -> impl Strategy<Value = String> {
    (prop::sample::select(MARKERS.to_vec()), "[a-z0-9]{0,4}")
        .prop_map(|(marker, tail)| format!("{marker}{tail}"))
}

/// Base64 of `bytes`, as kubeconfigs hold `*-data` fields.
fn base64(bytes: &[u8]) -> String {
    match serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())) {
        Ok(Value::String(text)) => text,
        _ => unreachable!("a ByteString serializes to a string"),
    }
}

/// A `*-data` field: a marker as is, or base64 of a PEM block or of bytes holding
/// one (which decodes, so the client's parsers see the marker).
fn data() -> impl Strategy<Value = String> {
    prop_oneof![
        secret(),
        secret().prop_map(|marker| base64(
            format!("-----BEGIN PRIVATE KEY-----\n{marker}\n-----END PRIVATE KEY-----\n").as_bytes()
        )),
        (secret(), prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(marker, mut bytes)| {
            bytes.extend_from_slice(marker.as_bytes());
            base64(&bytes)
        }),
    ]
}

/// Any JSON scalar, now and then a marker.
pub(crate) fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::String),
        secret().prop_map(Value::String),
    ]
}

/// Any JSON value of small depth.
pub(crate) fn any_json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z-]{1,12}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A server URL: ordinary, denied, ambiguous, with a zone ID, a local address in
/// one of its disguises, oversized, with a marker as user information, or any text.
pub(crate) fn server() -> impl Strategy<Value = String> {
    prop_oneof![
        "https://[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        "https?://[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(:[0-9]{1,5})?(/[a-z]{0,5})?",
        "https://\\[[0-9a-f:.]{2,24}\\](:[0-9]{1,5})?",
        "https://\\[[0-9a-f:.]{2,24}%(25)?[0-9a-z]{1,6}\\](:[0-9]{1,5})?",
        "https://(0x[0-9a-f]{1,8}|[0-9]{1,10})(\\.[0-9]{1,5}){0,3}",
        (
            prop::sample::select(LOCAL_HOSTS.to_vec()),
            "(%[0-9a-z]{1,4})?",
            "(:[0-9]{1,5})?"
        )
            .prop_map(|(host, zone, port)| match host.strip_suffix(']') {
                Some(open) => format!("https://{open}{zone}]{port}"),
                None => format!("https://{host}{port}"),
            }),
        (254usize..4096).prop_map(|length| format!("https://{}.example", "a".repeat(length))),
        secret().prop_map(|marker| format!("https://user:{marker}@169.254.169.254")),
        "\\PC{0,30}",
    ]
}

/// Hosts that lead to the controller's own pod or to a metadata service, written
/// the ways a resolver still reads them.
const LOCAL_HOSTS: [&str; 16] = [
    "127.0.0.1",
    "localhost",
    "LocalHost.",
    "api.localhost",
    "ip6-localhost",
    "metadata.google.internal",
    "169.254.169.254",
    "2852039166",
    "0xa9.0xfe.0xa9.0xfe",
    "0251.0376.0251.0376",
    "[::1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",
    "[fd00:ec2::254]",
    "[fe80::1]",
];

/// An address a name may resolve to: any, or a local one in some form.
pub(crate) fn address() -> impl Strategy<Value = std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u16; 8]>().prop_map(IpAddr::from),
        prop::sample::select(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
            IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
            IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv4Addr::new(169, 254, 169, 254).to_ipv6_mapped()),
            IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xa9fe, 0xa9fe)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
            IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        ]),
    ]
}

/// Whether `address` is one `EndpointPolicy::deny_local()` exists to keep the
/// controller from: loopback, unspecified, link-local, a cloud's metadata or host
/// address, also behind IPv4 mapping or NAT64. Written from the standard library's
/// classification, not from the policy's rules, as an oracle for them.
pub(crate) fn is_local(address: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v4 = |a: Ipv4Addr| {
        a.is_loopback()
            || a.is_link_local()
            || a.octets()[0] == 0
            || a == Ipv4Addr::new(168, 63, 129, 16)
            || a == Ipv4Addr::new(100, 100, 100, 200)
    };
    match address {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => {
            let s = a.segments();
            let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            a.to_ipv4_mapped().is_some_and(v4)
                || a.is_loopback()
                || a.is_unspecified()
                || (s[0] & 0xffc0) == 0xfe80
                || a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || (nat64 && v4(Ipv4Addr::from(((u32::from(s[6])) << 16) | u32::from(s[7]))))
        }
    }
}

/// Every address a resolver could read `host` (as a URL holds it) as, the lenient
/// way: brackets and any zone ID dropped, IPv4 in `inet_aton`'s forms (one to four
/// parts, each decimal, octal or hexadecimal).
pub(crate) fn lenient_addresses(host: &str) -> Vec<std::net::IpAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let bare = bare.split('%').next().unwrap_or_default();
    let bare = bare.strip_suffix('.').unwrap_or(bare);
    let mut found = Vec::new();
    if let Ok(address) = bare.parse() {
        found.push(address);
    }
    let number = |part: &str| -> Option<u64> {
        let lower = part.to_ascii_lowercase();
        if let Some(hex) = lower.strip_prefix("0x") {
            return if hex.is_empty() {
                Some(0)
            } else {
                u64::from_str_radix(hex, 16).ok()
            };
        }
        if part.len() > 1 && part.starts_with('0') {
            return u64::from_str_radix(&part[1..], 8).ok();
        }
        part.parse().ok()
    };
    let parts: Option<Vec<u64>> = bare.split('.').map(number).collect();
    if let Some(parts) = parts.filter(|p| (1..=4).contains(&p.len())) {
        let (head, last) = parts.split_at(parts.len() - 1);
        let room = 32 - 8 * head.len() as u32;
        if head.iter().all(|&p| p < 256) && last[0] < (1u64 << room) {
            let value = head.iter().fold(0u64, |acc, &p| (acc << 8) | p) << room | last[0];
            if let Ok(value) = u32::try_from(value) {
                found.push(std::net::Ipv4Addr::from(value).into());
            }
        }
    }
    found
}

/// Whether `host` is a name of the controller's own pod or of a metadata service.
pub(crate) fn is_local_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    [
        "localhost",
        "ip6-localhost",
        "ip6-loopback",
        "metadata.google.internal",
        "metadata",
        "instance-data",
    ]
    .contains(&name.as_str())
        || name.ends_with(".localhost")
}

fn insert(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value);
    }
}

fn maybe<S: Strategy<Value = Value>>(strategy: S) -> impl Strategy<Value = Option<Value>> {
    prop::option::weighted(0.3, strategy)
}

fn text(strategy: impl Strategy<Value = String>) -> impl Strategy<Value = Value> {
    strategy.prop_map(Value::String)
}

/// A kubeconfig `cluster` entry.
pub(crate) fn cluster() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(0.9, text(server())),
        maybe(text(data())),
        maybe(any::<bool>().prop_map(Value::Bool)),
        maybe(text(server())),
        maybe(text("[a-z./]{1,16}")),
        maybe(text("[a-z.]{1,16}")),
        maybe(scalar()),
    )
        .prop_map(|(server, ca, insecure, proxy, ca_file, tls_name, extra)| {
            let mut map = Map::new();
            insert(&mut map, "server", server);
            insert(&mut map, "certificate-authority-data", ca);
            insert(&mut map, "insecure-skip-tls-verify", insecure);
            insert(&mut map, "proxy-url", proxy);
            insert(&mut map, "certificate-authority", ca_file);
            insert(&mut map, "tls-server-name", tls_name);
            insert(&mut map, "extensions", extra);
            Value::Object(map)
        })
}

/// A kubeconfig `user` entry: markers in every credential.
pub(crate) fn user() -> impl Strategy<Value = Value> {
    let exec = (secret(), secret(), any::<bool>()).prop_map(|(arg, env, api)| {
        json!({
            "command": "/bin/plugin",
            "args": [format!("--token={arg}")],
            "env": [{ "name": "SECRET", "value": env }],
            "apiVersion": if api { "client.authentication.k8s.io/v1" } else { "bogus" },
        })
    });
    (
        maybe(text(secret())),
        maybe(text(secret())),
        maybe(text(data())),
        maybe(text(data())),
        maybe(exec),
        maybe(prop_oneof![
            secret().prop_map(|marker| json!({ "name": "oidc", "config": { "id-token": marker } })),
            secret().prop_map(|marker| json!({
                "name": "gcp",
                "config": { "cmd-path": "/bin/gcloud", "cmd-args": format!("token --secret={marker}") },
            })),
        ]),
        maybe(text("[a-z./]{1,16}")),
    )
        .prop_map(|(token, password, key, cert, exec, auth, token_file)| {
            let mut map = Map::new();
            insert(&mut map, "token", token);
            if let Some(password) = password {
                map.insert("username".into(), json!("admin"));
                map.insert("password".into(), password);
            }
            insert(&mut map, "client-key-data", key);
            insert(&mut map, "client-certificate-data", cert);
            insert(&mut map, "exec", exec);
            insert(&mut map, "auth-provider", auth);
            insert(&mut map, "tokenFile", token_file);
            Value::Object(map)
        })
}

/// A kubeconfig of up to three clusters, users and contexts, names drawn from a
/// small set so that references sometimes resolve.
pub(crate) fn kubeconfig() -> impl Strategy<Value = Value> {
    let name = || prop::sample::select(vec!["a", "b", "c"]);
    let named = |key: &'static str, inner: BoxedStrategy<Value>| {
        prop::collection::vec((name(), inner), 0..4).prop_map(move |entries| {
            Value::Array(
                entries
                    .into_iter()
                    .map(|(name, value)| json!({ "name": name, key: value }))
                    .collect(),
            )
        })
    };
    let context = (name(), name(), prop::option::of("[a-z-]{1,8}")).prop_map(
        |(cluster, user, namespace)| json!({ "cluster": cluster, "user": user, "namespace": namespace }),
    );
    (
        named("cluster", cluster().boxed()),
        named("user", user().boxed()),
        named("context", context.boxed()),
        prop::option::weighted(0.9, name()),
    )
        .prop_map(|(clusters, users, contexts, current)| {
            json!({
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": clusters,
                "users": users,
                "contexts": contexts,
                "current-context": current,
            })
        })
}

/// The bytes of `value` as JSON (which is YAML), now and then cut short or with one
/// byte changed.
pub(crate) fn encoded(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    (
        value,
        prop::option::weighted(0.2, (any::<prop::sample::Index>(), any::<u8>())),
        any::<bool>(),
    )
        .prop_map(|(value, corrupt, cut)| {
            let mut bytes = serde_json::to_vec(&value).expect("JSON");
            if let Some((at, byte)) = corrupt {
                let at = at.index(bytes.len().max(1));
                if cut {
                    bytes.truncate(at);
                } else if let Some(slot) = bytes.get_mut(at) {
                    *slot = byte;
                }
            }
            bytes
        })
}

/// Bytes that are mostly kubeconfigs, sometimes anything at all.
pub(crate) fn kubeconfig_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => encoded(kubeconfig()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => "\\PC{0,200}".prop_map(String::into_bytes),
    ]
}
