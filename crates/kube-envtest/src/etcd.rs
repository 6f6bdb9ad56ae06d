//! One etcd server, shared by several apiservers or owned by one.

use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ports::{PORT_ATTEMPTS, free_port, is_port_conflict};
use crate::process::Process;

/// A running etcd on a loopback port, with its data in a directory of its own.
#[derive(Debug)]
pub(crate) struct Etcd {
    process: Process,
    url: String,
}

impl Etcd {
    /// Starts etcd with its data under `dir` and its log at `log`, and waits until it
    /// accepts connections.
    pub async fn start(binary: &Path, name: &str, dir: &Path, log: &Path, timeout: Duration) -> Result<Self> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_once(binary, name, dir, log, timeout).await {
                Err(err) if is_port_conflict(&err) => last = Some(err),
                other => return other,
            }
        }
        Err(last.expect("PORT_ATTEMPTS is not zero"))
    }

    async fn start_once(
        binary: &Path,
        name: &str,
        dir: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let data = dir.join("data");
        let args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            // A single member never talks to peers; port 0 avoids a second port race.
            "--listen-peer-urls=http://127.0.0.1:0".into(),
            // Tests do not need durability; fsync dominates etcd's latency otherwise.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        let mut process = Process::spawn(format!("etcd {name}"), binary, &args, log)?;
        let started = Instant::now();
        loop {
            process.check_running()?;
            if TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(200))
                .is_ok()
            {
                return Ok(Etcd { process, url });
            }
            if started.elapsed() > timeout {
                return Err(Error::NotReady {
                    what: format!("etcd {name}"),
                    waited: timeout,
                    last: format!("port {port} does not accept connections"),
                    log: log.to_path_buf(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The client URL apiservers connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
