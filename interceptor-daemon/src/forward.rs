//! TCP forwarding: the upstream connection and the byte pump between the two
//! sockets. This is the pass-through handler; protocol handlers build on the
//! same upstream connect.

use std::{io, net::SocketAddr, time::Duration};

use tokio::net::{TcpSocket, TcpStream};

use crate::bufpool;

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
///
/// An idle connection holds no buffer: each direction waits for its socket to
/// become readable first and only then takes a buffer from
/// [`crate::bufpool`], giving it back once the bytes are written.
pub async fn pump(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    buffer: usize,
) -> io::Result<Transferred> {
    let buffer = buffer.max(1024);
    let (cr, cw) = client.split();
    let (ur, uw) = upstream.split();
    let (up, down) = tokio::try_join!(one_way(cr, uw, buffer), one_way(ur, cw, buffer))?;
    Ok(Transferred { up, down })
}

/// Waits until `stream` has bytes to read (or the peer closed), on the
/// socket's reader waker, the one reads use: cheaper than `readable()`, which
/// queues a waiter behind a lock on every wait. For the one task that reads
/// the socket: a second waiter would take the waker from the first.
pub(crate) async fn read_ready(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await
}

async fn one_way(
    from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    size: usize,
) -> io::Result<u64> {
    use tokio::io::AsyncWriteExt;
    let mut total = 0u64;
    loop {
        read_ready(from.as_ref()).await?;
        let mut buf = bufpool::vec(size);
        let n = match from.try_read_buf(&mut buf) {
            Ok(n) => n,
            // Readiness can be spurious.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                bufpool::give_vec(buf);
                continue;
            }
            Err(e) => {
                bufpool::give_vec(buf);
                return Err(e);
            }
        };
        if n == 0 {
            bufpool::give_vec(buf);
            // Half-close: the other direction keeps flowing.
            to.shutdown().await?;
            return Ok(total);
        }
        let written = to.write_all(&buf).await;
        bufpool::give_vec(buf);
        written?;
        total += n as u64;
    }
}

/// Closes with a reset, so the client sees the failure (ECONNRESET) rather than
/// a clean end of stream that could pass for an empty answer.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
