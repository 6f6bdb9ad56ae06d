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

/// A server URL: ordinary, denied, ambiguous, with a marker as user information,
/// or any text.
pub(crate) fn server() -> impl Strategy<Value = String> {
    prop_oneof![
        "https://[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        "https?://[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(:[0-9]{1,5})?(/[a-z]{0,5})?",
        "https://\\[[0-9a-f:.]{2,24}\\](:[0-9]{1,5})?",
        "https://(0x[0-9a-f]{1,8}|[0-9]{1,10})(\\.[0-9]{1,5}){0,3}",
        secret().prop_map(|marker| format!("https://user:{marker}@169.254.169.254")),
        "\\PC{0,30}",
    ]
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
        maybe(secret().prop_map(|marker| json!({ "name": "oidc", "config": { "id-token": marker } }))),
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
