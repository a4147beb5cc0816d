//! Fuzzing entry point shared by the cargo-fuzz target (`fuzz/`, target
//! `pg_framer`) and the in-tree randomized test below: frame arbitrary bytes in
//! both directions and both phases, parse every message, walk every iterator,
//! and check that rebuilt messages parse back to the same value.

use super::{
    BackendMessage, Direction, Framer, FrontendMessage, Progress, SaslInitialResponse,
    StartupPacket, build, encryption_response, looks_like_tls_client_hello, parse_password,
};

/// Must never panic, whatever `data` is.
pub fn frame_and_parse_all(data: &[u8]) {
    let _ = encryption_response(data);
    let _ = looks_like_tls_client_hello(data);
    startup_phase(data);
    for direction in [Direction::Frontend, Direction::Backend] {
        regular_phase(data, direction);
    }
}

fn startup_phase(data: &[u8]) {
    let framer = Framer::new(Direction::Frontend);
    let mut rest = data;
    while let Ok(Progress::Complete(p)) = framer.next_startup(rest) {
        if let Ok(StartupPacket::Startup { version, params }) = p.parse() {
            let n = params.iter().count();
            let _ = params.get("user");
            let mut out = Vec::new();
            if build::startup_message(&mut out, version, params.iter()).is_ok() {
                assert_eq!(
                    out.as_slice(),
                    p.raw,
                    "startup message rebuilds byte-exact ({n} params)"
                );
            }
        }
        rest = rest.get(p.len()..).unwrap_or_default();
    }
}

fn regular_phase(data: &[u8], direction: Direction) {
    let framer = Framer::new(direction);
    let mut rest = data;
    while let Ok(Progress::Complete(frame)) = framer.next(rest) {
        assert!(frame.len() >= 5 && frame.len() <= rest.len());
        match direction {
            Direction::Frontend => frontend(&frame),
            Direction::Backend => backend(&frame),
        }
        rest = rest.get(frame.len()..).unwrap_or_default();
    }
}

fn frontend(frame: &super::Frame<'_>) {
    let Ok(msg) = FrontendMessage::parse(frame) else {
        return;
    };
    match msg {
        FrontendMessage::Parse(p) => {
            let _ = p.param_types.iter().count();
        }
        FrontendMessage::Bind(b) => {
            let n = b.params.iter().count();
            assert_eq!(n, b.params.len());
            for i in 0..n {
                let _ = b.param_formats.format_of(i);
            }
            let _ = b.result_formats.iter().count();
        }
        FrontendMessage::FunctionCall(f) => {
            assert_eq!(f.args.iter().count(), f.args.len());
        }
        FrontendMessage::AuthResponse(body) => {
            let _ = parse_password(body);
            let _ = SaslInitialResponse::parse(body);
        }
        FrontendMessage::Query { sql } => {
            let mut out = Vec::new();
            if build::query(&mut out, sql).is_ok() {
                assert_eq!(out.as_slice(), frame.raw);
            }
        }
        _ => {}
    }
}

fn backend(frame: &super::Frame<'_>) {
    let Ok(msg) = BackendMessage::parse(frame) else {
        return;
    };
    match msg {
        BackendMessage::DataRow(v) => {
            assert_eq!(v.iter().count(), v.len());
            let mut out = Vec::new();
            if build::data_row(&mut out, v).is_ok() {
                assert_eq!(out.as_slice(), frame.raw, "DataRow rebuilds byte-exact");
            }
        }
        BackendMessage::RowDescription(f) => {
            assert_eq!(f.iter().count(), f.len());
            let mut out = Vec::new();
            if build::row_description(&mut out, f).is_ok() {
                assert_eq!(
                    out.as_slice(),
                    frame.raw,
                    "RowDescription rebuilds byte-exact"
                );
            }
        }
        BackendMessage::ErrorResponse(e) | BackendMessage::NoticeResponse(e) => {
            let _ = e.iter().count();
            let _ = (e.severity(), e.code(), e.message());
        }
        BackendMessage::Authentication(super::Authentication::Sasl(m)) => {
            let _ = m.iter().count();
        }
        BackendMessage::ParameterDescription(o) => {
            assert_eq!(o.iter().count(), o.len());
        }
        BackendMessage::CopyInResponse(c)
        | BackendMessage::CopyOutResponse(c)
        | BackendMessage::CopyBothResponse(c) => {
            let _ = c.column_formats.iter().count();
        }
        BackendMessage::NegotiateProtocolVersion(n) => {
            assert_eq!(
                n.unrecognized_options.iter().count(),
                n.unrecognized_options.len()
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic, dependency-free pseudo-randomness.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn corpus() -> Vec<Vec<u8>> {
        let mut c = vec![
            msg(b'Q', b"select 1\0"),
            msg(b'P', b"s\0select $1\0\0\x01\0\0\0\x17"),
            msg(
                b'B',
                b"p\0s\0\0\x01\0\x01\0\x02\0\0\0\x01x\xff\xff\xff\xff\0\x01\0\x01",
            ),
            msg(b'D', b"Sname\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'F', b"\0\0\x04\x01\0\0\0\x01\0\0\0\x01x\0\0"),
            msg(b'p', b"SCRAM-SHA-256\0\0\0\0\x03n,,"),
            msg(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0"),
            msg(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]),
            msg(b'E', b"SERROR\0C42501\0Mno\0\0"),
            msg(
                b'T',
                b"\0\x01a\0\0\0\x40\0\0\x01\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
            ),
            msg(b'D', b"\0\x02\0\0\0\x01a\xff\xff\xff\xff"),
            msg(b'H', b"\0\0\x01\0\0"),
            msg(b'v', b"\0\0\0\0\0\0\0\x01_pq_.a\0"),
            msg(b'A', b"\0\0\0\x01c\0p\0"),
            msg(b'K', &[0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]),
            vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
            vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 1, 2, 3, 4],
        ];
        let mut s = Vec::new();
        build::startup_message(&mut s, super::super::ProtocolVersion::V3_2, [("user", "u")])
            .unwrap();
        c.push(s);
        c
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let corpus = corpus();
        // Valid inputs, one by one and concatenated, must get through.
        for m in &corpus {
            frame_and_parse_all(m);
        }
        frame_and_parse_all(&corpus.concat());
        for _ in 0..4000 {
            let mut data = if rng.below(4) == 0 {
                (0..rng.below(64))
                    .map(|_| rng.next() as u8)
                    .collect::<Vec<_>>()
            } else {
                let mut d = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    d.extend_from_slice(&corpus[rng.below(corpus.len())]);
                }
                d
            };
            for _ in 0..1 + rng.below(4) {
                if data.is_empty() {
                    break;
                }
                let at = rng.below(data.len());
                match rng.below(5) {
                    0 => data[at] = rng.next() as u8,
                    1 => data.truncate(at),
                    2 => data.insert(at, rng.next() as u8),
                    3 => data[at] ^= 1 << rng.below(8),
                    // Interesting values in a length or count position.
                    _ => {
                        let v: [u8; 4] = match rng.below(4) {
                            0 => [0xff; 4],
                            1 => [0x7f, 0xff, 0xff, 0xff],
                            2 => [0, 0, 0, 0],
                            _ => [0x80, 0, 0, 0],
                        };
                        let end = (at + 4).min(data.len());
                        data[at..end].copy_from_slice(&v[..end - at]);
                    }
                }
            }
            frame_and_parse_all(&data);
        }
    }
}
