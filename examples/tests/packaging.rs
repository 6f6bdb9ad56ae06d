//! What every published package ships besides its code (issue 19).

use std::path::{Path, PathBuf};

/// The packages that are published.
const PACKAGES: [&str; 3] = [
    "crates/multicluster-runtime",
    "crates/kube-envtest",
    "crates/envtest-cli",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// c03: the Apache-2.0 licence the manifests declare, and a NOTICE naming the Go
/// project whose contract the library ports, at the root and in each package
/// (`cargo package` takes only what is inside the package's directory).
#[test]
fn c03_every_package_ships_the_licence_and_the_notice() {
    let root = workspace();
    let licence = read(&root.join("LICENSE"));
    assert!(licence.contains("Apache License") && licence.contains("Version 2.0, January 2004"));
    let notice = read(&root.join("NOTICE"));
    assert!(notice.contains("sigs.k8s.io/multicluster-runtime"), "{notice}");
    assert!(read(&root.join("Cargo.toml")).contains("license = \"Apache-2.0\""));
    for package in PACKAGES {
        let dir = root.join(package);
        assert_eq!(read(&dir.join("LICENSE")), licence, "{package}/LICENSE");
        assert_eq!(read(&dir.join("NOTICE")), notice, "{package}/NOTICE");
        assert!(
            read(&dir.join("Cargo.toml")).contains("license.workspace = true"),
            "{package} declares the workspace's licence"
        );
    }
}
