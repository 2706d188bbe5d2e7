//! A small, deterministic mutator for the tests that replay the corpus: no fuzzing
//! engine, just the mutations that find most bugs in binary parsers (bit flips,
//! boundary values in integer fields, truncation, cut and paste), from a seed that the
//! failure message names so that a failing case can be rerun.

/// xorshift64*: fast, and the same sequence from the same seed on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Values at the edges of integer fields: where sizes overflow, counts wrap and
/// offsets point just past the end.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x1FF,
    0x2000,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    1 << 62,
    1 << 63,
    u64::MAX - 128,
    u64::MAX,
];

/// Applies 1 to 4 random mutations to `data` in place.
pub fn mutate(data: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..1 + rng.below(4) {
        mutate_once(data, rng);
    }
}

fn mutate_once(data: &mut Vec<u8>, rng: &mut Rng) {
    if data.is_empty() {
        data.push(rng.next_u64() as u8);
        return;
    }
    let at = rng.below(data.len());
    match rng.below(8) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = rng.next_u64() as u8,
        2 | 3 => {
            // An interesting value, little-endian, 1 to 8 bytes wide.
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let width = [1, 2, 4, 8][rng.below(4)];
            for (i, b) in v.to_le_bytes().iter().take(width).enumerate() {
                if let Some(slot) = data.get_mut(at + i) {
                    *slot = *b;
                }
            }
        }
        4 => data.truncate(at),
        5 => {
            // Copy a run of bytes over another place.
            let len = 1 + rng.below(64.min(data.len()));
            let from = rng.below(data.len() - len + 1);
            let run: Vec<u8> = data[from..from + len].to_vec();
            for (i, b) in run.into_iter().enumerate() {
                if let Some(slot) = data.get_mut(at + i) {
                    *slot = b;
                }
            }
        }
        6 => {
            let len = 1 + rng.below(16);
            let end = (at + len).min(data.len());
            data.drain(at..end);
        }
        _ => {
            let len = 1 + rng.below(16);
            let fill = rng.next_u64() as u8;
            data.splice(at..at, std::iter::repeat_n(fill, len));
        }
    }
}
