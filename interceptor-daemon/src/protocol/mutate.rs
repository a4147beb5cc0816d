//! Deterministic mutation testing for the codecs' fuzz entry points: the same
//! functions cargo-fuzz drives (`fuzz/`), run on a corpus and on random
//! mutations of it, so they are exercised (and must compile) in every test run.

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

/// Runs `f` on every corpus entry, their concatenation, and `rounds` random
/// mutations (byte flips, truncations, insertions of interesting bytes).
pub fn run(corpus: &[&[u8]], rounds: usize, interesting: &[u8], f: impl Fn(&[u8])) {
    for c in corpus {
        f(c);
    }
    f(&corpus.concat());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..rounds {
        let mut data = if rng.below(5) == 0 {
            (0..rng.below(48))
                .map(|_| rng.next() as u8)
                .collect::<Vec<_>>()
        } else {
            let mut d = Vec::new();
            for _ in 0..1 + rng.below(3) {
                d.extend_from_slice(corpus[rng.below(corpus.len())]);
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
                2 => data.insert(at, interesting[rng.below(interesting.len())]),
                3 => data[at] ^= 1 << rng.below(8),
                _ => {
                    // A huge or negative number where a length may be.
                    let v: &[u8] = match rng.below(4) {
                        0 => b"-1",
                        1 => b"99999999999",
                        2 => b"0",
                        _ => b"fffffffffffffffff",
                    };
                    for (i, b) in v.iter().enumerate() {
                        data.insert(at + i, *b);
                    }
                }
            }
        }
        f(&data);
    }
}
