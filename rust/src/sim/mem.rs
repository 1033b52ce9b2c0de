//! A MEM slice: `mem_words` vectors of `lanes` bytes in two banks, one port per bank per cycle.
//! Storage is allocated on first write (a 2.5 MiB slice that is never written costs nothing; timing-only runs
//! never allocate).

const NEVER: u64 = u64::MAX;

pub struct MemSlice {
    words: usize,
    lanes: usize,
    data: Vec<u8>,
    /// The last cycle each bank's port was used.
    port_cycle: [u64; 2],
}

impl MemSlice {
    pub fn new(words: usize, lanes: usize) -> MemSlice {
        MemSlice { words, lanes, data: Vec::new(), port_cycle: [NEVER; 2] }
    }

    pub fn bank(&self, addr: usize) -> usize {
        (addr >= self.words / 2) as usize
    }

    /// Use a bank's port at cycle `t`; false if it was already used at `t` (BankConflict).
    pub fn use_port(&mut self, bank: usize, t: u64) -> bool {
        if self.port_cycle[bank] == t {
            return false;
        }
        self.port_cycle[bank] = t;
        true
    }

    fn ensure(&mut self) {
        if self.data.is_empty() {
            self.data = vec![0; self.words * self.lanes];
        }
    }

    /// The vector at `addr` (zeros if never written). `addr < words`.
    pub fn read(&self, addr: usize, out: &mut [u8]) {
        if self.data.is_empty() {
            out[..self.lanes].fill(0);
        } else {
            out[..self.lanes].copy_from_slice(&self.data[addr * self.lanes..(addr + 1) * self.lanes]);
        }
    }

    pub fn write(&mut self, addr: usize, v: &[u8]) {
        self.ensure();
        self.data[addr * self.lanes..(addr + 1) * self.lanes].copy_from_slice(&v[..self.lanes]);
    }

    /// Lane `l` reads `map[l]` of its own column; out-of-range entries read 0 (docs/isa.md 9.4).
    pub fn gather(&self, map: &[u32], out: &mut [u8]) {
        for l in 0..self.lanes {
            let a = map[l] as usize;
            out[l] = if a < self.words && !self.data.is_empty() { self.data[a * self.lanes + l] } else { 0 };
        }
    }

    /// Lane `l` writes `v[l]` to `map[l]`; out-of-range entries write nothing.
    /// `map` is the 2-byte map group as planes (low bytes, then high bytes).
    pub fn scatter(&mut self, map: &[u8], v: &[u8]) {
        self.ensure();
        for l in 0..self.lanes {
            let a = map[l] as usize | (map[self.lanes + l] as usize) << 8;
            if a < self.words {
                self.data[a * self.lanes + l] = v[l];
            }
        }
    }
}
