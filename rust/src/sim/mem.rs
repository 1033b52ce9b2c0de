//! A MEM slice: `mem_words` vectors of `lanes` bytes in two banks, one port per bank per cycle.
//!
//! Storage is paged: a page of `PAGE` addresses is allocated on its first write (a slice never written costs
//! nothing; timing-only runs never allocate). Memory images given to `simulate` are not copied: a slice can
//! borrow disjoint address ranges of the caller's buffers (copy-on-write: the first write to a page copies the
//! borrowed vectors of that page into it).

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
