//! Userfaultfd write-protect (Linux mm/userfaultfd.c, fs/userfaultfd.c,
//! include/linux/userfaultfd_k.h): `P uffd RANGE register wp`, `wp on|off`,
//! `unregister` and the events a write to a write-protected page raises.
//!
//! A process has one context ([`UffdCtx`], in its mm), opened by its first
//! register with `UFFD_FEATURE_WP_UNPOPULATED` (and `UFFD_FEATURE_EVENT_FORK`
//! for `fork-events`). Registered VMAs carry [`VmFlags::UFFD_WP`]. The state
//! lives in the entries: the uffd-wp bit of a present entry (`SW_UFFD_WP`,
//! always read-only), of a swap or migration entry, and the uffd-wp PTE
//! marker of a page that is not there.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::mm_struct::{VmFlags, Vma};

#[cfg(target_os = "none")]
mod wp;
#[cfg(target_os = "none")]
pub use wp::*;

/// Linux `UFFD_FEATURE_EVENT_FORK`: a child of fork keeps the registration.
pub const UFFD_FEATURE_EVENT_FORK: u32 = 1 << 1;
/// Linux `UFFD_FEATURE_WP_UNPOPULATED`: `wp on` over none entries installs markers.
pub const UFFD_FEATURE_WP_UNPOPULATED: u32 = 1 << 13;

/// A process's userfaultfd context (Linux `struct userfaultfd_ctx`): its
/// features (0: not opened yet) and the write-protect events since the
/// last `uffd-events expect`.
#[derive(Debug, Default)]
pub struct UffdCtx {
    features: AtomicU32,
    events: AtomicU64,
}

impl UffdCtx {
    pub const fn new() -> Self {
        Self { features: AtomicU32::new(0), events: AtomicU64::new(0) }
    }
    /// The features the context was opened with (0: none opened).
    pub fn features(&self) -> u32 {
        self.features.load(Ordering::Relaxed)
    }
    /// One write-protect fault raised (Linux `handle_userfault`).
    pub fn count_event(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }
    /// The events since the last call, which starts the count again.
    pub fn take_events(&self) -> u64 {
        self.events.swap(0, Ordering::Relaxed)
    }
}

/// Linux `userfaultfd_wp`: the VMA is registered for write-protect.
#[inline(always)]
pub fn userfaultfd_wp(vma: &Vma) -> bool {
    vma.flags.contains(VmFlags::UFFD_WP)
}

/// Whether fork gives the child `vma` with its uffd-wp state (Linux
/// `dup_userfaultfd`: only with `UFFD_FEATURE_EVENT_FORK`). Swap and
/// migration entries copied at fork keep their uffd-wp bit only if this
/// holds for the child's VMA ([`userfaultfd_wp`] of it).
pub fn wp_kept_on_fork(ctx: &UffdCtx, vma: &Vma) -> bool {
    userfaultfd_wp(vma) && ctx.features() & UFFD_FEATURE_EVENT_FORK != 0
}
