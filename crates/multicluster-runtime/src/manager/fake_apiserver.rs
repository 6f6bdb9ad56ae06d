//! A plain-HTTP stand-in for an apiserver in the manager's unit tests: counts the
//! requests it reads and answers each as the test says (or never).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What to answer to a request: the raw HTTP response, or `None` to never answer.
pub(crate) type Answer = Arc<dyn Fn() -> Option<&'static str> + Send + Sync>;

/// Starts the server on a loopback port and returns its URL; `requests` counts the
/// requests read.
pub(crate) async fn serve(answer: Answer, requests: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (answer, requests) = (answer.clone(), requests.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while !request.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    request.clear();
                    requests.fetch_add(1, Ordering::SeqCst);
                    let Some(response) = answer() else {
                        std::future::pending::<()>().await;
                        return;
                    };
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}
