//! `interceptor-probe`: a TCP client and server that report a connection the way
//! the workload sees it. Used by the tests, the demo and the benchmarks, and by
//! operators checking what a pod's connection looks like.
//!
//! Data sent is a deterministic pseudo-random stream; each side reports the
//! SHA-256 of what it sent and of what it received, so a caller can check that
//! transfers through the interceptor are byte-identical in both directions.
//! Every report is one JSON line on stdout. `talk` instead plays a scripted
//! conversation (hex lines on stdin, one reply per line), for protocols whose
//! client tools cannot send a given message sequence.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(
    name = "interceptor-probe",
    about = "TCP probe: connect/serve/churn with byte-exact transfer reports"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect, send `--send` bytes (then half-close), read until EOF, report.
    Connect {
        addr: SocketAddr,
        #[arg(long, default_value_t = 0)]
        send: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Serve: per connection, send `--send` bytes (then half-close) while reading
    /// until EOF; report each connection.
    Serve {
        addr: SocketAddr,
        #[arg(long, default_value_t = 0)]
        send: u64,
        #[arg(long, default_value_t = 2)]
        seed: u64,
        /// Written once the socket listens.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Stop after this many connections (0: never).
        #[arg(long, default_value_t = 0)]
        max_conns: u64,
        /// Report failed connections only (for churn).
        #[arg(long)]
        quiet: bool,
        /// Read until the client's EOF before sending anything: the answer can
        /// only arrive if the client's half-close was passed on.
        #[arg(long)]
        after_eof: bool,
    },
    /// A scripted conversation: each line on stdin is hex bytes to send (`.`:
    /// nothing, for a server that speaks first); the reply is read until it holds `--until-hex` followed by `--then` more
    /// bytes (or, without a marker, until the peer is quiet for `--quiet-ms`)
    /// and reported as one JSON line. Ends at the end of stdin or the peer's EOF.
    Talk {
        addr: SocketAddr,
        #[arg(long)]
        until_hex: Option<String>,
        #[arg(long, default_value_t = 0)]
        then: usize,
        #[arg(long, default_value_t = 300)]
        quiet_ms: u64,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Open `count` connections one after another, each read to EOF then closed.
    Churn {
        addr: SocketAddr,
        #[arg(long)]
        count: u64,
    },
}

/// Deterministic byte stream (xorshift64*).
struct Pattern(u64);
impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn send_pattern(mut w: &TcpStream, total: u64, seed: u64) -> io::Result<String> {
    let mut p = Pattern(seed.max(1));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    w.shutdown(Shutdown::Write)?;
    Ok(hex(&h.finalize()))
}

fn read_all(mut r: &TcpStream) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf)? {
            0 => break,
            k => {
                h.update(&buf[..k]);
                n += k as u64;
            }
        }
    }
    Ok((n, hex(&h.finalize())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sends and receives at the same time (so neither side can deadlock on full buffers).
fn exchange(s: &TcpStream, send: u64, seed: u64) -> io::Result<serde_json::Value> {
    let writer = s.try_clone()?;
    let t = std::thread::spawn(move || send_pattern(&writer, send, seed));
    let (received, received_sha) = read_all(s)?;
    let sent_sha = t
        .join()
        .map_err(|_| io::Error::other("sender panicked"))??;
    Ok(json!({
        "sent": send, "sent_sha256": sent_sha,
        "received": received, "received_sha256": received_sha,
    }))
}

/// Reads everything first, then answers.
fn reply_after_eof(s: &TcpStream, send: u64, seed: u64) -> io::Result<serde_json::Value> {
    let (received, received_sha) = read_all(s)?;
    let sent_sha = send_pattern(s, send, seed)?;
    Ok(json!({
        "sent": send, "sent_sha256": sent_sha,
        "received": received, "received_sha256": received_sha,
    }))
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in `{s}`"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("not hex: `{s}`"))
        })
        .collect()
}

/// How a `talk` step decides that the reply is complete.
struct ReplyEnd {
    marker: Option<Vec<u8>>,
    then: usize,
    quiet: Duration,
    timeout: Duration,
}

impl ReplyEnd {
    fn complete(&self, got: &[u8]) -> bool {
        let Some(m) = self.marker.as_deref().filter(|m| !m.is_empty()) else {
            return false;
        };
        got.windows(m.len())
            .position(|w| w == m)
            .is_some_and(|at| got.len() >= at + m.len() + self.then)
    }

    /// Reads one reply; `true` with it when the peer closed.
    fn read(&self, mut s: &TcpStream) -> io::Result<(Vec<u8>, bool)> {
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let left = self.timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no complete reply"));
            }
            let wait = if self.marker.is_some() {
                left
            } else {
                self.quiet.min(left)
            };
            s.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
            match s.read(&mut buf) {
                Ok(0) => return Ok((got, true)),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if self.complete(&got) {
                        return Ok((got, false));
                    }
                }
                Err(e)
                    if self.marker.is_none()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    return Ok((got, false));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn talk(addr: SocketAddr, end: &ReplyEnd) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, end.timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    for (step, line) in io::stdin().lines().enumerate() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        if line.trim() != "." {
            s.write_all(&unhex(&line)?)
                .map_err(|e| format!("step {step}: send: {e}"))?;
        }
        let (got, closed) = end
            .read(&s)
            .map_err(|e| format!("step {step}: read: {e}"))?;
        println!(
            "{}",
            json!({"step": step, "received_hex": hex(&got), "closed": closed})
        );
        if closed {
            return Ok(());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Talk {
            addr,
            until_hex,
            then,
            quiet_ms,
            timeout_ms,
        } => {
            let marker = match until_hex.as_deref().map(unhex).transpose() {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("interceptor-probe: --until-hex: {e}");
                    return ExitCode::from(2);
                }
            };
            let end = ReplyEnd {
                marker,
                then,
                quiet: Duration::from_millis(quiet_ms),
                timeout: Duration::from_millis(timeout_ms),
            };
            match talk(addr, &end) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("{}", json!({"ok": false, "error": e}));
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Connect {
            addr,
            send,
            seed,
            timeout_ms,
        } => {
            let started = Instant::now();
            let s = match TcpStream::connect_timeout(&addr, Duration::from_millis(timeout_ms)) {
                Ok(s) => s,
                Err(e) => {
                    println!(
                        "{}",
                        json!({"ok": false, "stage": "connect", "error": e.to_string(), "kind": format!("{:?}", e.kind())})
                    );
                    return ExitCode::from(1);
                }
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(timeout_ms.max(60_000))));
            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
            match exchange(&s, send, seed) {
                Ok(mut v) => {
                    v["ok"] = true.into();
                    v["peer"] = peer.into();
                    v["local"] = local.into();
                    v["elapsed_ms"] = (started.elapsed().as_millis() as u64).into();
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!(
                        "{}",
                        json!({"ok": false, "stage": "transfer", "peer": peer, "local": local, "error": e.to_string(), "kind": format!("{:?}", e.kind())})
                    );
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Serve {
            addr,
            send,
            seed,
            ready_file,
            max_conns,
            quiet,
            after_eof,
        } => {
            let l = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("interceptor-probe: bind {addr}: {e}");
                    return ExitCode::from(1);
                }
            };
            if let Some(f) = ready_file {
                let _ =
                    std::fs::write(f, l.local_addr().map(|a| a.to_string()).unwrap_or_default());
            }
            let mut served = 0u64;
            let mut handles = Vec::new();
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                served += 1;
                let h = std::thread::spawn(move || {
                    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    let result = if after_eof {
                        reply_after_eof(&s, send, seed)
                    } else {
                        exchange(&s, send, seed)
                    };
                    match result {
                        Ok(mut v) => {
                            if !quiet {
                                v["peer"] = peer.into();
                                v["local"] = local.into();
                                println!("{v}");
                            }
                        }
                        Err(e) => println!(
                            "{}",
                            json!({"ok": false, "peer": peer, "error": e.to_string()})
                        ),
                    }
                });
                if max_conns > 0 {
                    handles.push(h);
                }
                if max_conns > 0 && served >= max_conns {
                    break;
                }
            }
            for h in handles {
                let _ = h.join();
            }
            ExitCode::SUCCESS
        }
        Cmd::Churn { addr, count } => {
            let started = Instant::now();
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut first_error = None;
            let mut buf = [0u8; 256];
            for _ in 0..count {
                let r =
                    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        while s.read(&mut buf)? > 0 {}
                        Ok(())
                    });
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            println!(
                "{}",
                json!({"ok": ok, "failed": failed, "first_error": first_error, "elapsed_ms": started.elapsed().as_millis() as u64})
            );
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
