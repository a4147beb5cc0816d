//! Recognising a protocol from the client's first bytes (targets with
//! `protocol: auto`). Only client-first protocols can be recognised; anything
//! else is plain TCP.

/// What the first bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Postgres,
    Redis,
    Http,
    Mysql,
    Tcp,
}

/// What the server's first bytes look like (it spoke before the client):
/// a MySQL/MariaDB initial handshake (protocol 10, sequence 0), or TCP.
pub fn classify_server(first: &[u8]) -> Sniffed {
    match first {
        [_, _, _, 0, 10, ..] => Sniffed::Mysql,
        _ => Sniffed::Tcp,
    }
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// `None` while `first` is too short to tell (it is a prefix of something
/// recognisable); once the client has sent 8 bytes there is always an answer.
pub fn classify(first: &[u8]) -> Option<Sniffed> {
    if first.is_empty() {
        return None;
    }
    // RESP: an array header, `*` then a digit (or `-1`).
    if first[0] == b'*' {
        return match first.get(1) {
            None => None,
            Some(b) if b.is_ascii_digit() || *b == b'-' => Some(Sniffed::Redis),
            Some(_) => Some(Sniffed::Tcp),
        };
    }
    if first[0].is_ascii_uppercase() {
        for m in METHODS {
            if first.starts_with(m) {
                return Some(Sniffed::Http);
            }
            if m.starts_with(first) {
                return None;
            }
        }
        return Some(Sniffed::Tcp);
    }
    // PostgreSQL: a length word, then a protocol version or request code.
    if first.len() < 8 {
        return if first[0] == 0 {
            None
        } else {
            Some(Sniffed::Tcp)
        };
    }
    let len = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
    let code = u32::from_be_bytes([first[4], first[5], first[6], first[7]]);
    let pg = match code {
        // SSLRequest, GSSENCRequest
        80_877_103 | 80_877_104 => len == 8,
        // CancelRequest (3.2 allows longer keys)
        80_877_102 => (16..=264).contains(&len),
        // StartupMessage 3.0 / 3.2
        0x0003_0000 | 0x0003_0002 => (8..=10_000).contains(&len),
        _ => false,
    };
    Some(if pg { Sniffed::Postgres } else { Sniffed::Tcp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes() {
        use Sniffed::*;
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let startup = [0, 0, 0, 0x29, 0, 3, 0, 0, b'u'];
        for (bytes, want) in [
            (&ssl[..], Some(Postgres)),
            (&startup[..], Some(Postgres)),
            (&ssl[..5], None),
            (&[0, 0, 0, 8, 1, 2, 3, 4][..], Some(Tcp)),
            (b"*1\r\n$4\r\nPING\r\n", Some(Redis)),
            (b"*", None),
            (b"*x", Some(Tcp)),
            (b"GET / HTTP/1.1\r\n", Some(Http)),
            (b"OPTIO", None),
            (b"DELETE /x", Some(Http)),
            (b"GETX", Some(Tcp)),
            (b"PING\r\n", Some(Tcp)),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01", Some(Tcp)),
            (b"SSH-2.0-OpenSSH", Some(Tcp)),
        ] {
            assert_eq!(classify(bytes), want, "{bytes:?}");
        }
        assert_eq!(classify_server(b"\x4a\0\0\0\x0a10.11"), Mysql);
        assert_eq!(classify_server(b"SSH-2.0"), Tcp);
        // Eight bytes always decide.
        for b in 0..=255u8 {
            assert!(classify(&[b; 8]).is_some());
        }
    }
}
