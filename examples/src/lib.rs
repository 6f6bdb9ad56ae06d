//! Shared pieces of the examples: a local fleet to run against, readable logging
//! and the two demo reconcilers.
//!
//! Every example runs on its own: without arguments it starts a local fleet of real
//! apiservers (building them the first time) and stops it on Ctrl-C.

pub mod admission;
pub mod fleet;

/// The repository's README: its Rust code is compiled (and its fences checked) as
/// doctests of this crate, which has every dependency the README uses.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct RepositoryReadme;
pub mod sync;
pub mod uniform;

/// Logs to stderr as readable text: `info` for the examples and the library, quiet
/// for the client's retries of a cluster that is still starting, and for
/// kube-envtest's own lines (the local fleet prints its progress once, plainly).
/// `RUST_LOG` overrides it. Coloured only on a terminal: a file or a log collector
/// gets plain text.
pub fn init_tracing() {
    init_tracing_as(LogFormat::Text);
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable text, coloured only on a terminal.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, the other
    /// fields and the spans), as log collectors expect; never coloured.
    Json,
}

/// [`init_tracing`], in the given format.
pub fn init_tracing_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client=off,kube_runtime=warn,kube_envtest=warn")
    });
    match format {
        LogFormat::Text => {
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            log_format(std::io::stderr, terminal)
                .with_env_filter(filter)
                .init();
        }
        LogFormat::Json => json_log_format(std::io::stderr).with_env_filter(filter).init(),
    }
}

/// The examples' log lines, written to `writer`: no targets, and colour only if
/// `writer` is a `terminal` (c06, issue 19: ANSI codes ended up in log files).
pub fn log_format<W>(
    writer: W,
    terminal: bool,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    tracing_subscriber::filter::LevelFilter,
    W,
>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(terminal)
        .with_writer(writer)
}

/// The operator's `--log-format json` lines, written to `writer`: one JSON object
/// per event, with its target and the current span, no colour.
pub fn json_log_format<W>(
    writer: W,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    tracing_subscriber::filter::LevelFilter,
    W,
>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_ansi(false)
        .with_writer(writer)
}

/// Runs `manager` while `script` changes the fleet, then until Ctrl-C (or SIGTERM,
/// which also cuts the script short), and stops it cleanly.
///
/// # Errors
/// The script's error, or the manager's.
pub async fn run_demo(
    manager: multicluster_runtime::Manager,
    script: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let token = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });
    let interrupted = tokio::select! {
        result = script => { result?; false }
        () = shutdown_signal() => true,
    };
    if !interrupted {
        println!("--- press Ctrl-C to stop");
        shutdown_signal().await;
    }
    println!("--- stopping ...");
    token.cancel();
    running.await??;
    println!("--- stopped cleanly");
    Ok(())
}

/// Resolves when the user presses Ctrl-C (or the process gets SIGTERM).
pub use multicluster_runtime::manager::shutdown_signal;
