//! How a range TLB invalidation is split into `TLBI RVA*` operations
//! (pure arithmetic, host-tested; used by `mm::tlb`).
//!
//! A range op covers `(NUM+1) << (5*SCALE+1)` pages, NUM in 0..=31, SCALE in
//! 0..=3. As Linux's `__flush_tlb_range_op` does, go from the largest scale
//! down, and send a final odd page through a per-page TLBI.

use super::addr::VirtAddr;

/// Calls `out(va, scale, num)` for each range op and `single(va)` for each
/// page left over, covering exactly `pages` pages from `va`.
pub fn plan_range(
    mut va: VirtAddr,
    mut pages: u64,
    page_size: u64,
    out: &mut dyn FnMut(VirtAddr, u64, u64),
    single: &mut dyn FnMut(VirtAddr),
) {
    let mut scale: i64 = 3;
    while pages > 0 {
        if pages == 1 || scale < 0 {
            single(va);
            va = va.wrapping_add(page_size);
            pages -= 1;
            continue;
        }
        let num = ((pages.min(32 << 16) >> (5 * scale as u64 + 1)) & 0x1f) as i64 - 1;
        if num >= 0 {
            out(va, scale as u64, num as u64);
            let n = (num as u64 + 1) << (5 * scale as u64 + 1);
            va = va.wrapping_add(n * page_size);
            pages -= n;
        }
        scale -= 1;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn cover(pages: u64) -> (Vec<(u64, u64)>, usize) {
        let spans = std::cell::RefCell::new(Vec::new());
        plan_range(
            VirtAddr::new(0x10_0000),
            pages,
            4096,
            &mut |va, s, n| spans.borrow_mut().push((va.as_u64(), ((n + 1) << (5 * s + 1)) * 4096)),
            &mut |va| spans.borrow_mut().push((va.as_u64(), 4096)),
        );
        let v = spans.into_inner();
        let n = v.len();
        (v, n)
    }

    #[test]
    fn covers_exactly_without_gaps_or_overlap() {
        for pages in [1u64, 2, 3, 31, 64, 65, 512, 513, 1000, 4095, 70_000, 2 << 20] {
            let (spans, _) = cover(pages);
            let mut next = 0x10_0000;
            for (va, len) in spans {
                assert_eq!(va, next, "gap or overlap for {pages} pages");
                next = va + len;
            }
            assert_eq!(next, 0x10_0000 + pages * 4096, "{pages} pages");
        }
    }

    #[test]
    fn few_ops_for_big_ranges() {
        assert_eq!(cover(512).1, 1, "a 2M block's pages in one op (scale 1, num 15)");
        assert_eq!(cover(1).1, 1);
        assert!(cover(1000).1 <= 6, "{}", cover(1000).1);
    }
}
