//! The manager's operational endpoints (x05, issue 22): probes and metrics on
//! addresses of their own; metrics over TLS with callers authenticated and
//! authorized by the manager's own (real) apiserver; certificate files read again
//! when they change; failure reasons withheld on the probe port; a connection limit
//! and a connection timeout; IPv6 and dual-stack addresses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kube_envtest::Fleet;
use multicluster_runtime::manager::{HealthCheck, MetricsEndpoint, ProbeEndpoint, ServingCertificate};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Cluster, Error, Manager};
use support::{eventually, http, rbac, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

mod support;

/// Starts `manager` on a task; the token stops it (and it is cancelled on drop).
struct Running {
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<multicluster_runtime::Result<()>>>,
}

impl Running {
    fn start(manager: &Manager) -> Self {
        let token = CancellationToken::new();
        let (runner, stop) = (manager.clone(), token.clone());
        let task = tokio::spawn(async move { runner.start(stop).await });
        Running {
            token,
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.token.cancel();
        let task = self.task.take().expect("running");
        task.await.expect("join").expect("the manager stops cleanly");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A manager whose own cluster does not answer: enough for what the endpoints do
/// without an apiserver (TLS, limits, addresses).
fn manager_without_apiserver() -> Manager {
    let nowhere = kube::Config::new("https://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(nowhere).expect("client");
    Manager::new(Arc::new(Cluster::new("", client))).without_health_probes()
}

/// The secure metrics endpoint, on IPv6 loopback with its self-signed certificate,
/// asks the manager's apiserver (as a user holding exactly
/// `deploy/rbac/metrics-auth.yaml`): no token or a made-up one gets 401, a
/// ServiceAccount without `get` on `/metrics` gets 403, one with it gets the
/// metrics. The probes are on a port of their own and need no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x05_secure_metrics_need_a_token_allowed_to_get_metrics() {
    let fleet = Fleet::start(1).await.expect("start fleet");
    let admin = fleet.cluster(0).client().expect("client");
    let reviewer = fleet
        .cluster(0)
        .create_user(rbac::user("x05-manager", "metrics-auth.yaml", "default"))
        .await
        .expect("manager user")
        .client()
        .expect("client");
    let manager = Manager::new(Arc::new(Cluster::new("", reviewer)))
        .with_probe_endpoint(ProbeEndpoint::new("127.0.0.1:0".parse().unwrap()))
        .with_metrics_endpoint(MetricsEndpoint::secure("[::1]:0".parse().unwrap()));
    let scraper = rbac::service_account_token(&admin, "default", "scraper").await;
    let stranger = rbac::service_account_token(&admin, "default", "stranger").await;
    let (reader, _) = rbac::rules("metrics-reader.yaml");
    rbac::bind_service_account(&admin, "x05-metrics-reader", reader, "default", "scraper").await;
    let running = Running::start(&manager);
    wait_until("both endpoints listen", || {
        manager.metrics_address().is_some() && manager.probe_address().is_some()
    })
    .await;
    let metrics = manager.metrics_address().expect("metrics address");
    assert!(metrics.is_ipv6(), "{metrics}");
    let (client, seen) = http::accepting_any();
    let get = |token: Option<String>| {
        let client = client.clone();
        async move {
            http::get_tls(metrics, "/metrics", token.as_deref(), client)
                .await
                .expect("TLS exchange")
        }
    };

    let anonymous = get(None).await;
    assert_eq!(
        (anonymous.status, anonymous.body.as_str()),
        (401, "Unauthorized\n")
    );
    assert_eq!(get(Some("not-a-token".into())).await.status, 401);
    let forbidden = get(Some(stranger.clone())).await;
    assert_eq!((forbidden.status, forbidden.body.as_str()), (403, "Forbidden\n"));
    // RBAC reaches the apiserver's authorizer through its informer: a moment.
    let allowed = eventually("the scraper gets the metrics", || {
        let get = get(Some(scraper.clone()));
        async move { Some(get.await).filter(|r| r.status == 200) }
    })
    .await;
    assert!(
        allowed.content_type.starts_with("application/openmetrics-text"),
        "{allowed:?}"
    );
    assert!(allowed.body.ends_with("# EOF\n"), "{}", allowed.body);
    assert_eq!(get(Some(stranger)).await.status, 403, "still forbidden");
    assert!(!seen.lock().unwrap().is_empty(), "a certificate was shown");
    // The metrics port serves nothing else, whatever the token.
    let probe_there = http::get_tls(metrics, "/readyz", Some(&scraper), client.clone())
        .await
        .expect("TLS exchange");
    assert_ne!(probe_there.status, 200, "{probe_there:?}");

    let probes = manager.probe_address().expect("probe address");
    assert_eq!(http::get(probes, "/healthz").await.status, 200);
    assert_eq!(http::get(probes, "/livez").await.status, 200);
    assert_eq!(http::get(probes, "/metrics").await.status, 404);
    running.stop().await;
}

/// A certificate authority and a serving certificate for `localhost` signed by it,
/// as PEM (CA, certificate, key).
fn issue(authority: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.signed_by(&key, authority).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn authority() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    rcgen::CertifiedIssuer::self_signed(params, key).expect("CA")
}

/// Certificate files replaced on disk are served from the next handshake after
/// the reload interval; a client that trusts their authority verifies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x05_a_replaced_certificate_file_is_served_after_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca = authority();
    let (first_cert, first_key) = issue(&ca);
    std::fs::write(&cert_path, &first_cert).expect("write cert");
    std::fs::write(&key_path, &first_key).expect("write key");
    let certificate =
        ServingCertificate::files(&cert_path, &key_path).reload_interval(Duration::from_millis(50));
    let manager = manager_without_apiserver().with_metrics_endpoint(
        MetricsEndpoint::plain("127.0.0.1:0".parse().unwrap()).certificate(certificate),
    );
    let running = Running::start(&manager);
    wait_until("the metrics endpoint listens", || {
        manager.metrics_address().is_some()
    })
    .await;
    let address = manager.metrics_address().expect("address");

    let trusted = http::get_tls(address, "/metrics", None, http::trusting(&ca.pem()))
        .await
        .expect("the first certificate verifies");
    assert_eq!(trusted.status, 200);
    let (client, seen) = http::accepting_any();
    let served = || async {
        http::get_tls(address, "/metrics", None, client.clone())
            .await
            .expect("TLS exchange");
        seen.lock().unwrap().last().cloned().expect("a certificate")
    };
    let der = |pem: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM")
    };
    assert_eq!(served().await, der(&first_cert));

    let (second_cert, second_key) = issue(&ca);
    // Key first, then certificate: in between, the pair does not match and the
    // first one stays in service.
    std::fs::write(&key_path, &second_key).expect("write key");
    std::fs::write(&cert_path, &second_cert).expect("write cert");
    eventually("the second certificate is served", || async {
        (served().await == der(&second_cert)).then_some(())
    })
    .await;
    let trusted = http::get_tls(address, "/metrics", None, http::trusting(&ca.pem()))
        .await
        .expect("the second certificate verifies");
    assert_eq!(trusted.status, 200);
    running.stop().await;
}

/// Certificate files that cannot be used, or authorization over plain HTTP, fail
/// `start` with an error that names the problem (and the file), not a running
/// manager without metrics.
#[tokio::test]
async fn x05_unusable_metrics_settings_fail_start_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.crt");
    let manager = manager_without_apiserver().with_metrics_endpoint(
        MetricsEndpoint::secure("127.0.0.1:0".parse().unwrap()).certificate(ServingCertificate::files(
            &missing,
            dir.path().join("missing.key"),
        )),
    );
    let err = manager
        .start(CancellationToken::new())
        .await
        .expect_err("missing files");
    assert!(matches!(err, Error::Endpoint { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.crt"), "{err}");

    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let manager = manager_without_apiserver().with_metrics_endpoint(
        MetricsEndpoint::plain("127.0.0.1:0".parse().unwrap())
            .certificate(ServingCertificate::files(&garbage, &garbage)),
    );
    let err = manager
        .start(CancellationToken::new())
        .await
        .expect_err("garbage files");
    assert!(err.to_string().contains("garbage.crt"), "{err}");

    let manager = manager_without_apiserver().with_metrics_endpoint(
        MetricsEndpoint::plain("127.0.0.1:0".parse().unwrap()).authentication_and_authorization(true),
    );
    let err = manager
        .start(CancellationToken::new())
        .await
        .expect_err("authorization without TLS");
    assert!(err.to_string().contains("need TLS"), "{err}");
}

/// On the probe port, a failing check says only its name (`reason withheld`), and
/// the provider's clusters are one line without their names, with or without
/// `?verbose`; the same manager's `readyz()` in code still says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x05_readyz_on_the_probe_port_withholds_reasons_and_cluster_names() {
    const SECRET: &str = "x05-password-in-an-error";
    let fleet = Fleet::start(2).await.expect("start fleet");
    let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
    let provider = Arc::new(Clusters::new());
    provider
        .add(Arc::new(Cluster::new(
            "customer-acme",
            fleet.cluster(1).client().expect("client"),
        )))
        .await
        .expect("add cluster");
    let manager = Manager::with_provider(local, provider)
        .with_probe_endpoint(ProbeEndpoint::new("127.0.0.1:0".parse().unwrap()));
    manager.add_readyz_check(HealthCheck::from_fn("database", || {
        Err::<(), _>(format!("connection refused: {SECRET}"))
    }));
    manager.add_healthz_check(HealthCheck::from_fn("deadlock", || {
        Err::<(), _>(format!("stuck: {SECRET}"))
    }));
    let running = Running::start(&manager);
    wait_until("the probe endpoint listens", || manager.probe_address().is_some()).await;
    let address = manager.probe_address().expect("address");
    let verbose = eventually("both clusters listed as one line", || async {
        let response = http::get(address, "/readyz?verbose").await;
        response.body.contains("[+]clusters ok").then_some(response)
    })
    .await;
    eprintln!("x05: /readyz?verbose\n{}", verbose.body);
    assert_eq!(verbose.status, 503);
    assert_eq!(
        verbose.body,
        "[+]manager ok\n[+]cluster \"\" ok\n[+]clusters ok\n[-]database failed: reason withheld\nreadyz check failed\n"
    );
    let terse = http::get(address, "/readyz").await;
    assert_eq!((terse.status, terse.body), (503, verbose.body));
    let health = http::get(address, "/healthz").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (
            503,
            "[+]ping ok\n[-]deadlock failed: reason withheld\nhealthz check failed\n"
        )
    );
    let in_code = manager.readyz().await.to_string();
    assert!(in_code.contains(SECRET), "{in_code}");
    assert!(in_code.contains("cluster \"customer-acme\" synced"), "{in_code}");
    running.stop().await;
}

/// With a limit of one connection, a second one is closed unanswered while the
/// first is open; a client that sends nothing is cut off at the connection timeout
/// (not hyper's 30 s header timeout), and its slot serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x05_connections_beyond_the_limit_are_closed_and_a_silent_client_is_cut_off() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let manager = manager_without_apiserver().with_probe_endpoint(
        ProbeEndpoint::new("127.0.0.1:0".parse().unwrap())
            .max_connections(1)
            .connection_timeout(TIMEOUT),
    );
    let running = Running::start(&manager);
    wait_until("the probe endpoint listens", || manager.probe_address().is_some()).await;
    let address = manager.probe_address().expect("address");
    assert_eq!(http::get(address, "/healthz").await.status, 200);

    // The accept queue is first in, first out: the silent client takes the slot.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(address).await.expect("connect");
    let mut second = TcpStream::connect(address).await.expect("connect");
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    // The server may have closed it already: a failed write is the same answer.
    let _ = second.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut answer))
        .await
        .expect("the second connection is closed, not left waiting");
    assert!(
        read.is_err() || answer.is_empty(),
        "the second connection was answered: {}",
        String::from_utf8_lossy(&answer)
    );

    let mut nothing = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut nothing)).await;
    let lasted = opened.elapsed();
    assert!(
        cut.is_ok(),
        "the silent client still holds its connection after 10 s"
    );
    assert!(lasted >= TIMEOUT, "cut off before its timeout: {lasted:?}");
    eventually("the slot serves the next client", || async {
        (http::get(address, "/healthz").await.status == 200).then_some(())
    })
    .await;
    running.stop().await;
}

/// `[::]` serves IPv4 and IPv6 clients alike (dual-stack, whatever the host's
/// `bindv6only` default), and `[::1]` binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x05_the_unspecified_ipv6_address_serves_ipv4_and_ipv6() {
    let manager = manager_without_apiserver()
        .with_probe_endpoint(ProbeEndpoint::new("[::]:0".parse().unwrap()))
        .with_metrics_endpoint(MetricsEndpoint::plain("[::1]:0".parse().unwrap()));
    let running = Running::start(&manager);
    wait_until("both endpoints listen", || {
        manager.probe_address().is_some() && manager.metrics_address().is_some()
    })
    .await;
    let port = manager.probe_address().expect("address").port();
    for client in [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ] {
        assert_eq!(http::get(client, "/healthz").await.status, 200, "{client}");
    }
    let metrics = http::get(manager.metrics_address().expect("address"), "/metrics").await;
    assert_eq!(metrics.status, 200);
    running.stop().await;
}
