//! `ebpfcni bench-net serve|stream|rr`: the cross-node benchmark's load
//! (scripts/bench.sh): one TCP stream's throughput and 1-byte
//! request/response latency, the same code measuring pod to pod and node
//! to node, so their ratio is the network path's cost alone.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchNet {
    /// Serves streams (first byte 'S': read and discard) and
    /// request/response ('R': echo every byte) until killed.
    Serve {
        #[arg(long, default_value = "0.0.0.0:7300")]
        listen: SocketAddr,
    },
    /// One TCP stream for --secs seconds; prints bits per second.
    Stream {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 5)]
        secs: u64,
    },
    /// --count 1-byte round trips on one connection; prints mean and p99
    /// in microseconds.
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 20000)]
        count: usize,
    },
}

fn serve_one(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode)?;
    let mut buf = vec![0u8; 1 << 18];
    if mode[0] == b'R' {
        loop {
            let n = s.read(&mut buf[..1])?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..1])?;
        }
    }
    while s.read(&mut buf)? > 0 {}
    Ok(())
}

pub fn run(cmd: &BenchNet) -> Result<()> {
    match cmd {
        BenchNet::Serve { listen } => {
            let l = TcpListener::bind(listen).with_context(|| format!("listen on {listen}"))?;
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve_one(s));
            }
            Ok(())
        }
        BenchNet::Stream { to, secs } => {
            let mut s =
                TcpStream::connect_timeout(to, Duration::from_secs(3)).with_context(|| format!("connect {to}"))?;
            s.write_all(b"S")?;
            let chunk = vec![0x5au8; 1 << 17];
            let (start, mut sent) = (Instant::now(), 0u64);
            while start.elapsed() < Duration::from_secs(*secs) {
                s.write_all(&chunk)?;
                sent += chunk.len() as u64;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            let mut rest = [0u8; 1];
            let _ = s.read(&mut rest); // the server has read everything
            println!("{:.0}", sent as f64 * 8.0 / start.elapsed().as_secs_f64());
            Ok(())
        }
        BenchNet::Rr { to, count } => {
            let mut s =
                TcpStream::connect_timeout(to, Duration::from_secs(3)).with_context(|| format!("connect {to}"))?;
            s.set_nodelay(true)?;
            s.write_all(b"R")?;
            let mut b = [0u8; 1];
            for _ in 0..count / 10 {
                s.write_all(b"x")?; // warm-up
                s.read_exact(&mut b)?;
            }
            let mut times = Vec::with_capacity(*count);
            for _ in 0..*count {
                let t = Instant::now();
                s.write_all(b"x")?;
                s.read_exact(&mut b)?;
                times.push(t.elapsed().as_nanos() as f64 / 1000.0);
            }
            times.sort_by(f64::total_cmp);
            let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
            let p99 = times.get(times.len() * 99 / 100).copied().unwrap_or(0.0);
            println!("{mean:.1} {p99:.1}");
            Ok(())
        }
    }
}
