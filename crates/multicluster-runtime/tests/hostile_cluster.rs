//! One hostile member cannot exhaust the controller's memory (x04, issue 22).
//!
//! Beside a real cluster, two "apiservers" written here answer with bodies that
//! never end: one to every request, the other with an empty list and then a watch
//! line without a newline. The controller's peak resident memory stays bounded, the
//! hostile clusters are reported unhealthy with a reason that names the limit, and
//! the real cluster keeps reconciling.
//!
//! Alone in its test binary: the peak resident memory of the process is this
//! test's.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use multicluster_runtime::cache::CacheOptions;
use multicluster_runtime::cluster::HealthState;
use multicluster_runtime::controller::Controller;
use multicluster_runtime::manager::HealthProbes;
use multicluster_runtime::{Cluster, ClusterName};
use support::fleet::{Env, create_cm, recording, wait_engaged};
use support::{WAIT, wait_until};
use tokio::net::TcpListener;

/// Far below the 1.5 GiB one such member drove the controller to before the
/// limits, and what a 256Mi pod can hold.
const PEAK_RSS_LIMIT_MIB: u64 = 256;

/// How a hostile server answers.
#[derive(Clone, Copy)]
enum Hostile {
    /// Every request: an endless body.
    EndlessBodies,
    /// `/readyz`: an endless body; a list: an empty list; a watch: one endless
    /// line.
    EndlessWatchLine,
}

static CHUNK: [u8; 64 << 10] = [b'x'; 64 << 10];

fn endless() -> BoxBody<Bytes, Infallible> {
    let chunks = futures::stream::repeat_with(|| Ok(Frame::data(Bytes::from_static(&CHUNK))));
    BoxBody::new(StreamBody::new(chunks))
}

fn answer(mode: Hostile, request: &Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    let watch = request.uri().query().is_some_and(|q| q.contains("watch=true"));
    let body = match mode {
        Hostile::EndlessWatchLine if request.uri().path() != "/readyz" && !watch => {
            let list =
                r#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[]}"#;
            BoxBody::new(Full::new(Bytes::from_static(list.as_bytes())))
        }
        _ => endless(),
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves `mode` on a loopback port until the test ends.
async fn serve(mode: Hostile) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    service_fn(move |request| async move { Ok::<_, Infallible>(answer(mode, &request)) });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// The process's peak resident memory so far, in MiB (`VmHWM`).
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number");
    kib / 1024
}

fn assert_bounded(when: &str) {
    let peak = peak_rss_mib();
    assert!(
        peak < PEAK_RSS_LIMIT_MIB,
        "{when}: the controller's peak resident memory reached {peak} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x04_a_hostile_cluster_cannot_exhaust_memory_nor_stop_the_others() {
    let capture = support::logs::Capture::default();
    tracing::subscriber::set_global_default(capture.subscriber("warn,kube_client=off,kube_runtime=off"))
        .expect("the only subscriber of this binary");

    let env = Env::new(1).await;
    let _ = env.manager.clone().with_health_probes(
        HealthProbes::default()
            .interval(Duration::from_millis(200))
            .failure_threshold(1),
    );
    create_cm(env.client(1), "before", &[]).await;
    let (controller, recorder) = recording(Controller::builder(&env.manager)).await;
    env.start();
    recorder.wait_for("c1", "before", 1).await;
    let before = peak_rss_mib();

    // The library's defaults: no limit chosen for this test.
    for (name, mode) in [
        ("endless-bodies", Hostile::EndlessBodies),
        ("endless-line", Hostile::EndlessWatchLine),
    ] {
        let address = serve(mode).await;
        let config = kube::Config::new(format!("http://{address}").parse().expect("a URL"));
        let mut options = multicluster_runtime::cluster::ClusterOptions::default();
        if matches!(mode, Hostile::EndlessBodies) {
            // Its first list paged, so that the endless answer is a list's body: a
            // streamed first list is a watch, which the other member covers.
            options = options.cache(CacheOptions::default().streaming_lists(false));
        }
        let cluster = Cluster::from_config(name, config, options).expect("a client");
        env.provider.add(Arc::new(cluster)).await.expect("add");
    }
    wait_engaged(&controller, &["c1", "endless-bodies", "endless-line"]).await;

    // Each hostile member fails several times, the way it fails (its failure is
    // logged once, the repeats counted), while the peak memory stays bounded
    // throughout.
    let mut members = Vec::new();
    for name in ["endless-bodies", "endless-line"] {
        members.push(
            env.manager
                .get_cluster(&ClusterName::from(name))
                .await
                .expect("engaged"),
        );
    }
    let started = tokio::time::Instant::now();
    loop {
        assert_bounded("while the hostile members were answering");
        let logs = capture.text();
        let logged = |cluster: &str, limit: &str| {
            logs.lines().any(|l| {
                l.contains("watch failed") && l.contains(&format!("cluster={cluster}")) && l.contains(limit)
            })
        };
        let failures: Vec<u64> = members
            .iter()
            .map(|m| m.cache().informer_statuses().iter().map(|s| s.failures).sum())
            .collect();
        if logged("endless-bodies", "ClientOptions::response_limits.body")
            && logged("endless-line", "ClientOptions::response_limits.watch_event")
            && failures.iter().all(|&n| n >= 3)
        {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "each hostile member fails three times by its limit (failures {failures:?}, logs:\n{logs})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Both are unhealthy, with a reason that says why.
    wait_until("both hostile members unhealthy", || {
        assert_bounded("while probing the hostile members");
        let health = env.manager.cluster_health();
        ["endless-bodies", "endless-line"].iter().all(|name| {
            health.get(&ClusterName::from(*name)).is_some_and(|h| {
                matches!(h.state, HealthState::Unhealthy { .. })
                    && h.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("the answer is longer than 65536 bytes"))
            })
        })
    })
    .await;

    // The real cluster keeps reconciling.
    create_cm(env.client(1), "after", &[]).await;
    recorder.wait_for("c1", "after", 1).await;
    assert_bounded("at the end");
    let after = peak_rss_mib();
    eprintln!("x04: peak resident memory {before} MiB before the hostile members, {after} MiB after");
}
