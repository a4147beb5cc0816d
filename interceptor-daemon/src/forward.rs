//! TCP forwarding: the upstream connection and the byte pump between the two
//! sockets. This is the pass-through handler; protocol handlers build on the
//! same upstream connect.

use std::{io, net::SocketAddr, time::Duration};

use tokio::net::{TcpSocket, TcpStream};

/// Connects to the original destination. The socket carries `mark` before it
/// connects, so the kernel programs never redirect the daemon's own connection.
pub async fn connect_upstream(
    dst: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let sock = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket2::SockRef::from(&sock).set_mark(mark)?;
    let stream = tokio::time::timeout(timeout, sock.connect(dst))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {dst} timed out"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Bytes moved by [`pump`]: client→upstream and upstream→client.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    pub up: u64,
    pub down: u64,
}

/// Copies both ways until both directions are finished. A half-close is passed
/// on (EOF from one side becomes a write shutdown on the other while the other
/// direction keeps flowing); a slow reader slows its writer, since each
/// direction has one bounded buffer and writes before it reads again.
pub async fn pump(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    buffer: usize,
) -> io::Result<Transferred> {
    let (up, down) =
        tokio::io::copy_bidirectional_with_sizes(client, upstream, buffer, buffer).await?;
    Ok(Transferred { up, down })
}

/// Closes with a reset, so the client sees the failure (ECONNRESET) rather than
/// a clean end of stream that could pass for an empty answer.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
