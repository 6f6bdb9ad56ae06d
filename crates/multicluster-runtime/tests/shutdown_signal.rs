//! c08: `Manager::start_until_signal` stops on SIGTERM as a deployed controller must.
//! Its own test binary: the signals go to the whole process.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube_envtest::Fleet;
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::{Cluster, Error, Manager};
use support::WAIT;
use support::logs::Logs;
use tokio::sync::mpsc;

/// Sends SIGTERM to this test process, as the kubelet does to a container.
fn sigterm() {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A manager whose controller reports each reconcile of the ConfigMap `name` and
/// then holds it for `hold` (a reconcile that outlives the drain when long).
async fn manager(
    client: kube::Client,
    name: &'static str,
    hold: Duration,
) -> (Manager, mpsc::UnboundedReceiver<()>) {
    // A cluster of its own: a stopped manager stops its local cluster's cache.
    let local = Arc::new(Cluster::new("", client));
    let manager = Manager::new(local).with_graceful_shutdown_timeout(Duration::from_secs(600));
    let (started, reconciles) = mpsc::unbounded_channel();
    Controller::builder::<ConfigMap>(&manager)
        .named(name)
        .register(
            move |req: ReconcileRequest<ConfigMap>, started: Arc<mpsc::UnboundedSender<()>>| {
                let ours = req.request.name() == name;
                async move {
                    if ours {
                        let _ = started.send(());
                        tokio::time::sleep(hold).await;
                    }
                    Ok::<_, std::io::Error>(Action::await_change())
                }
            },
            |_: &Request, _: &std::io::Error, _| Action::backoff(),
            Arc::new(started),
        )
        .await
        .expect("controller");
    (manager, reconciles)
}

#[tokio::test]
async fn c08_start_until_signal_drains_on_the_first_signal_and_stops_on_the_second() {
    let logs = Logs::capture();
    let fleet = Fleet::start(1).await.expect("fleet");
    let client = fleet.cluster(0).client().expect("client");
    for name in ["quick", "stuck"] {
        let mut config_map = ConfigMap::default();
        config_map.metadata.name = Some(name.into());
        Api::<ConfigMap>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &config_map)
            .await
            .expect("ConfigMap");
    }

    // One signal: the manager drains (its reconciles finish) and returns Ok.
    let (quick, mut reconciles) = manager(client.clone(), "quick", Duration::from_millis(300)).await;
    let running = tokio::spawn(async move { quick.start_until_signal().await });
    tokio::time::timeout(WAIT, reconciles.recv())
        .await
        .expect("reconciled")
        .expect("open");
    sigterm();
    let outcome = tokio::time::timeout(WAIT, running)
        .await
        .expect("stopped on SIGTERM");
    outcome.expect("joined").expect("a drained stop is a clean one");

    // Two signals: the second stops the wait for a reconcile that would hold the
    // drain for its ten minutes.
    let (stuck, mut reconciles) = manager(client, "stuck", Duration::from_secs(600)).await;
    let running = tokio::spawn(async move { stuck.start_until_signal().await });
    tokio::time::timeout(WAIT, reconciles.recv())
        .await
        .expect("reconciled")
        .expect("open");
    sigterm();
    // The first signal was taken (its log line, the second in this run) before the
    // second is sent: two signals sent at once may be seen as one.
    let draining = || {
        logs.text()
            .matches("shutdown signal: draining reconciles")
            .count()
    };
    support::wait_until("the second drain's log line", || draining() == 2).await;
    sigterm();
    let outcome = tokio::time::timeout(WAIT, running)
        .await
        .expect("stopped on the second SIGTERM");
    assert!(
        matches!(outcome.expect("joined"), Err(Error::ShutdownInterrupted)),
        "the second signal interrupts the drain"
    );
}
