//! Recovery from outages of any length (v01, issue 21): after an apiserver answers
//! again, a write to it is reconciled within one probe interval + 3 s, whether the
//! outage was shorter than the unhealthy threshold or longer; while it is down its
//! watch retries at a bounded rate, and its failures are logged once, not once per
//! retry.

mod support;

use std::time::{Duration, Instant};

use multicluster_runtime::ClusterName;
use multicluster_runtime::controller::Controller;
use multicluster_runtime::manager::HealthProbes;
use support::fleet::{Env, create_cm, recording, wait_engaged};

/// Each outage: the apiserver is stopped for this long (its shutdown takes a few
/// seconds more), then started again.
const OUTAGES: [Duration; 3] = [
    Duration::from_secs(3),
    Duration::from_secs(8),
    Duration::from_secs(20),
];

/// The probe interval (the default) plus the 3 s the issue allows for a list and a
/// reconcile.
const WITHIN: Duration = Duration::from_secs(5 + 3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v01_every_outage_is_recovered_within_a_probe_interval() {
    let capture = support::logs::Capture::default();
    tracing::subscriber::set_global_default(
        capture.subscriber("warn,multicluster_runtime=info,kube_client=off,kube_runtime=off"),
    )
    .expect("the only subscriber of this binary");
    let env = Env::new(2).await;
    assert_eq!(HealthProbes::DEFAULT_INTERVAL, WITHIN - Duration::from_secs(3));
    let (controller, recorder) = recording(Controller::builder(&env.manager)).await;
    env.start();
    wait_engaged(&controller, &["c1", "c2"]).await;
    let c1 = env
        .manager
        .get_cluster(&ClusterName::from("c1"))
        .await
        .expect("c1");
    let failures = || -> u64 { c1.cache().informer_statuses().iter().map(|s| s.failures).sum() };

    for (round, outage) in OUTAGES.into_iter().enumerate() {
        let failed_before = failures();
        let warned_before = warnings(&capture.text());
        let stopping = Instant::now();
        env.fleet.cluster(1).stop().await;
        // Writes go on elsewhere meanwhile, and are reconciled.
        let elsewhere = format!("during-{round}");
        create_cm(env.client(2), &elsewhere, &[]).await;
        recorder.wait_for("c2", &elsewhere, 1).await;
        tokio::time::sleep(outage.saturating_sub(stopping.elapsed())).await;
        let down_for = stopping.elapsed();
        env.fleet.cluster(1).start().await.expect("start c1 again");
        let back = Instant::now();

        let name = format!("after-{round}");
        create_cm(env.client(1), &name, &[]).await;
        recorder.wait_for("c1", &name, 1).await;
        let took = back.elapsed();
        let failed = failures() - failed_before;
        let warned = warnings(&capture.text()) - warned_before;
        eprintln!(
            "v01: c1 down {down_for:?} (stop asked for {outage:?}): a write after it answered again \
             reconciled in {took:?}; {failed} failed watch attempts, {warned} warnings"
        );
        assert!(
            took <= WITHIN,
            "outage {outage:?}: reconciled {took:?} after the apiserver was back; the logs about c1:\n{}",
            capture
                .text()
                .lines()
                .filter(|l| l.contains("c1"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The documented backoff (0.8 s doubling, at most 30 s, up to a quarter
        // more) allows 6 attempts in 30 s; a resource version too old adds a list.
        let allowed = 2 + 2 * (down_for.as_secs() / 5 + 1);
        assert!(
            failed <= allowed,
            "outage {outage:?}: {failed} failed attempts, at most {allowed}"
        );
        // One warning when the failures start, at most one more if their text
        // changes (refused, then timed out), not one per attempt.
        assert!(
            warned <= 2,
            "outage {outage:?}: {warned} warnings for {failed} failures"
        );
    }
}

/// Warnings about c1's failing watch logged so far.
fn warnings(logs: &str) -> usize {
    logs.lines()
        .filter(|line| line.contains("WARN") && line.contains("watch failed") && line.contains("cluster=c1"))
        .count()
}
