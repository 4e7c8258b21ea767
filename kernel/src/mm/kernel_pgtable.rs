//! The kernel's live translation tables (TTBR1).
//!
//! [`init`] builds them once, from a pool of pages inside the image (nothing
//! else is mapped yet to reach frame-allocator pages through): the image with
//! per-section permissions, every RAM region in the linear map with the
//! largest blocks alignment allows, and the console UART. Then it switches
//! TTBR1 over and points TTBR0 at an empty table. Later mappings (MMIO) take
//! their tables from the frame allocator through the linear map.

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::addr::{PhysAddr, PhysRange, VirtAddr};
use super::desc::LeafAttrs;
use super::frame::{self, Owner};
use super::layout::{io_virt, phys_to_virt};
use super::mm_struct::KernelPgtable;
use super::pgtable::{CursorMut, Detached, ExclusiveTables, LeafSizes, MapError, Stage1Kernel, TableMemory, Tables};
use crate::arch::aarch64::boot::{MAX_CPUS, STACK_SIZE, STACK_SLOT};
use crate::arch::aarch64::granule::{GRANULE, PAGE_SIZE, START_LEVEL, align_down, align_up};
use crate::arch::aarch64::memory::{IO_BASE, IO_END, KIMAGE_VADDR};
use crate::sym_addr;

/// Pages reserved in the image for the initial kernel tables.
const POOL_PAGES: usize = match GRANULE {
    crate::arch::aarch64::granule::Granule::K4 => 32,
    crate::arch::aarch64::granule::Granule::K16 => 20,
    crate::arch::aarch64::granule::Granule::K64 => 12,
};

#[repr(C, align(65536))]
struct Pool([u8; POOL_PAGES * PAGE_SIZE as usize]);

#[unsafe(link_section = ".bss.pgtables")]
static mut KPT_POOL: Pool = Pool([0; POOL_PAGES * PAGE_SIZE as usize]);

/// VA - PA for the kernel image, set once at boot.
static KIMAGE_VOFFSET: AtomicU64 = AtomicU64::new(0);

pub fn kimage_voffset() -> u64 {
    KIMAGE_VOFFSET.load(Ordering::Relaxed)
}

/// Physical address of a kernel-image virtual address.
pub fn kimage_to_phys(va: VirtAddr) -> PhysAddr {
    PhysAddr::new(va.as_u64() - kimage_voffset())
}

/// Where the kernel's table pages come from.
struct KernelTableMem {
    /// True once the final tables are live and the linear map reaches all RAM.
    live: bool,
    pool_next: usize,
    tables: usize,
}

// SAFETY: table pages come from the boot pool or the frame allocator and
// are reached through the image or the linear map while they are tables.
unsafe impl TableMemory for KernelTableMem {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        if !self.live {
            if self.pool_next == POOL_PAGES {
                return None;
            }
            let va = core::ptr::addr_of!(KPT_POOL) as u64 + self.pool_next as u64 * PAGE_SIZE;
            self.pool_next += 1;
            self.tables += 1;
            return Some(kimage_to_phys(VirtAddr::new(va)));
        }
        let pa = frame::alloc_zeroed(0, Owner::PageTable)?;
        self.tables += 1;
        Some(pa)
    }
    fn table_ptr(&self, pa: PhysAddr) -> *const AtomicU64 {
        if self.live {
            phys_to_virt(pa).as_u64() as *const AtomicU64
        } else {
            (pa.as_u64() + kimage_voffset()) as *const AtomicU64
        }
    }
}

struct Kpt {
    root: PhysAddr,
    empty_ttbr0: PhysAddr,
    mem: KernelTableMem,
    /// Next free VA in the MMIO window is IO_BASE + PA, so no allocator needed;
    /// this only records what was mapped, for `ptdump` markers and tests.
    io_mapped: heapless_list::List,
}

mod heapless_list {
    /// A tiny fixed list of mapped MMIO ranges.
    pub struct List {
        pub items: [(u64, u64); 16],
        pub len: usize,
    }
    impl List {
        pub const fn new() -> Self {
            Self { items: [(0, 0); 16], len: 0 }
        }
        pub fn push(&mut self, r: (u64, u64)) {
            if self.len < self.items.len() {
                self.items[self.len] = r;
                self.len += 1;
            }
        }
    }
}

static KPT: Mutex<Option<Kpt>> = Mutex::new(None);

/// The kernel tables' lock (Linux: `init_mm`'s mmap lock). Readers (walks,
/// ptdump, invariants) take it for read; every change takes it for write,
/// before [`KPT`].
pub static KERNEL_PGTABLE: KernelPgtable = KernelPgtable::new(PhysAddr::new(0));

/// The kernel image sections and how they are mapped.
pub fn image_sections() -> [(&'static str, VirtAddr, VirtAddr, LeafAttrs); 3] {
    let va = VirtAddr::new;
    [
        ("text", va(sym_addr!(__kernel_start)), va(sym_addr!(__text_end)), LeafAttrs::KERNEL_RX),
        ("rodata", va(sym_addr!(__rodata_start)), va(sym_addr!(__rodata_end)), LeafAttrs::KERNEL_RO),
        ("data", va(sym_addr!(__data_start)), va(sym_addr!(__data_end)), LeafAttrs::KERNEL_RW),
    ]
}

/// The `[lo, hi)` VA of CPU `i`'s stack (the guard is the 64 KiB below `lo`).
pub fn stack_range(i: usize) -> (VirtAddr, VirtAddr) {
    let lo = VirtAddr::new(sym_addr!(__stacks_start) + i as u64 * STACK_SLOT);
    (lo, lo + STACK_SIZE)
}

fn map_or_panic<M: TableMemory>(
    c: &mut CursorMut<'_, '_, Stage1Kernel, M>,
    what: &str,
    va: VirtAddr,
    pa: PhysAddr,
    size: u64,
    a: LeafAttrs,
    s: LeafSizes,
) {
    if let Err(e) = c.map(va, pa, size, a, s) {
        panic!("cannot map {what} {va:#x}..{:#x}: {e:?}", va + size);
    }
}

/// Builds the final kernel tables and switches to them.
///
/// # Safety
/// Runs once, on the boot CPU, before any other CPU is started.
pub unsafe fn init(phys_base: u64, ram: &[PhysRange], uart: Option<PhysRange>) {
    KIMAGE_VOFFSET.store(KIMAGE_VADDR - phys_base, Ordering::Relaxed);
    let mut mem = KernelTableMem { live: false, pool_next: 0, tables: 0 };
    let root = mem.alloc_table().expect("kernel table pool");
    let empty_ttbr0 = mem.alloc_table().expect("kernel table pool");
    {
        let mut t = Tables::new(root, GRANULE, START_LEVEL, &mut mem);
        // SAFETY: the tables are not installed yet and only this CPU runs.
        let excl = unsafe { ExclusiveTables::new() };
        let mut fl = super::tlb::KernelFlush;
        let mut c = CursorMut::new(&excl, &mut t, Stage1Kernel, &mut fl);
        for (name, lo, hi, attrs) in image_sections() {
            map_or_panic(&mut c, name, lo, kimage_to_phys(lo), hi - lo, attrs, LeafSizes::PagesOnly);
        }
        for i in 0..MAX_CPUS {
            let (lo, hi) = stack_range(i);
            map_or_panic(&mut c, "stack", lo, kimage_to_phys(lo), hi - lo, LeafAttrs::KERNEL_RW, LeafSizes::PagesOnly);
        }
        for r in ram {
            let (s, e) = (align_up(r.start.as_u64(), PAGE_SIZE), align_down(r.end.as_u64(), PAGE_SIZE));
            if e > s {
                map_or_panic(
                    &mut c,
                    "RAM",
                    phys_to_virt(PhysAddr::new(s)),
                    PhysAddr::new(s),
                    e - s,
                    LeafAttrs::KERNEL_RW,
                    LeafSizes::Largest,
                );
            }
        }
        if let Some(u) = uart {
            let (s, e) = (align_down(u.start.as_u64(), PAGE_SIZE), align_up(u.end.as_u64(), PAGE_SIZE));
            map_or_panic(
                &mut c,
                "UART",
                io_virt(PhysAddr::new(s)),
                PhysAddr::new(s),
                e - s,
                LeafAttrs::KERNEL_DEVICE,
                LeafSizes::PagesOnly,
            );
        }
        // Building only fills holes: nothing was unlinked.
        let Detached(d) = c.finish();
        assert!(d.is_empty(), "building the kernel tables detached {d:?}");
    }
    // SAFETY: image pages keep their size and PA; the DTB fixmap window
    // disappears (no entry, so no conflict); nothing runs from TTBR0.
    unsafe {
        crate::arch::cpu::switch_ttbr1(root.as_u64());
        crate::arch::cpu::set_ttbr0(empty_ttbr0.as_u64());
    }
    mem.live = true;
    KERNEL_PGTABLE.write().set_root(root);
    let mut io = heapless_list::List::new();
    if let Some(u) = uart {
        io.push((u.start.as_u64(), u.end.as_u64()));
    }
    *KPT.lock() = Some(Kpt { root, empty_ttbr0, mem, io_mapped: io });

    // Secondaries read this with their MMU off.
    // SAFETY: written once here, before any secondary starts.
    unsafe {
        let p = core::ptr::addr_of_mut!(crate::arch::aarch64::boot::SECONDARY_TTBR1);
        p.write_volatile(root.as_u64());
        crate::arch::cpu::dcache_clean_poc(p as u64, 8);
    }
}

/// The final TTBR1 root and the empty TTBR0 table.
pub fn roots() -> (PhysAddr, PhysAddr) {
    let g = KPT.lock();
    let k = g.as_ref().expect("kernel tables not initialised");
    (k.root, k.empty_ttbr0)
}

/// Maps device registers at `IO_BASE + PA` (Device-nGnRE) and returns the VA.
pub fn ioremap(r: PhysRange) -> Result<VirtAddr, MapError> {
    let (s, e) = (align_down(r.start.as_u64(), PAGE_SIZE), align_up(r.end.as_u64(), PAGE_SIZE));
    if io_virt(PhysAddr::new(e)).as_u64() > IO_END || e <= s {
        return Err(MapError::Misaligned);
    }
    // Holes or identical entries: no TLBI, only visibility to the walker
    // (the cursor publishes when it finishes).
    with_live(|c| {
        c.map(io_virt(PhysAddr::new(s)), PhysAddr::new(s), e - s, LeafAttrs::KERNEL_DEVICE, LeafSizes::PagesOnly)
    })?;
    let mut g = KPT.lock();
    let k = g.as_mut().expect("kernel tables not initialised");
    k.io_mapped.push((r.start.as_u64(), r.end.as_u64()));
    Ok(VirtAddr::new(IO_BASE + r.start.as_u64()))
}

/// Runs `f` over the live kernel tables, for walking and translating only
/// (the table memory given to `f` cannot allocate).
pub fn with_tables<R>(f: impl FnOnce(&Tables<'_, LiveRead>) -> R) -> R {
    let _r = KERNEL_PGTABLE.read();
    let g = KPT.lock();
    let k = g.as_ref().expect("kernel tables not initialised");
    let mut ro = LiveRead;
    let t = Tables::new(k.root, GRANULE, START_LEVEL, &mut ro);
    f(&t)
}

/// Number of kernel table pages (pool and frames).
pub fn table_pages() -> usize {
    KPT.lock().as_ref().map(|k| k.mem.tables).unwrap_or(0)
}

/// Read-only access to live tables through the linear map.
pub struct LiveRead;
// SAFETY: allocates nothing; live tables are RAM in the linear map.
unsafe impl TableMemory for LiveRead {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        None
    }
    fn table_ptr(&self, pa: PhysAddr) -> *const AtomicU64 {
        phys_to_virt(pa).as_u64() as *const AtomicU64
    }
}

/// Runs `f` with a [`CursorMut`] over the kernel tables (global entries,
/// real TLBI broadcast), under their write lock, which the cursor borrows;
/// then frees the tables it detached.
pub fn with_live<R>(f: impl FnOnce(&mut CursorMut<'_, '_, Stage1Kernel, KernelTableMemHandle>) -> R) -> R {
    let w = KERNEL_PGTABLE.write();
    let mut g = KPT.lock();
    let k = g.as_mut().expect("kernel tables not initialised");
    let mut mem = KernelTableMemHandle(&mut k.mem);
    let mut t = Tables::new(k.root, GRANULE, START_LEVEL, &mut mem);
    let mut fl = super::tlb::KernelFlush;
    let mut live = CursorMut::new(&w, &mut t, Stage1Kernel, &mut fl);
    let r = f(&mut live);
    let detached = live.finish();
    for pa in detached.0 {
        free_table(&mut k.mem, pa);
    }
    r
}

/// Maps `[va, va+size)` in the kernel tables with [`CursorMut::map`]:
/// holes, identical entries, or live-safe changes (flushed before it returns).
pub fn map_kernel(
    va: VirtAddr,
    pa: PhysAddr,
    size: u64,
    attrs: LeafAttrs,
    sizes: LeafSizes,
) -> Result<usize, MapError> {
    with_live(|c| c.map(va, pa, size, attrs, sizes))
}

fn free_table(mem: &mut KernelTableMem, pa: PhysAddr) {
    // Pool pages live in the image and are never reused; frames go back.
    let pool = kimage_to_phys(VirtAddr::new(core::ptr::addr_of!(KPT_POOL) as u64));
    mem.tables -= 1;
    if pa.as_u64() >= pool.as_u64() && pa.as_u64() < pool.as_u64() + (POOL_PAGES as u64) * PAGE_SIZE {
        return;
    }
    frame::free(pa, 0, Owner::PageTable).expect("freeing a detached kernel table");
}

/// Borrowed kernel table memory for [`with_live`].
pub struct KernelTableMemHandle<'a>(&'a mut KernelTableMem);
// SAFETY: forwards to `KernelTableMem`.
unsafe impl TableMemory for KernelTableMemHandle<'_> {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        self.0.alloc_table()
    }
    fn table_ptr(&self, pa: PhysAddr) -> *const AtomicU64 {
        self.0.table_ptr(pa)
    }
}

/// Table memory straight from the frame allocator, reached through the
/// linear map: for user (TTBR0) tables.
pub struct FrameTableMem {
    pub tables: usize,
}

// SAFETY: zeroed frames from the frame allocator, reached through the
// linear map while they are tables.
unsafe impl TableMemory for FrameTableMem {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        if crate::mm::fail_alloc::should_fail(crate::mm::fail_alloc::AllocKind::Table) {
            return None;
        }
        let pa = frame::alloc_user_table()?;
        self.tables += 1;
        Some(pa)
    }
    fn table_ptr(&self, pa: PhysAddr) -> *const AtomicU64 {
        phys_to_virt(pa).as_u64() as *const AtomicU64
    }
}

impl FrameTableMem {
    pub fn free(&mut self, pa: PhysAddr) {
        frame::free(pa, 0, Owner::PageTable).expect("freeing a user table");
        self.tables -= 1;
    }
}
