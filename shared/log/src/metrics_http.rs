//! A minimal Prometheus text endpoint (`GET /metrics`) for the services' metrics and container
//! healthchecks.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Renders the current metrics as Prometheus text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serve `GET /metrics` on `listener` with what `render` gives, until `stop` changes.
pub async fn serve(listener: TcpListener, render: Render, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((mut stream, _)) = accepted else { continue };
        let render = render.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let line = String::from_utf8_lossy(&request[..n]);
            let (status, body) = if line.starts_with("GET /metrics ") {
                ("200 OK", render())
            } else {
                ("404 Not Found", "try GET /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
