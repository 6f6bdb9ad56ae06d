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

/// The workspace's packages as `cargo metadata` resolves them (workspace
/// inheritance applied), by name.
fn metadata() -> std::collections::BTreeMap<String, serde_json::Value> {
    let all = cargo_metadata(&["--no-deps", "--offline"]);
    all["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["name"].as_str().expect("name").to_owned(), p.clone()))
        .collect()
}

/// The published packages' names, in the order they must be published.
const PUBLISHED: [(&str, &str); 3] = [
    ("kube-envtest", "crates/kube-envtest"),
    ("multicluster-runtime", "crates/multicluster-runtime"),
    ("kube-envtest-cli", "crates/envtest-cli"),
];

/// Every `include_str!`, `include_bytes!` and `#[path]` in the Rust files under
/// `dir`, with the file that names it.
fn inclusions(dir: &Path, found: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            inclusions(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            for line in read(&path).lines() {
                for marker in ["include_str!(\"", "include_bytes!(\"", "#[path = \""] {
                    if let Some(rest) = line.split(marker).nth(1) {
                        let target = rest.split('"').next().unwrap_or_default();
                        found.push((path.clone(), target.to_owned()));
                    }
                }
            }
        }
    }
}

/// c01: each published package is complete for the registry (what its page shows,
/// what `cargo publish` requires) and builds from its own directory: a README inside
/// the package, every dependency on a workspace crate with a version (`cargo
/// package` drops path-only ones, dev-dependencies included, so packaged tests would
/// not compile), and no source that reads a file outside the package. CI proves the
/// rest by packaging and building each (`.ci/run`, step "c01").
#[test]
fn c01_every_published_package_is_complete_and_self_contained() {
    let root = workspace();
    let packages = metadata();
    for (name, dir) in PUBLISHED {
        let package = &packages[name];
        let dir = root.join(dir).canonicalize().expect("package directory");
        for key in ["description", "license", "repository", "rust_version", "readme"] {
            assert!(
                package[key].as_str().is_some_and(|v| !v.trim().is_empty()),
                "{name}: `{key}` is missing"
            );
        }
        for key in ["keywords", "categories"] {
            let values = package[key].as_array().map(Vec::len).unwrap_or_default();
            assert!((1..=5).contains(&values), "{name}: {values} {key} (1 to 5)");
        }
        assert!(package["publish"].is_null(), "{name} is publishable");
        let readme = dir.join(package["readme"].as_str().expect("readme"));
        let readme = readme.canonicalize().unwrap_or(readme);
        assert!(
            readme.starts_with(&dir) && readme.is_file(),
            "{name}: the README {} is a file inside the package",
            readme.display()
        );
        for dep in package["dependencies"].as_array().expect("dependencies") {
            if dep["path"].is_string() {
                assert_ne!(
                    dep["req"].as_str(),
                    Some("*"),
                    "{name}: the {} dependency on {} has a path and no version",
                    dep["kind"].as_str().unwrap_or("normal"),
                    dep["name"]
                );
            }
        }
        let mut found = Vec::new();
        inclusions(&dir, &mut found);
        for (file, target) in found {
            let resolved = file.parent().expect("parent").join(&target);
            let resolved = resolved.canonicalize().unwrap_or(resolved);
            assert!(
                resolved.starts_with(&dir),
                "{name}: {} includes {target}, outside the package",
                file.display()
            );
        }
    }
}

/// c02: docs.rs builds each library's docs with every provider and a Kubernetes
/// version of k8s-openapi (a library build needs one), labels feature-gated items
/// (`--cfg docsrs`), and each provider module says which feature it needs for
/// readers of docs built otherwise; each package README's code is compiled as
/// doctests (and the repository README's, by this crate). CI builds the docs the
/// same way with warnings as errors (`.ci/run`, step "c02").
#[test]
fn c02_docs_rs_builds_every_provider_and_labels_its_feature() {
    let root = workspace();
    let packages = metadata();
    for (name, dir) in [
        ("multicluster-runtime", "crates/multicluster-runtime"),
        ("kube-envtest", "crates/kube-envtest"),
    ] {
        let docs_rs = &packages[name]["metadata"]["docs"]["rs"];
        let features: Vec<&str> = docs_rs["features"]
            .as_array()
            .map(|f| f.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        assert!(
            features
                .iter()
                .any(|f| *f == "k8s-openapi/latest" || f.starts_with("k8s-openapi/v1_")),
            "{name}: docs.rs picks a k8s-openapi version feature: {docs_rs}"
        );
        let args: Vec<&str> = docs_rs["rustdoc-args"]
            .as_array()
            .map(|f| f.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(args, ["--cfg", "docsrs"], "{name}: rustdoc-args");
        let lib = read(&root.join(dir).join("src/lib.rs"));
        assert!(
            lib.contains("#[cfg(doctest)]\n#[doc = include_str!(\"../README.md\")]"),
            "{name}: the README is compiled as doctests"
        );
    }
    let runtime = &packages["multicluster-runtime"];
    assert_eq!(
        runtime["metadata"]["docs"]["rs"]["all-features"],
        serde_json::Value::Bool(true),
        "every provider's docs appear"
    );
    let lib = read(&root.join("crates/multicluster-runtime/src/lib.rs"));
    assert!(lib.contains("#![cfg_attr(docsrs, feature(doc_cfg))]"));
    let providers = root.join("crates/multicluster-runtime/src/providers");
    // The provider features are those `providers` enables.
    let features: Vec<&str> = runtime["features"]["providers"]
        .as_array()
        .expect("the feature `providers`")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    for feature in features {
        let module = [format!("{feature}/mod.rs"), format!("{feature}.rs")]
            .into_iter()
            .map(|m| providers.join(m))
            .find(|m| m.is_file())
            .unwrap_or_else(|| panic!("the module of provider feature {feature}"));
        let docs: String = read(&module)
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            docs.contains(&format!("cargo feature `{feature}`")),
            "{}: the module docs name the feature `{feature}`",
            module.display()
        );
    }
    let examples_lib = read(&root.join("examples/src/lib.rs"));
    assert!(examples_lib.contains("#[doc = include_str!(\"../../README.md\")]"));
}

/// Every package with its dependencies, from `cargo metadata` (offline: the lock
/// file's registry sources are in the local cache once the workspace has built).
fn metadata_with_dependencies() -> serde_json::Value {
    cargo_metadata(&["--offline", "--locked"])
}

/// `cargo metadata --format-version 1` of the workspace with `args`, as JSON.
fn cargo_metadata(args: &[&str]) -> serde_json::Value {
    cargo_metadata_in(&workspace(), args)
}

/// `cargo metadata` of the workspace at `dir`.
fn cargo_metadata_in(dir: &Path, args: &[&str]) -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("metadata is JSON")
}

/// `1.89` or `1.89.0` as a comparable triple.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text
        .split('.')
        .map(|p| p.parse::<u64>().expect("numeric version"));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// c04: what a user pays for and what they may rely on. The declared `rust-version`
/// is no lower than any dependency's (CI also builds with exactly that toolchain,
/// `.ci/run` step "c04"); the library asks tokio only for the features it uses;
/// implementers of its traits need no `async-trait` of their own (this crate's tests
/// implement `Runnable` through the re-export and do not depend on it); the types
/// meant to grow are `#[non_exhaustive]`; and the README states the semver policy.
#[test]
fn c04_msrv_features_and_semver_policy() {
    let root = workspace();
    let all = metadata_with_dependencies();
    let packages = all["packages"].as_array().expect("packages");
    let declared = packages
        .iter()
        .find(|p| p["name"] == "multicluster-runtime")
        .and_then(|p| p["rust_version"].as_str())
        .map(version)
        .expect("multicluster-runtime declares rust-version");
    for package in packages {
        if let Some(needed) = package["rust_version"].as_str() {
            assert!(
                version(needed) <= declared,
                "{} {} needs Rust {needed}, above the declared {declared:?}",
                package["name"],
                package["version"]
            );
        }
    }

    let runtime = packages
        .iter()
        .find(|p| p["name"] == "multicluster-runtime")
        .expect("the library");
    let tokio = runtime["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .find(|d| d["name"] == "tokio" && d["kind"].is_null())
        .expect("tokio is a normal dependency");
    let features: Vec<&str> = tokio["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    for unused in [
        "full",
        "rt-multi-thread",
        "process",
        "fs",
        "io-std",
        "parking_lot",
    ] {
        assert!(
            !features.contains(&unused),
            "the library asks tokio for `{unused}`, which it does not use: {features:?}"
        );
    }

    let examples = read(&root.join("examples/Cargo.toml"));
    assert!(
        !examples.contains("async-trait"),
        "the examples implement the traits through `multicluster_runtime::async_trait`"
    );
    let lib = read(&root.join("crates/multicluster-runtime/src/lib.rs"));
    assert!(lib.contains("pub use async_trait::async_trait;"));

    let src = root.join("crates/multicluster-runtime/src");
    for (file, declaration) in [
        ("controller/reconcile.rs", "pub struct ReconcileRequest<K>"),
        ("cluster/mod.rs", "pub struct ClusterOptions"),
        ("cache/options.rs", "pub struct WatchSpec"),
        ("cache/options.rs", "pub enum WatchNamespaces"),
        ("cache/event.rs", "pub enum InformerEvent<K>"),
        ("cluster/health.rs", "pub enum HealthState"),
        ("controller/source.rs", "pub struct MapContext"),
        ("cluster/kubeconfig/mod.rs", "pub struct KubeconfigPolicy"),
        ("manager/checks.rs", "pub struct Report "),
        ("manager/checks.rs", "pub struct ReportLine"),
        ("cluster/kubeconfig/endpoint.rs", "pub enum EndpointRule "),
    ] {
        let text = read(&src.join(file));
        let at = text
            .find(declaration)
            .unwrap_or_else(|| panic!("{file}: {declaration}"));
        let attributes: Vec<&str> = text[..at]
            .lines()
            .rev()
            .take_while(|l| l.trim_start().starts_with("#[") || l.trim_start().starts_with("///"))
            .collect();
        assert!(
            attributes.iter().any(|l| l.trim() == "#[non_exhaustive]"),
            "{file}: `{declaration}` is #[non_exhaustive]"
        );
    }

    let readme = read(&root.join("README.md"));
    let policy = section(&readme, "Rust versions and semver");
    for named in [
        "`kube`",
        "`k8s-openapi`",
        "`tokio`",
        "`tokio-util`",
        "`async-trait`",
        "1.89",
    ] {
        assert!(policy.contains(named), "the semver policy names {named}");
    }
}

/// The `## <title>` section of a README, without its title line.
fn section<'a>(readme: &'a str, title: &str) -> &'a str {
    readme
        .split("\n## ")
        .find_map(|section| section.strip_prefix(title).filter(|rest| rest.starts_with('\n')))
        .unwrap_or_else(|| panic!("the README has a section \"{title}\""))
}

/// The rows of the first Markdown table in `text` whose header starts with `| feature |`.
fn feature_table(text: &str) -> Vec<&str> {
    let start = text.find("| feature |").expect("a features table");
    text[start..].lines().take_while(|l| l.starts_with('|')).collect()
}

/// c08: the README's "Use it in your project" shows the `cargo add` lines (with the
/// k8s-openapi version feature a binary needs), the features table (every feature of
/// the library, the same table as on the crate's registry page), the deploy steps and
/// the local-to-fleet page; its program is compiled as a doctest of the examples crate.
#[test]
fn c08_the_readme_says_how_to_use_it_in_a_project() {
    let root = workspace();
    let readme = read(&root.join("README.md"));
    let usage = section(&readme, "Use it in your project");
    for line in [
        "cargo add multicluster-runtime",
        "cargo add k8s-openapi@0.29 --features v1_37",
        "cargo add --dev kube-envtest",
        "start_until_signal",
        "apply -k deploy/operator/overlays/leader-election",
        "create_kubeconfig_secret",
        "docs/local-to-fleet.md",
    ] {
        assert!(usage.contains(line), "\"Use it in your project\" shows `{line}`");
    }
    assert!(root.join("docs/local-to-fleet.md").is_file());
    let table = feature_table(usage);
    let crate_readme = read(&root.join("crates/multicluster-runtime/README.md"));
    assert_eq!(
        table,
        feature_table(&crate_readme),
        "one features table in both READMEs"
    );
    let features = metadata()["multicluster-runtime"]["features"]
        .as_object()
        .expect("features")
        .keys()
        .filter(|f| *f != "default")
        .cloned()
        .collect::<Vec<_>>();
    for feature in &features {
        assert!(
            table
                .iter()
                .any(|row| row.starts_with(&format!("| `{feature}` |"))),
            "the features table lists `{feature}`"
        );
    }
    assert_eq!(
        table.len(),
        2 + features.len(),
        "no row for a feature that does not exist"
    );
}

/// c04: the operational endpoints (probes, `/metrics`, their HTTP server and TLS)
/// are a default feature: a program without them builds none of their
/// dependencies. CI builds the library without default features, warnings denied.
#[test]
fn c04_the_operational_endpoint_is_a_default_feature() {
    let packages = metadata();
    let runtime = &packages["multicluster-runtime"];
    let default: Vec<&str> = runtime["features"]["default"]
        .as_array()
        .expect("default features")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(default.contains(&"endpoint"), "default features: {default:?}");
    let normal: Vec<&serde_json::Value> = runtime["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter(|d| d["kind"].is_null())
        .collect();
    for only_for_the_endpoint in [
        "rustls",
        "tokio-rustls",
        "rustls-pki-types",
        "rcgen",
        "ring",
        "socket2",
    ] {
        let dep = normal
            .iter()
            .find(|d| d["name"] == only_for_the_endpoint)
            .unwrap_or_else(|| panic!("{only_for_the_endpoint} is a dependency"));
        assert_eq!(
            dep["optional"],
            serde_json::Value::Bool(true),
            "{only_for_the_endpoint} is built only with the feature `endpoint`"
        );
    }
    let hyper = normal.iter().find(|d| d["name"] == "hyper").expect("hyper");
    assert!(
        !hyper["features"]
            .as_array()
            .expect("features")
            .iter()
            .any(|f| f == "server"),
        "hyper's server is built only with the feature `endpoint`"
    );
}

/// What a subscriber built on a writer (given the writer) writes for one warning
/// with a field.
fn one_line<S>(subscriber: impl FnOnce(Sink) -> S) -> String
where
    S: tracing::Subscriber + Send + Sync + 'static,
{
    let sink = Sink::default();
    tracing::subscriber::with_default(subscriber(sink.clone()), || {
        tracing::warn!(cluster = "c1", "a line as an operator writes it");
    });
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).expect("UTF-8");
    assert!(text.contains("a line as an operator writes it"), "{text:?}");
    text
}

/// A log writer that keeps what it is given.
#[derive(Clone, Default)]
struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// c04: the TLS crypto backend is the user's choice, passed through to kube as
/// kube's own features do: `ring` by default, `aws-lc-rs` instead; neither the
/// library's nor the workspace's kube dependency forces one (CI builds the library
/// with each, step "c04").
#[test]
fn c04_the_tls_backend_is_passed_through_to_kube() {
    let packages = metadata();
    let runtime = &packages["multicluster-runtime"];
    let feature = |name: &str| -> Vec<String> {
        runtime["features"][name]
            .as_array()
            .unwrap_or_else(|| panic!("feature {name}"))
            .iter()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect()
    };
    assert!(
        feature("default").contains(&"ring".to_owned()),
        "ring is the default backend"
    );
    assert!(feature("ring").contains(&"kube/ring".to_owned()));
    assert!(feature("aws-lc-rs").contains(&"kube/aws-lc-rs".to_owned()));
    for dependency in runtime["dependencies"].as_array().expect("dependencies") {
        let name = dependency["name"].as_str().unwrap_or_default();
        if !["kube", "rustls", "tokio-rustls", "rcgen"].contains(&name) || !dependency["kind"].is_null() {
            continue;
        }
        let features: Vec<&str> = dependency["features"]
            .as_array()
            .expect("features")
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        for backend in ["ring", "aws-lc-rs", "aws_lc_rs"] {
            assert!(
                !features.contains(&backend),
                "the library's {name} dependency forces {backend}: {features:?}"
            );
        }
    }
}

/// c06: the examples' (and so the operator's) log lines carry ANSI colour codes on
/// a terminal only, not when stderr is redirected (CI, a container, a file).
#[test]
fn c06_logs_are_plain_text_when_stderr_is_no_terminal() {
    let line =
        |terminal: bool| one_line(|sink| examples::log_format(move || sink.clone(), terminal).finish());
    let plain = line(false);
    assert!(!plain.contains('\u{1b}'), "colour codes in a log file: {plain:?}");
    assert!(line(true).contains('\u{1b}'), "a terminal gets colour");
}

/// c06: `--log-format json` writes one JSON object per line, with the level, the
/// message and the fields, and no colour codes.
#[test]
fn c06_json_log_lines_are_json() {
    let text = one_line(|sink| examples::json_log_format(move || sink.clone()).finish());
    let line: serde_json::Value =
        serde_json::from_str(text.trim_end()).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(
        line["fields"]["message"], "a line as an operator writes it",
        "{line}"
    );
    assert_eq!(line["fields"]["cluster"], "c1", "{line}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
}

/// The operator's Dockerfile, its lines joined where they continue.
fn dockerfile() -> Vec<String> {
    let text = read(&workspace().join("deploy/operator/Dockerfile"));
    text.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The sources of the Dockerfile's `COPY` lines from the build context (not
/// `--from` another stage), each with its destination.
fn copied() -> Vec<(String, String)> {
    dockerfile()
        .iter()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let (destination, sources) = words.split_last().expect("COPY source destination");
            sources
                .iter()
                .map(|s| (s.to_string(), destination.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// c06: the image runs as a numeric user (with a non-numeric `USER`, the kubelet
/// cannot check `runAsNonRoot` and refuses to start the pod) and it is the user
/// the Deployment names; the image builds only the operator; every file it copies
/// exists and is in the build context (not excluded by `.dockerignore`).
#[test]
fn c06_the_image_runs_as_the_user_the_deployment_requires() {
    let lines = dockerfile();
    let final_stage = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("FROM");
    let user = lines[final_stage..]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the final stage sets USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    let (uid, gid): (u64, u64) = (
        uid.parse()
            .unwrap_or_else(|_| panic!("USER {user} is not numeric")),
        gid.parse()
            .unwrap_or_else(|_| panic!("USER {user} is not numeric")),
    );
    assert_ne!(uid, 0, "USER is root");

    let deployment = read(&workspace().join("deploy/operator/base/deployment.yaml"));
    let deployment: serde_json::Value = serde_saphyr::from_str(&deployment).expect("YAML");
    let context = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(context["runAsNonRoot"], true, "{context}");
    assert_eq!(context["runAsUser"], uid, "{context}");
    assert_eq!(context["runAsGroup"], gid, "{context}");

    let builds: Vec<_> = lines.iter().filter(|l| l.contains("cargo build")).collect();
    assert!(!builds.is_empty());
    for build in builds {
        assert!(build.contains("-p examples --example operator"), "{build}");
    }

    let ignored: Vec<String> = read(&workspace().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    // Docker's rule: the last pattern that matches decides. These patterns are
    // directories (`dir/`) or exact paths, which is all this file uses.
    let excluded = |path: &str| {
        ignored.iter().fold(false, |excluded, pattern| {
            let (keep, pattern) = match pattern.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, pattern.as_str()),
            };
            let pattern = pattern.trim_end_matches('/');
            let matches = path == pattern || path.starts_with(&format!("{pattern}/"));
            if matches { !keep } else { excluded }
        })
    };
    assert!(excluded("target/debug"), "{ignored:?}");
    for (source, _) in copied() {
        if source == "." {
            continue;
        }
        assert!(workspace().join(&source).exists(), "COPY {source}: no such file");
        assert!(!excluded(&source), "COPY {source}: excluded by .dockerignore");
    }
}

/// c06: the Dockerfile's dependency layer works from what it copies alone: the
/// manifests of every workspace member (a member without its manifest there would
/// fail the build) and the stub script, whose stand-ins let cargo load the
/// workspace (`cargo metadata --locked`, which reads every target), and which
/// removes them again.
#[test]
fn c06_the_dependency_layer_builds_from_the_manifests_alone() {
    let root = workspace();
    let layer: Vec<(String, String)> = copied().into_iter().take_while(|(s, _)| s != ".").collect();
    let members = cargo_metadata(&["--no-deps", "--offline"]);
    let root_dir = std::fs::canonicalize(&root).expect("root");
    for member in members["packages"].as_array().expect("packages") {
        let manifest = Path::new(member["manifest_path"].as_str().expect("manifest_path"));
        let relative = manifest.strip_prefix(&root_dir).expect("inside the workspace");
        let relative = relative.to_str().expect("UTF-8").to_owned();
        assert!(
            layer.iter().any(|(source, _)| *source == relative),
            "the dependency layer does not copy {relative}"
        );
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    let mut script = None;
    for (source, destination) in &layer {
        let target = if destination.ends_with('/') && destination != "./" {
            if destination.starts_with('/') {
                // The script, copied onto the image's PATH.
                let path = dir.path().join(Path::new(source).file_name().expect("a file"));
                script = Some(path.clone());
                path
            } else {
                dir.path()
                    .join(destination)
                    .join(Path::new(source).file_name().expect("a file"))
            }
        } else {
            dir.path().join(source)
        };
        std::fs::create_dir_all(target.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(root.join(source), &target).expect("copy");
    }
    let script = script.expect("the stub script is copied");
    let run = |argument: &str| {
        let status = std::process::Command::new(&script)
            .arg(argument)
            .current_dir(dir.path())
            .status()
            .expect("run the stub script");
        assert!(status.success(), "stub-sources.sh {argument}");
    };
    run("create");
    cargo_metadata_in(dir.path(), &["--offline", "--locked"]);
    run("remove");
    let left: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    assert!(left.is_empty(), "stand-ins left behind: {left:?}");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// c05: `kube-envtest` as a dev-dependency of another project, and the `envtest`
/// command built from its package, work outside this repository. The two packages
/// are packaged (`cargo package`, as they would be published) and unpacked into a
/// scratch project outside the workspace, which reaches them only through
/// `[patch.crates-io]`: a fleet test runs there (two clusters, a namespace in
/// each), and so does the packaged CLI (`envtest binaries`; `envtest up` with a hub
/// and a member, whose kubeconfigs are used and then removed on SIGTERM; the error
/// for missing binaries names the build script shipped in the package).
///
/// The scratch project lives at a fixed place in the temporary directory and builds
/// into `<this target dir>/c05-outside`, offline and with this workspace's
/// `Cargo.lock`, so a warm run takes seconds.
#[test]
fn c05_packaged_kube_envtest_and_cli_work_outside_the_workspace() {
    let target = target_dir();
    let scratch = std::env::temp_dir().join(format!(
        "mcr-c05-outside-{:016x}",
        fnv1a(target.display().to_string().as_bytes())
    ));
    let scratch_target = target.join("c05-outside");
    let packages = metadata();
    let version = packages["kube-envtest"]["version"]
        .as_str()
        .expect("version")
        .to_owned();

    // Package both as `cargo publish` would, and unpack them into the scratch project.
    let package_target = scratch_target.join("package-target");
    nested_cargo(&workspace(), &package_target)
        .args([
            "package",
            "-p",
            "kube-envtest",
            "-p",
            "kube-envtest-cli",
            "--no-verify",
            "--allow-dirty",
            "--offline",
        ])
        .assert_success("cargo package");
    let vendor = scratch.join("vendor");
    std::fs::create_dir_all(&vendor).expect("create vendor dir");
    for name in ["kube-envtest", "kube-envtest-cli"] {
        let archive = package_target.join(format!("package/{name}-{version}.crate"));
        unpack_if_changed(&archive, &vendor.join(format!("{name}-{version}")));
    }
    let library = vendor.join(format!("kube-envtest-{version}"));
    let script = library.join("controlplane/build.sh");
    assert!(script.is_file(), "the package ships {}", script.display());

    write_scratch_project(&scratch, &packages, &version);

    // One fleet test, built from the packaged library.
    let output = nested_cargo(&scratch, &scratch_target)
        .args(["test", "--offline", "-p", "c05-app", "--", "--nocapture"])
        .env("C05_PACKAGE_DIR", &library)
        .assert_success("cargo test in the scratch project");
    assert!(
        output.contains("test c05_fleet_of_two_from_the_packaged_crate ... ok"),
        "{output}"
    );

    // The packaged CLI.
    nested_cargo(&scratch, &scratch_target)
        .args(["build", "--offline", "-p", "kube-envtest-cli", "--bins"])
        .assert_success("cargo build of the packaged CLI");
    let envtest = scratch_target.join("debug/envtest");
    let command = format!("bash {}", script.display());
    let binaries = std::process::Command::new(&envtest)
        .arg("binaries")
        .assert_success("envtest binaries");
    assert!(binaries.contains("kube-apiserver: "), "{binaries}");
    assert!(
        binaries.contains(&format!("build command:           {command}")),
        "the CLI names the script of its own package: {binaries}"
    );

    let empty = tempfile::tempdir().expect("temp dir");
    let refused = std::process::Command::new(&envtest)
        .args(["up", "--bin-dir"])
        .arg(empty.path())
        .output()
        .expect("envtest up runs");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "no binaries, no fleet: {message}");
    for named in [
        "KUBE_ENVTEST_BIN_DIR",
        "TEST_ASSET_KUBE_APISERVER",
        "TEST_ASSET_ETCD",
        &command,
    ] {
        assert!(message.contains(named), "names {named}: {message}");
    }

    envtest_up_with_a_hub(&envtest);
}

/// `envtest up --clusters 1 --hub-dir H --members-dir M`: reads the two kubeconfig
/// paths it prints, lists namespaces through each, stops it with SIGTERM and checks
/// that it removed them.
fn envtest_up_with_a_hub(envtest: &Path) {
    use std::io::BufRead;

    let dir = tempfile::tempdir().expect("temp dir");
    let (hub, members) = (dir.path().join("hub"), dir.path().join("members"));
    let mut child = std::process::Command::new(envtest)
        .args(["up", "--clusters", "1", "--hub-dir"])
        .arg(&hub)
        .arg("--members-dir")
        .arg(&members)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("envtest up starts");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut written = Vec::new();
    while written.len() < 2 {
        match received.recv_timeout(std::time::Duration::from_secs(180)) {
            Ok(line) => written.push(PathBuf::from(line)),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "envtest up printed {written:?} and then nothing: {}",
                    errors.join().unwrap_or_default()
                );
            }
        }
    }
    assert_eq!(
        written,
        [
            hub.join("cluster-0.kubeconfig"),
            members.join("cluster-1.kubeconfig")
        ],
        "the hub's kubeconfig first, apart from the member's"
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for path in &written {
        let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("a kubeconfig");
        let namespaces = runtime.block_on(async {
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .expect("config");
            let client = kube::Client::try_from(config).expect("client");
            let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
            api.list(&Default::default()).await.expect("list namespaces")
        });
        assert!(
            namespaces
                .items
                .iter()
                .any(|ns| ns.metadata.name.as_deref() == Some("default")),
            "{} reaches a cluster",
            path.display()
        );
    }

    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) has no memory effects; the child is not reaped yet, so the
    // PID is still that of `envtest up`.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "envtest up ignored SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let errors = errors.join().unwrap_or_default();
    assert!(status.success(), "{status}: {errors}");
    for path in &written {
        assert!(!path.exists(), "{} removed on exit: {errors}", path.display());
    }
}

/// The scratch project: a workspace with an app whose tests use `kube-envtest` as a
/// registry dev-dependency, and the unpacked CLI as a member; `[patch.crates-io]`
/// points `kube-envtest` at the unpacked package. The dependencies' versions and
/// features are this workspace's, and so is the lock file (pruned by Cargo), so the
/// build needs nothing that is not in the local cache.
fn write_scratch_project(
    scratch: &Path,
    packages: &std::collections::BTreeMap<String, serde_json::Value>,
    version: &str,
) {
    let dependency = |name: &str, extra_features: &[&str]| {
        let dep = packages["kube-envtest"]["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .find(|d| d["name"] == name && d["kind"].is_null())
            .unwrap_or_else(|| panic!("kube-envtest depends on {name}"));
        let mut features: Vec<String> = dep["features"]
            .as_array()
            .expect("features")
            .iter()
            .filter_map(|f| f.as_str().map(|f| format!("{f:?}")))
            .collect();
        features.extend(extra_features.iter().map(|f| format!("{f:?}")));
        format!(
            "{name} = {{ version = {:?}, default-features = {}, features = [{}] }}",
            dep["req"].as_str().expect("req"),
            dep["uses_default_features"],
            features.join(", ")
        )
    };
    let files = [
        (
            "Cargo.toml".to_owned(),
            format!(
                "[workspace]\nresolver = \"3\"\nmembers = [\"app\", \"vendor/kube-envtest-cli-{version}\"]\n\
                 exclude = [\"vendor/kube-envtest-{version}\"]\n\n\
                 [patch.crates-io]\nkube-envtest = {{ path = \"vendor/kube-envtest-{version}\" }}\n\n\
                 [profile.dev]\ndebug = false\n"
            ),
        ),
        (
            "app/Cargo.toml".to_owned(),
            format!(
                "[package]\nname = \"c05-app\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
                 [dev-dependencies]\nkube-envtest = \"{version}\"\n{}\n{}\n\
                 tokio = {{ version = \"1\", features = [\"macros\", \"rt-multi-thread\"] }}\n",
                dependency("kube", &[]),
                dependency("k8s-openapi", &["v1_37"]),
            ),
        ),
        (
            "app/src/lib.rs".to_owned(),
            "//! Nothing: the test is the point.\n".to_owned(),
        ),
        ("app/tests/fleet.rs".to_owned(), SCRATCH_TEST.to_owned()),
    ];
    for (file, content) in files {
        let path = scratch.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create dir");
        // Unchanged files keep their modification time, so a warm run rebuilds nothing.
        if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            std::fs::write(&path, content).expect("write scratch file");
        }
    }
    // Cargo prunes the copy; a snapshot tells whether the workspace's lock changed.
    let lock = std::fs::read(workspace().join("Cargo.lock")).expect("Cargo.lock");
    let snapshot = scratch.join("workspace.Cargo.lock");
    if std::fs::read(&snapshot).ok().as_ref() != Some(&lock) {
        std::fs::write(scratch.join("Cargo.lock"), &lock).expect("write Cargo.lock");
        std::fs::write(&snapshot, &lock).expect("write the lock snapshot");
    }
}

/// Unpacks the `.crate` `archive` into `dir` (the package's directory) unless `dir`
/// holds this very archive already. Packaged files all carry one fixed date, which
/// would hide a change from Cargo's freshness check, so a changed package is
/// unpacked with the current time (`tar -m`) and therefore rebuilt.
fn unpack_if_changed(archive: &Path, dir: &Path) {
    let bytes = std::fs::read(archive).unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
    let parent = dir.parent().expect("vendor dir");
    let name = dir.file_name().expect("package dir").to_string_lossy();
    let copy = parent.join(format!("{name}.crate"));
    if dir.is_dir() && std::fs::read(&copy).ok().as_ref() == Some(&bytes) {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::process::Command::new("tar")
        .arg("-xzmf")
        .arg(archive)
        .arg("-C")
        .arg(parent)
        .assert_success("tar");
    std::fs::write(&copy, &bytes).expect("keep the unpacked archive");
}

/// The scratch project's test: what a user of the published crate writes.
const SCRATCH_TEST: &str = r#"use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

#[tokio::test]
async fn c05_fleet_of_two_from_the_packaged_crate() {
    let fleet = kube_envtest::Fleet::start(2).await.expect("start a fleet of two");
    for cluster in fleet.clusters() {
        let namespaces: Api<Namespace> = Api::all(cluster.client().expect("client"));
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(format!("c05-{}", cluster.name()));
        namespaces.create(&PostParams::default(), &namespace).await.expect("create");
        let name = namespace.metadata.name.as_deref().expect("name");
        assert!(namespaces.get_opt(name).await.expect("get").is_some());
    }
    let script = kube_envtest::Binaries::build_script();
    let package = std::env::var_os("C05_PACKAGE_DIR").expect("C05_PACKAGE_DIR");
    assert!(script.starts_with(&package), "{} is in the package", script.display());
    assert!(script.is_file());
}
"#;

/// The directory this test binary was built into (`<target>/debug/deps/..`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("<target>/<profile>/deps/<binary>")
        .to_path_buf()
}

/// A stable, short name for a path (FNV-1a).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `cargo` run in `dir` with its output in `target`, without the variables the
/// outer `cargo test` set for this crate.
fn nested_cargo(dir: &Path, target: &Path) -> std::process::Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = std::process::Command::new(cargo);
    command.current_dir(dir).env("CARGO_TARGET_DIR", target);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
        {
            command.env_remove(key.as_ref());
        }
    }
    command
}

/// Runs a command to success and returns its stdout and stderr.
trait AssertSuccess {
    fn assert_success(&mut self, what: &str) -> String;
}

impl AssertSuccess for std::process::Command {
    fn assert_success(&mut self, what: &str) -> String {
        let output = self.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{what}: {}\n{text}", output.status);
        text
    }
}
