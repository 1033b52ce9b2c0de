//! A MEM slice: `mem_words` vectors of `lanes` bytes in two banks, one port per bank per cycle; and
//! `ChipMemory`, the contents of every slice kept from one run to the next.
//!
//! Storage is paged: a page of `PAGE` addresses is allocated on its first write (a slice never written costs
//! nothing; timing-only runs never allocate). Memory images given to `simulate` are not copied: a slice can
//! borrow disjoint address ranges of the caller's buffers (copy-on-write: the first write to a page copies the
//! borrowed vectors of that page into it).
//!
//! ## What persists between runs (`ChipMemory`)
//!
//! A program normally runs on a fresh chip. To run several programs one after another on one chip whose SRAM
//! keeps what earlier ones left (weights installed once, an LLM's KV cache), the host keeps a `ChipMemory` and
//! runs programs on it (`Loaded::run_on`). Only the MEM slices' contents persist, because only they are
//! addressable state a later program can name. Everything else starts fresh each run, as a new program starts on
//! a quiescent chip: stream registers, instruction queues, MXM weight buffers, installed weights and accumulators,
//! VXM result registers, C2C receive buffers, bank-port bookkeeping, the clock (every run starts at cycle 0) and
//! the counters. A program's constant image (its `.init`s and static images) is written once by
//! `Loaded::install_static`, never by a run on a memory; a run's inputs (`mem_init`) are written into the memory
//! before cycle 0 and stay there like anything the program writes.
//!
//! The slices move into the run's chip and back (a `Vec` swap, no copy of the up to 230 MB of SRAM); a memory
//! never holds borrowed images (installs and inputs are copied in), so nothing it holds can dangle after a run.
const NEVER: u64 = u64::MAX;
/// Addresses per page.
const PAGE: usize = 64;

/// A borrowed image: addresses `start..end` read from `ptr` (`(end - start) * lanes` bytes).
#[derive(Clone, Copy)]
struct Borrowed {
    start: usize,
    end: usize,
    ptr: *const u8,
}

pub struct MemSlice {
    words: usize,
    lanes: usize,
    pages: Vec<Option<Box<[u8]>>>,
    /// Sorted, disjoint.
    borrowed: Vec<Borrowed>,
    /// The last cycle each bank's port was used.
    port_cycle: [u64; 2],
}

// The borrowed pointers are only read, and only while the images outlive the slice (see `borrow_images`).
unsafe impl Send for MemSlice {}

impl MemSlice {
    pub fn new(words: usize, lanes: usize) -> MemSlice {
        MemSlice { words, lanes, pages: Vec::new(), borrowed: Vec::new(), port_cycle: [NEVER; 2] }
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

    /// Forget the bank ports' last uses: a new run starts at cycle 0 (`ChipMemory`).
    pub(super) fn reset_ports(&mut self) {
        self.port_cycle = [NEVER; 2];
    }

    /// Bytes of pages allocated.
    pub fn allocated_bytes(&self) -> usize {
        self.pages.iter().flatten().map(|p| p.len()).sum()
    }

    /// `n` vectors from `addr`, n x lanes bytes.
    pub fn read_many(&self, addr: usize, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n * self.lanes];
        for (k, v) in out.chunks_mut(self.lanes).enumerate() {
            self.read(addr + k, v);
        }
        out
    }

    /// Copy `data.len() / lanes` vectors in from `addr` (a page at a time, for large images).
    pub fn write_many(&mut self, addr: usize, data: &[u8]) {
        let lanes = self.lanes;
        let mut a = addr;
        let mut rest = data;
        while rest.len() >= lanes {
            let n = (PAGE - a % PAGE).min(rest.len() / lanes);
            let o = (a % PAGE) * lanes;
            self.page_mut(a)[o..o + n * lanes].copy_from_slice(&rest[..n * lanes]);
            a += n;
            rest = &rest[n * lanes..];
        }
    }

    fn has_page(&self, page: usize) -> bool {
        matches!(self.pages.get(page), Some(Some(_)))
    }

    /// Borrow images `(addr, data)` (later ones win) instead of copying them, if they are pairwise disjoint and
    /// no page they touch has been written; otherwise copy them.
    ///
    /// # Safety
    /// Every `data` must stay alive and unmodified for as long as this slice is used.
    pub unsafe fn borrow_images(&mut self, images: &[(usize, &[u8])]) {
        let lanes = self.lanes;
        let mut r: Vec<Borrowed> = self
            .borrowed
            .iter()
            .copied()
            .chain(images.iter().map(|&(a, d)| Borrowed { start: a, end: a + d.len() / lanes, ptr: d.as_ptr() }))
            .filter(|b| b.end > b.start)
            .collect();
        r.sort_by_key(|b| b.start);
        let disjoint = r.windows(2).all(|w| w[0].end <= w[1].start);
        let clean = r.iter().all(|b| (b.start / PAGE..=(b.end - 1) / PAGE).all(|p| !self.has_page(p)));
        if disjoint && clean {
            self.borrowed = r;
            return;
        }
        // Fall back: what was borrowed before stays borrowed; copy the new images in order.
        for &(a, d) in images {
            for (k, v) in d.chunks(lanes).enumerate() {
                self.write(a + k, v);
            }
        }
    }

    /// The borrowed vector at `addr`, if any.
    #[inline]
    fn borrowed_at(&self, addr: usize) -> Option<&[u8]> {
        if self.borrowed.is_empty() {
            return None;
        }
        let i = self.borrowed.partition_point(|b| b.start <= addr);
        if i == 0 {
            return None;
        }
        let b = &self.borrowed[i - 1];
        if addr < b.end {
            // SAFETY: `borrow_images` callers keep the data alive; the range holds (end - start) * lanes bytes.
            Some(unsafe { std::slice::from_raw_parts(b.ptr.add((addr - b.start) * self.lanes), self.lanes) })
        } else {
            None
        }
    }

    /// The vector at `addr`, or `None` for zeros. `addr < words`.
    #[inline]
    pub fn word(&self, addr: usize) -> Option<&[u8]> {
        let lanes = self.lanes;
        match self.pages.get(addr / PAGE) {
            Some(Some(p)) => {
                let o = (addr % PAGE) * lanes;
                Some(&p[o..o + lanes])
            }
            _ => self.borrowed_at(addr),
        }
    }

    /// The vector at `addr` (zeros if never written). `addr < words`.
    pub fn read(&self, addr: usize, out: &mut [u8]) {
        match self.word(addr) {
            Some(w) => out[..self.lanes].copy_from_slice(w),
            None => out[..self.lanes].fill(0),
        }
    }

    /// The page holding `addr`, allocated (with its borrowed contents copied in) on first use.
    fn page_mut(&mut self, addr: usize) -> &mut [u8] {
        let lanes = self.lanes;
        let p = addr / PAGE;
        if self.pages.is_empty() {
            self.pages = (0..self.words.div_ceil(PAGE)).map(|_| None).collect();
        }
        if self.pages[p].is_none() {
            let mut page = vec![0u8; PAGE * lanes].into_boxed_slice();
            let lo = p * PAGE;
            let hi = (lo + PAGE).min(self.words);
            for a in lo..hi {
                if let Some(v) = self.borrowed_at(a) {
                    page[(a - lo) * lanes..(a - lo + 1) * lanes].copy_from_slice(v);
                }
            }
            self.pages[p] = Some(page);
        }
        self.pages[p].as_deref_mut().unwrap()
    }

    pub fn write(&mut self, addr: usize, v: &[u8]) {
        let lanes = self.lanes;
        let o = (addr % PAGE) * lanes;
        self.page_mut(addr)[o..o + lanes].copy_from_slice(&v[..lanes]);
    }

    /// Lane `l` reads `map[l]` of its own column; out-of-range entries read 0 (docs/isa.md 9.4).
    pub fn gather(&self, map: &[u32], out: &mut [u8]) {
        for l in 0..self.lanes {
            let a = map[l] as usize;
            out[l] = if a < self.words { self.word(a).map_or(0, |w| w[l]) } else { 0 };
        }
    }

    /// Lane `l` writes `v[l]` to `map[l]`; out-of-range entries write nothing.
    /// `map` is the 2-byte map group as planes (low bytes, then high bytes).
    pub fn scatter(&mut self, map: &[u8], v: &[u8]) {
        let lanes = self.lanes;
        for l in 0..lanes {
            let a = map[l] as usize | (map[lanes + l] as usize) << 8;
            if a < self.words {
                let o = (a % PAGE) * lanes;
                self.page_mut(a)[o + l] = v[l];
            }
        }
    }
}

/// The MEM contents of one chip kept across runs (the module doc says what persists and what does not).
///
/// State after a run: a functional run that finishes leaves what its commits wrote (over its inputs, over what was
/// there). A run that faults leaves the memory as the faulting run left it (every MEM commit applied before the
/// fault; commits scheduled for later cycles never happen) and records the error: `fault()` returns it, and every
/// later run or install on this memory is refused until `clear_fault()` (the contents are then accepted as they
/// are) or `clear()`. A timing-only run computes no values, so it reads and writes no contents: the memory is left
/// unchanged, its inputs are not written, and a timing-only fault does not flag it.
pub struct ChipMemory {
    pub(super) cfg: crate::config::ChipConfig,
    pub(super) slices: Vec<MemSlice>,
    /// Ids of the `Loaded` programs whose constant image was installed (`Loaded::install_static`).
    pub(super) installed: Vec<u64>,
    pub(super) fault: Option<crate::error::SimError>,
}

impl ChipMemory {
    /// All zeros (nothing allocated). The configuration must be valid.
    pub fn new(cfg: &crate::config::ChipConfig) -> ChipMemory {
        ChipMemory {
            cfg: cfg.clone(),
            slices: (0..cfg.mem_slices).map(|_| MemSlice::new(cfg.mem_words, cfg.lanes)).collect(),
            installed: Vec::new(),
            fault: None,
        }
    }

    pub fn config(&self) -> &crate::config::ChipConfig {
        &self.cfg
    }

    /// Read `n` raw vectors (n x lanes bytes) of a slice (global index).
    pub fn read(&self, slice: usize, addr: usize, n: usize) -> Result<Vec<u8>, String> {
        super::chip::check_range(&self.cfg, slice, addr, n)?;
        Ok(self.slices[slice].read_many(addr, n))
    }

    /// Write raw vectors (n x lanes bytes) into a slice (global index) between runs.
    pub fn write(&mut self, slice: usize, addr: usize, data: &[u8]) -> Result<(), String> {
        super::chip::check_mem(&self.cfg, slice, addr, data)?;
        self.slices[slice].write_many(addr, data);
        Ok(())
    }

    /// The error of the run that faulted on this memory, until `clear_fault` or `clear`.
    pub fn fault(&self) -> Option<&crate::error::SimError> {
        self.fault.as_ref()
    }

    /// Accept the contents a faulted run left, so runs are allowed again.
    pub fn clear_fault(&mut self) {
        self.fault = None;
    }

    /// Back to all zeros: pages freed, no constant image installed, no fault.
    pub fn clear(&mut self) {
        *self = ChipMemory::new(&self.cfg);
    }

    /// Bytes of SRAM pages allocated (written at least once since `new` or `clear`).
    pub fn allocated_bytes(&self) -> usize {
        self.slices.iter().map(|s| s.allocated_bytes()).sum()
    }

    /// The refusal of a run or install on a faulted memory.
    pub(super) fn check_usable(&self) -> Result<(), crate::error::SimError> {
        match &self.fault {
            None => Ok(()),
            Some(e) => Err(super::chip::load_err(
                "memory".into(),
                0,
                String::new(),
                format!("the memory holds what a faulted run left ({e}); clear_fault() to run on it anyway"),
            )),
        }
    }
}
