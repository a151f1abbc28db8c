//! `tclab testserver`: small HTTP/1.1 services that call each other in a
//! chain (`/traceme` → `/tracemetoo` → `/users`), each in its own network
//! namespace, for the context-propagation checks (issue #6).
//!
//! * [`service`]: one service (server + downstream client), `tclab
//!   testserver serve`;
//! * [`chain`]: the three-service topology with the services as child
//!   processes, `tclab testserver chain`;
//! * [`http`]: the HTTP/1.1 subset they speak;
//! * [`tls`]: TLS hops (rustls; a self-signed certificate per TLS service,
//!   trusted exactly by its caller);
//! * [`cgroup`]: per-service cgroup v2 folders (what the agent attaches to);
//! * [`traced`]: the chain with one agent per service and a propagation
//!   mode, its spans checked as one trace.
//!
//! The services never propagate trace context themselves (unless a service
//! is told to forward it, standing for an SDK-instrumented application):
//! making one trace out of the chain is the agent's job.

pub mod cgroup;
pub mod chain;
pub mod http;
pub mod scenario;
pub mod service;
pub mod tls;
pub mod traced;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;

use service::{Client, Route, ServiceSpec, Target};

/// `tclab testserver …`
#[derive(Debug, clap::Args)]
pub struct TestserverArgs {
    #[command(subcommand)]
    pub command: TestserverCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TestserverCommand {
    /// Serve HTTP/1.1 on one address; prints `ready ADDR` once listening.
    Serve {
        /// Name shown in the JSON documents.
        #[arg(long)]
        name: String,
        /// Address to listen on (IP:PORT).
        #[arg(long)]
        listen: SocketAddr,
        /// PATH (answered here) or PATH=http://IP:PORT/PATH (answered after
        /// calling that URL, on the serving thread; https:// with
        /// --downstream-ca). Repeatable.
        #[arg(long = "route", required = true)]
        routes: Vec<Route>,
        /// Copy the incoming traceparent/tracestate to the downstream call
        /// (an application that propagates by itself).
        #[arg(long)]
        forward_traceparent: bool,
        /// One downstream connection per call instead of a kept-alive one.
        #[arg(long)]
        no_downstream_keepalive: bool,
        /// Answer first, then make the downstream call on the same thread
        /// (work after the response: outside the request's trace).
        #[arg(long)]
        call_after_response: bool,
        /// Serve over TLS: make a self-signed certificate for the listening
        /// IP at start and write it (PEM) to this file for the callers.
        #[arg(long, value_name = "PATH")]
        tls_cert_out: Option<std::path::PathBuf>,
        /// Trust exactly the certificates (PEM) in this file for
        /// https:// routes (read at each new downstream connection).
        #[arg(long, value_name = "PATH")]
        downstream_ca: Option<std::path::PathBuf>,
    },
    /// GET a URL and print the JSON document it answers.
    Get {
        /// http://IP:PORT/PATH or https://… (with --ca)
        url: Target,
        /// Extra header, `Name: value`. Repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Number of requests (on one kept-alive connection).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Trust exactly the certificates (PEM) in this file (https:// URLs).
        #[arg(long, value_name = "PATH")]
        ca: Option<std::path::PathBuf>,
    },
    /// Build the three-service chain in throwaway namespaces, send requests
    /// through it from a client namespace and print what each hop received.
    Chain {
        /// Requests to send.
        #[arg(long, default_value_t = 1)]
        requests: u32,
        /// Use IPv6 addresses.
        #[arg(long)]
        ipv6: bool,
        /// Extra header on the client's requests, `Name: value`. Repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Serve this service (backend, worker) over TLS: the hop into it
        /// is encrypted. Repeatable.
        #[arg(long = "tls", value_name = "SERVICE")]
        tls: Vec<String>,
        /// Run one agent per service with this context propagation mode
        /// (disabled, headers, tcp, ip, all) and print their span lines.
        #[arg(long, env = "TCLAB_CONTEXT_PROPAGATION")]
        propagation: Option<tclab_datapath::propagation::Mode>,
    },
}

fn parse_header(h: &str) -> anyhow::Result<(String, String)> {
    let (n, v) = h.split_once(':').with_context(|| format!("header {h:?}: expected `Name: value`"))?;
    Ok((n.trim().to_owned(), v.trim().to_owned()))
}

/// Run a `tclab testserver` command.
///
/// # Errors
/// Bad arguments, network or process errors.
pub fn main(args: TestserverArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TestserverCommand::Serve {
            name,
            listen,
            routes,
            forward_traceparent,
            no_downstream_keepalive,
            call_after_response,
            tls_cert_out,
            downstream_ca,
        } => {
            let spec = ServiceSpec {
                name,
                listen,
                routes,
                forward_traceparent,
                downstream_keepalive: !no_downstream_keepalive,
                call_after_response,
                tls_cert_out,
                downstream_ca,
            };
            service::serve(&spec, |addr| {
                let mut out = std::io::stdout();
                let _ = writeln!(out, "ready {addr}");
                let _ = out.flush();
            })?;
            Ok(ExitCode::SUCCESS)
        }
        TestserverCommand::Get { url, headers, count, ca } => {
            let extra = headers.iter().map(|h| parse_header(h)).collect::<anyhow::Result<Vec<_>>>()?;
            let mut client = Client::new(true);
            if let Some(ca) = ca {
                client = client.with_ca(ca);
            }
            let mut failed = false;
            for _ in 0..count {
                let (status, doc) = client.get(&url, &extra)?;
                failed |= status != 200;
                println!("{status} {doc}");
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        TestserverCommand::Chain { requests, ipv6, headers, tls, propagation } => {
            if !nix::unistd::geteuid().is_root() {
                anyhow::bail!("tclab testserver chain needs root (network namespaces): sudo -E tclab testserver chain");
            }
            let extra = headers.iter().map(|h| parse_header(h)).collect::<anyhow::Result<Vec<_>>>()?;
            let exe = std::env::current_exe().context("failed to find the tclab binary")?;
            let mut opts = chain::ChainOptions::new(exe);
            opts.ipv6 = ipv6;
            opts.tls = tls;
            let mut failed = false;
            match propagation {
                None => {
                    let chain = chain::Chain::start(&opts)?;
                    for _ in 0..requests {
                        let (status, doc) = chain.get(&extra)?;
                        failed |= status != 200;
                        println!("{status} {}", serde_json::to_string_pretty(&doc)?);
                    }
                }
                Some(mode) => {
                    let backend = tclab_datapath::attach::Backend::Auto;
                    let mut traced = traced::TracedChain::start(&opts, mode, backend)?;
                    for (svc, c) in traced.correlation() {
                        if let tclab_datapath::propagation::Correlation::Off(why) = c {
                            eprintln!("{svc}: correlation off: {why}");
                        }
                    }
                    for _ in 0..requests {
                        let (status, _) = traced.chain.get(&extra)?;
                        failed |= status != 200;
                        let spans = traced.collect(traced.expected.len(), std::time::Duration::from_secs(5));
                        for line in traced.beyla_lines(&spans) {
                            println!("{line}");
                        }
                        match traced::check_trace(&spans, None, &traced.expected) {
                            Ok(()) => println!("one trace, {} spans, parents linked\n", spans.len()),
                            Err(e) => {
                                failed = true;
                                println!("NOT one trace: {e:#}\n");
                            }
                        }
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}
