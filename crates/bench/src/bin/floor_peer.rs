//! The floor: kube's plain `watcher` per cluster, counting the objects it sees. No
//! queue, no cache, no controller: the least any controller must do to see the same
//! objects and updates. See `bench/README.md`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use mcr_bench::{PeerArgs, Tally, WRITTEN_AT};

#[tokio::main]
async fn main() {
    mcr_bench::run_peer("floor-peer", run).await
}

async fn run(args: PeerArgs, start: Instant, wall_start: SystemTime) -> Result<mcr_bench::Report, String> {
    let files = mcr_bench::kubeconfig_files(&args.kubeconfigs)?;
    let tally = Arc::new(Tally::new(wall_start, args.expected, args.updates));
    // Its first list streamed, as the library's informers list by default
    // (`CacheOptions::streaming_lists`): the floor is the same list and watch, minus
    // the library, so that what the Rust peer holds above it is the library's.
    let mut config = watcher::Config::default().streaming_lists();
    if !args.selector.is_empty() {
        config = config.labels(&args.selector);
    }
    let clusters = files.len();
    mcr_bench::mark("started");
    for (name, path) in files {
        let client =
            kube::Client::try_from(mcr_bench::load_config(&path).await?).map_err(|e| e.to_string())?;
        let (tally, config) = (tally.clone(), config.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher::watcher(Api::<ConfigMap>::all(client), config));
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Apply(cm) | Event::InitApply(cm)) => {
                        tally.record(
                            &name,
                            cm.namespace().as_deref(),
                            &cm.name_any(),
                            cm.annotations().get(WRITTEN_AT).map(String::as_str),
                        );
                    }
                    Ok(Event::Init) => mcr_bench::mark(format_args!("listing {name}")),
                    Ok(Event::InitDone) => mcr_bench::mark(format_args!("listed {name}")),
                    Ok(_) => {}
                    Err(error) => eprintln!("floor-peer: {name}: {error}"),
                }
            }
        });
    }
    Ok(mcr_bench::measure("floor", &args, clusters, start, &tally, std::future::ready(())).await)
}
