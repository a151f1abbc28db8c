//! Prometheus text exposition of the agent's numbers, served over plain
//! HTTP/1.1 by a small tokio task (no framework: every request gets the page).
//!
//! The listener is bound on the caller's thread, so it lives in the caller's
//! network namespace (the lab runs the agent inside one).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default `--metrics-addr`: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9400";

/// Errors starting the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Binding or configuring the listener failed.
    #[error("failed to {op} metrics listener on {addr}: {source}")]
    Listen {
        /// What was being done.
        op: &'static str,
        /// The address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
}

/// The agent's counters and gauges, updated by the agent, read by scrapes.
#[derive(Debug, Default)]
pub struct Metrics {
    ct_entries: AtomicU64,
    ct_max_entries: AtomicU64,
    ct_insert_failures: AtomicU64,
    events_lost: AtomicU64,
    packets: AtomicU64,
    spans_server: AtomicU64,
    spans_client: AtomicU64,
    otlp_exported: AtomicU64,
    otlp_dropped_queue_full: AtomicU64,
    otlp_dropped_export_failed: AtomicU64,
    otlp_dropped_rejected: AtomicU64,
}

/// What the OTLP exporter did with the spans handed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OtlpCounts {
    /// Accepted by the collector.
    pub exported: u64,
    /// Dropped because the queue was full.
    pub queue_full: u64,
    /// Lost because the post failed after its retries.
    pub export_failed: u64,
    /// Rejected by the collector (partial success).
    pub rejected: u64,
}

impl Metrics {
    /// CT table size and capacity.
    pub fn set_ct(&self, entries: u64, max_entries: u64) {
        self.ct_entries.store(entries, Ordering::Relaxed);
        self.ct_max_entries.store(max_entries, Ordering::Relaxed);
    }

    /// Kernel counters (totals since load).
    pub fn set_kernel_counters(&self, packets: u64, ct_insert_failures: u64, events_lost: u64) {
        self.packets.store(packets, Ordering::Relaxed);
        self.ct_insert_failures.store(ct_insert_failures, Ordering::Relaxed);
        self.events_lost.store(events_lost, Ordering::Relaxed);
    }

    /// One more span of this kind.
    pub fn inc_span(&self, kind: crate::span::SpanKind) {
        let c = match kind {
            crate::span::SpanKind::Server => &self.spans_server,
            crate::span::SpanKind::Client => &self.spans_client,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Spans counted so far, by kind (server, client).
    pub fn spans(&self) -> (u64, u64) {
        (self.spans_server.load(Ordering::Relaxed), self.spans_client.load(Ordering::Relaxed))
    }

    /// Spans the collector accepted.
    pub fn add_otlp_exported(&self, n: u64) {
        self.otlp_exported.fetch_add(n, Ordering::Relaxed);
    }

    /// Spans lost on the way to the collector, by reason.
    pub fn add_otlp_dropped(&self, reason: crate::otlp::OtlpDrop, n: u64) {
        use crate::otlp::OtlpDrop;
        let c = match reason {
            OtlpDrop::QueueFull => &self.otlp_dropped_queue_full,
            OtlpDrop::ExportFailed => &self.otlp_dropped_export_failed,
            OtlpDrop::Rejected => &self.otlp_dropped_rejected,
        };
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The OTLP exporter's counts so far.
    pub fn otlp(&self) -> OtlpCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OtlpCounts {
            exported: get(&self.otlp_exported),
            queue_full: get(&self.otlp_dropped_queue_full),
            export_failed: get(&self.otlp_dropped_export_failed),
            rejected: get(&self.otlp_dropped_rejected),
        }
    }

    /// The exposition page (text format 0.0.4).
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let entries = get(&self.ct_entries);
        let max = get(&self.ct_max_entries);
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        metric("tclab_ct_entries", "gauge", "Entries in the connection-tracking table.", &[("", entries.to_string())]);
        metric(
            "tclab_ct_pressure_ratio",
            "gauge",
            "CT entries divided by the table's maximum size.",
            &[("", format!("{}", crate::ct::pressure(entries, max)))],
        );
        metric(
            "tclab_ct_insert_failures_total",
            "counter",
            "CT inserts that failed because the table was full (packets still passed).",
            &[("", get(&self.ct_insert_failures).to_string())],
        );
        metric(
            "tclab_events_lost_total",
            "counter",
            "Events the datapath could not put on the ring buffer.",
            &[("", get(&self.events_lost).to_string())],
        );
        metric(
            "tclab_spans_total",
            "counter",
            "HTTP spans produced, by kind.",
            &[
                ("{kind=\"server\"}", get(&self.spans_server).to_string()),
                ("{kind=\"client\"}", get(&self.spans_client).to_string()),
            ],
        );
        metric("tclab_packets_total", "counter", "Packets seen by the classifiers.", &[("", get(&self.packets).to_string())]);
        let otlp = self.otlp();
        metric(
            "tclab_otlp_spans_exported_total",
            "counter",
            "Spans the OTLP collector accepted.",
            &[("", otlp.exported.to_string())],
        );
        metric(
            "tclab_otlp_spans_dropped_total",
            "counter",
            "Spans lost on the way to the OTLP collector, by reason.",
            &[
                ("{reason=\"queue_full\"}", otlp.queue_full.to_string()),
                ("{reason=\"export_failed\"}", otlp.export_failed.to_string()),
                ("{reason=\"rejected\"}", otlp.rejected.to_string()),
            ],
        );
        s
    }
}

/// A running metrics endpoint; stops (and joins its thread) on drop.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Bind `addr` (port 0 picks one) on this thread's namespace and serve.
    ///
    /// # Errors
    /// [`MetricsError::Listen`] when bind fails (address in use, no such address).
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<MetricsServer, MetricsError> {
        let err = |op, source| MetricsError::Listen { op, addr, source };
        let std_listener = std::net::TcpListener::bind(addr).map_err(|e| err("bind", e))?;
        std_listener.set_nonblocking(true).map_err(|e| err("set non-blocking", e))?;
        let local = std_listener.local_addr().map_err(|e| err("query", e))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(|e| err("start runtime for", e))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("tclab-metrics".into())
            .spawn(move || rt.block_on(serve(std_listener, metrics, rx)))
            .map_err(|e| err("spawn thread for", e))?;
        tracing::info!(addr = %local, "serving Prometheus metrics");
        Ok(MetricsServer { addr: local, stop: Some(tx), thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "failed to register the metrics listener");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => { tokio::spawn(answer(sock, metrics.clone())); }
                Err(e) => tracing::warn!(error = %e, "failed to accept a metrics connection"),
            },
        }
    }
}

async fn answer(mut sock: tokio::net::TcpStream, metrics: Arc<Metrics>) {
    // Read the request head (bounded); the path does not matter.
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match sock.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let body = metrics.render();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(body.as_bytes()).await;
    let _ = sock.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_metric() {
        let m = Metrics::default();
        m.set_ct(3, 12);
        m.set_kernel_counters(10, 1, 2);
        m.inc_span(crate::span::SpanKind::Server);
        let page = m.render();
        assert!(page.contains("tclab_ct_entries 3\n"), "{page}");
        assert!(page.contains("tclab_ct_pressure_ratio 0.25\n"), "{page}");
        assert!(page.contains("tclab_ct_insert_failures_total 1\n"));
        assert!(page.contains("tclab_events_lost_total 2\n"));
        assert!(page.contains("tclab_spans_total{kind=\"server\"} 1\n"));
        assert!(page.contains("tclab_packets_total 10\n"));
        m.add_otlp_exported(5);
        m.add_otlp_dropped(crate::otlp::OtlpDrop::QueueFull, 2);
        let page = m.render();
        assert!(page.contains("tclab_otlp_spans_exported_total 5\n"), "{page}");
        assert!(page.contains("tclab_otlp_spans_dropped_total{reason=\"queue_full\"} 2\n"), "{page}");
        assert!(page.contains("tclab_otlp_spans_dropped_total{reason=\"export_failed\"} 0\n"), "{page}");
    }
}
