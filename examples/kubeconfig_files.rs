//! Kubeconfig files: clusters come and go as files appear in and vanish from a
//! directory.
//!
//! Starts a local fleet (the manager's cluster plus three), and runs the uniform
//! reconciler over the `file` provider watching a directory. It writes two
//! kubeconfigs there at start, a third a few seconds later, then deletes the first:
//! each change engages or disengages exactly one cluster. Edit the directory yourself
//! too (the path is printed); stop with Ctrl-C.
//!
//!     cargo run -p examples --example kubeconfig_files
//!     cargo run -p examples --example kubeconfig_files -- --dir ./my-fleet   # keep the directory

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use examples::fleet::LocalFleet;
use examples::uniform::{self, Progress};
use multicluster_runtime::Manager;
use multicluster_runtime::providers::file::{FileNaming, Files};

#[derive(Parser)]
struct Args {
    /// The directory to watch (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let args = Args::parse();
    let temporary = tempfile::tempdir()?;
    let dir = args.dir.unwrap_or_else(|| temporary.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let fleet = LocalFleet::start(4).await?;
    for index in 1..=3 {
        uniform::create_managed(fleet.client(index)?, "app-settings").await?;
    }
    write(&fleet, &dir, 1)?;
    write(&fleet, &dir, 2)?;

    // `cluster-1.kubeconfig`, whose one context is `cluster-1`, is the cluster `cluster-1`.
    let provider = Arc::new(Files::builder().path(&dir).naming(FileNaming::Short).build());
    let manager = Manager::with_provider(fleet.local()?, provider);
    uniform::controller(&manager)
        .register(uniform::reconcile, uniform::error_policy, Progress::new())
        .await?;
    println!("watching {}", dir.display());
    let script = async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        write(&fleet, &dir, 3)?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let first = file(&dir, 1);
        println!("--- deleting {}", first.display());
        std::fs::remove_file(first)?;
        Ok(())
    };
    examples::run_demo(manager, script).await
}

fn file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("{}.kubeconfig", LocalFleet::name(index)))
}

/// Writes apiserver `index`'s admin kubeconfig into `dir`.
fn write(fleet: &LocalFleet, dir: &Path, index: usize) -> anyhow::Result<()> {
    let path = file(dir, index);
    println!("--- writing {}", path.display());
    std::fs::copy(fleet.fleet().cluster(index).kubeconfig_path(), &path)?;
    Ok(())
}
