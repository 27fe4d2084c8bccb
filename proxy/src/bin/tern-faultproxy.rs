//! `tern-faultproxy`: a bad WAN between a tern client and server, for demos.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tern_faultproxy::{FaultProxy, Faults};

#[derive(Parser)]
#[command(
    name = "tern-faultproxy",
    about = "Forward TCP to a tern server while cutting, stalling, throttling and delaying it"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9444")]
    listen: String,
    /// The server to forward to.
    #[arg(long, default_value = "127.0.0.1:9443")]
    target: String,
    /// Cut every connection every SECONDS.
    #[arg(long)]
    cut_every: Option<f64>,
    /// Add this one-way latency in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Cap each connection at this many bytes per second.
    #[arg(long)]
    conn_rate: Option<u64>,
    /// Cap the whole link at this many bytes per second.
    #[arg(long)]
    link_rate: Option<u64>,
    /// Print the counters every this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    report_ms: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let target = std::net::ToSocketAddrs::to_socket_addrs(&cli.target)
        .context("resolving --target")?
        .next()
        .context("--target resolves to nothing")?;
    let faults = Faults {
        latency: Duration::from_millis(cli.latency_ms),
        per_connection_rate: cli.conn_rate,
        link_rate: cli.link_rate,
        cut_every: cli.cut_every.map(Duration::from_secs_f64),
        ..Faults::default()
    };
    let proxy = FaultProxy::start(&cli.listen, target, faults).context("starting the proxy")?;
    println!("forwarding {} -> {target}", proxy.addr());
    loop {
        std::thread::sleep(Duration::from_millis(cli.report_ms.max(1)));
        println!(
            "accepted {} connections, cut {}, {} bytes to the server",
            proxy.accepted(),
            proxy.cuts(),
            proxy.bytes_to_server()
        );
    }
}
