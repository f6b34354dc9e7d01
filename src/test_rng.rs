//! A seeded xorshift generator for unit tests that build input corpora: reproducible runs,
//! no dependency.

pub struct Xorshift(pub u64);

impl Xorshift {
    /// The next number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x % n as u64) as usize
    }
}
