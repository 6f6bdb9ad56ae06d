//! Kubeconfig files for the file provider's tests.

use std::path::Path;

use serde_json::json;

/// Writes `bytes` to `path` in one step (through a hidden temporary file), so a
/// watcher never sees half a file.
pub fn write_bytes(path: &Path, bytes: &[u8]) {
    let name = path.file_name().expect("file name").to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.tmp")); // hidden: never matches
    std::fs::write(&temporary, bytes).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

/// A minimal kubeconfig (JSON, valid YAML) for an unreachable server: clusters are
/// built, never used.
pub fn offline_kubeconfig(contexts: &[&str], user: serde_json::Value) -> String {
    let context = |name: &&str| json!({ "name": name, "context": { "cluster": "c", "user": "u" } });
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "c", "cluster": { "server": "https://127.0.0.1:9" } }],
        "users": [{ "name": "u", "user": user }],
        "contexts": contexts.iter().map(context).collect::<Vec<_>>(),
    })
    .to_string()
}
