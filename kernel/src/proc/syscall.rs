//! System calls from EL0 (`svc #0`, number in x8, arguments in x0-x5,
//! result in x0; Linux arm64 numbers and errno values).
//!
//! Every argument is checked; user memory is touched only through
//! `copy_from_user`/`copy_to_user`, whose faults come back as `-EFAULT`
//! through the exception table. A bad call gets an error, never a crash.

use alloc::vec;

use super::{ProcError, Process};
use crate::arch::aarch64::regs::USER_TOP;
use crate::arch::aarch64::uaccess::copy_from_user;
use crate::mm::addr::VirtAddr;
use crate::mm::error::MmError;
use crate::mm::madvise::{self, Advice};
use crate::mm::mmap::{self, MmapArgs};

pub mod nr {
    pub const WRITE: u64 = 64;
    pub const GETPID: u64 = 172;
    pub const MUNMAP: u64 = 215;
    pub const MMAP: u64 = 222;
    pub const MPROTECT: u64 = 226;
    pub const MADVISE: u64 = 233;
    pub const EXIT: u64 = 93;
    pub const EXIT_GROUP: u64 = 94;
    pub const CLONE: u64 = 220;
    pub const WAIT4: u64 = 260;
    pub const CLOSE: u64 = 57;
    pub const FTRUNCATE: u64 = 46;
    pub const MEMFD_CREATE: u64 = 279;
}

/// The only `clone` flags accepted: plain fork (`SIGCHLD` as exit signal).
pub const SIGCHLD: u64 = 17;
const WNOHANG: u64 = 1;

use crate::errno::{EAGAIN, EBADF, ECHILD, EFAULT, EINVAL, ENOMEM, ENOSYS};

const PROT_READ: u64 = 1;
const PROT_WRITE: u64 = 2;
const MAP_SHARED: u64 = 0x01;
const MAP_PRIVATE: u64 = 0x02;
const MAP_ANONYMOUS: u64 = 0x20;
pub const MAP_NORESERVE: u64 = 0x4000;
pub const MADV_DONTNEED: u64 = 4;
pub const MADV_HUGEPAGE: u64 = 14;
pub const MADV_NOHUGEPAGE: u64 = 15;
pub const MADV_COLLAPSE: u64 = 25;

/// Most bytes one `write` call copies (the rest is left to the caller, as a
/// short write).
const WRITE_MAX: u64 = 4096;

pub fn dispatch(p: &Process, nr: u64, a: [u64; 6]) -> i64 {
    match nr {
        nr::GETPID => p.pid as i64,
        nr::WRITE => write(p, a[0], a[1], a[2]),
        nr::MMAP => mmap(p, a),
        nr::MUNMAP => munmap(p, VirtAddr::new(a[0]), a[1]),
        nr::MPROTECT => mprotect(p, VirtAddr::new(a[0]), a[1], a[2]),
        nr::MADVISE => madvise(p, VirtAddr::new(a[0]), a[1], a[2]),
        nr::MEMFD_CREATE => memfd_create(p, a[0], a[1]),
        nr::CLOSE => close(p, a[0]),
        nr::FTRUNCATE => ftruncate(p, a[0], a[1]),
        nr::CLONE => clone(p, a),
        nr::WAIT4 => wait4(p, a[0] as i64, a[1], a[2], a[3]),
        _ => -ENOSYS,
    }
}

/// The name of a system call's error result `r` (negative), for messages.
pub fn errno_name(r: i64) -> &'static str {
    crate::errno::name(-r)
}

/// Why the last `clone` failed (the errno alone loses it), for the
/// console's `P fork C`.
pub static LAST_CLONE_ERROR: spin::Mutex<Option<ProcError>> = spin::Mutex::new(None);

/// `clone(SIGCHLD, 0, 0, 0, 0)`: Linux fork. The child does not run until
/// the console drives it (each agent command starts afresh), so it needs
/// no copy of the parent's registers.
fn clone(p: &Process, a: [u64; 6]) -> i64 {
    if a[0] != SIGCHLD || a[1..5].iter().any(|&x| x != 0) {
        return -EINVAL; // fork only: no threads, no new stack, no TLS
    }
    let name = super::take_child_name(p);
    match super::fork_p(p, &name) {
        Ok(pid) => pid as i64,
        Err(e) => {
            *LAST_CLONE_ERROR.lock() = Some(e);
            -e.errno()
        }
    }
}

/// `wait4(pid, status, options, rusage)`: reaps an exited child (any for
/// pid -1). Nothing else runs while the console waits (no scheduler yet),
/// so a wait that would block returns `-EAGAIN` (0 with WNOHANG).
fn wait4(p: &Process, pid: i64, status: u64, options: u64, rusage: u64) -> i64 {
    if options & !WNOHANG != 0 || rusage != 0 || !(pid == -1 || pid > 0) {
        return -EINVAL;
    }
    let found = {
        let z = p.zombies.lock();
        z.iter().position(|&(c, _)| pid == -1 || c as i64 == pid)
    };
    let Some(i) = found else {
        let alive = super::has_child(p.pid, pid);
        return if !alive && !p.zombies.lock().iter().any(|&(c, _)| pid == -1 || c as i64 == pid) {
            -ECHILD
        } else if options & WNOHANG != 0 {
            0
        } else {
            -EAGAIN
        };
    };
    let (cpid, code) = p.zombies.lock()[i];
    if status != 0 {
        let wstatus = ((code & 0xff) << 8).to_le_bytes();
        if crate::arch::aarch64::uaccess::copy_to_user(status, &wstatus).is_err() {
            return -EFAULT; // the child stays reapable
        }
    }
    p.zombies.lock().remove(i);
    cpid as i64
}

fn write(p: &Process, fd: u64, buf: u64, len: u64) -> i64 {
    if fd != 1 && fd != 2 {
        return -EBADF;
    }
    let n = len.min(WRITE_MAX);
    let mut kbuf = vec![0u8; n as usize];
    if copy_from_user(&mut kbuf, buf).is_err() {
        return -EFAULT;
    }
    // Printable ASCII only on the console.
    for b in kbuf.iter_mut() {
        if !(b.is_ascii_graphic() || *b == b' ' || *b == b'\n') {
            *b = b'.';
        }
    }
    // Each write is a line of its own, so the kernel's verdict lines that
    // follow always start a line.
    let text = core::str::from_utf8(&kbuf).unwrap_or("");
    let end = if text.ends_with('\n') { "" } else { "\n" };
    crate::print!("[{}] {text}{end}", p.name);
    n as i64
}

fn mmap(p: &Process, a: [u64; 6]) -> i64 {
    let [addr, len, prot, flags, fd, off] = a;
    let ps = crate::arch::aarch64::granule::PAGE_SIZE;
    // MAP_NORESERVE: no overcommit check (a huge sparse mapping).
    let noreserve = flags & MAP_NORESERVE != 0;
    let flags = flags & !MAP_NORESERVE;
    // Anonymous memory, or an open memfd; always at a kernel-chosen address.
    let (shared, file) = match flags {
        f if f == MAP_PRIVATE | MAP_ANONYMOUS => (false, None),
        f if f == MAP_SHARED | MAP_ANONYMOUS => (true, None),
        f if f == MAP_PRIVATE || f == MAP_SHARED => {
            let Some(id) = fd_file(p, fd) else { return -EBADF };
            if off % ps != 0 {
                return -EINVAL;
            }
            (f == MAP_SHARED, Some((id, off / ps)))
        }
        _ => return -EINVAL,
    };
    if addr != 0 || (file.is_none() && (fd as i64 != -1 || off != 0)) {
        return -EINVAL;
    }
    if prot & !(PROT_READ | PROT_WRITE) != 0 {
        return -EINVAL;
    }
    let args = MmapArgs {
        size: len,
        readable: prot & PROT_READ != 0,
        writable: prot & PROT_WRITE != 0,
        align: 0,
        folio_order: 0,
        pfn: None,
        shared,
        memfd: None,
        file,
        noreserve,
    };
    match mmap::do_mmap(p.mt(), &args) {
        Ok((va, _)) => va.as_u64() as i64,
        Err(e) => -e.errno(),
    }
}

/// munmap's range check (Linux `do_vmi_munmap`): a page-aligned start, a
/// non-zero length rounded up to pages, an end inside the user space.
fn page_range(addr: VirtAddr, len: u64) -> Result<u64, MmError> {
    let ps = crate::arch::aarch64::granule::PAGE_SIZE;
    if !addr.is_aligned(ps) {
        return Err(MmError::NotAligned { addr, len });
    }
    if len == 0 {
        return Err(MmError::Empty);
    }
    let out_of_range = MmError::OutOfRange { addr, len };
    let len = len.checked_add(ps - 1).ok_or(out_of_range)? & !(ps - 1);
    if addr.checked_add(len).is_none_or(|e| e.as_u64() > USER_TOP) {
        return Err(out_of_range);
    }
    Ok(len)
}

fn munmap(p: &Process, addr: VirtAddr, len: u64) -> i64 {
    let len = match page_range(addr, len) {
        Ok(l) => l,
        Err(e) => return -e.errno(),
    };
    match super::munmap_p(p, addr, len) {
        Ok(()) => 0,
        Err(e) => -e.errno(),
    }
}

/// `mprotect(addr, len, prot)`, with Linux's checks in Linux's order
/// (`do_mprotect_pkey`): a misaligned start is `-EINVAL`, a length of 0
/// does nothing, a length that wraps is `-ENOMEM`, unknown bits in prot
/// are `-EINVAL`, and a range past the user top has no VMA there: `-ENOMEM`.
fn mprotect(p: &Process, addr: VirtAddr, len: u64, prot: u64) -> i64 {
    let ps = crate::arch::aarch64::granule::PAGE_SIZE;
    if !addr.is_aligned(ps) {
        return -EINVAL;
    }
    if len == 0 {
        return 0;
    }
    let Some(len) = len.checked_add(ps - 1).map(|l| l & !(ps - 1)).filter(|&l| addr.checked_add(l).is_some()) else {
        return -ENOMEM;
    };
    if prot & !(PROT_READ | PROT_WRITE) != 0 {
        return -EINVAL;
    }
    if (addr + len).as_u64() > USER_TOP {
        return -ENOMEM;
    }
    match crate::mm::mprotect::do_mprotect(p.mt(), addr, len, prot & PROT_READ != 0, prot & PROT_WRITE != 0) {
        Ok(()) => 0,
        Err(e) => -e.errno(),
    }
}

/// `madvise(addr, len, advice)`: MADV_DONTNEED, MADV_HUGEPAGE,
/// MADV_NOHUGEPAGE and MADV_COLLAPSE. As Linux: an unknown advice, a misaligned start or a
/// length that wraps is `-EINVAL`, length 0 does nothing, and a range with
/// holes (past the user top included) is `-ENOMEM` after the advice is
/// applied to the mapped parts. DONTNEED of a PFN mapping is `-EINVAL`.
fn madvise(p: &Process, addr: VirtAddr, len: u64, advice: u64) -> i64 {
    let ps = crate::arch::aarch64::granule::PAGE_SIZE;
    if !matches!(advice, MADV_DONTNEED | MADV_HUGEPAGE | MADV_NOHUGEPAGE | MADV_COLLAPSE) || !addr.is_aligned(ps) {
        return -EINVAL;
    }
    let Some(len) = len.checked_add(ps - 1).map(|l| l & !(ps - 1)).filter(|&l| addr.checked_add(l).is_some()) else {
        return -EINVAL;
    };
    if len == 0 {
        return 0;
    }
    // What lies past the user top is a hole.
    let top = USER_TOP;
    let in_reach = top.saturating_sub(addr.as_u64()).min(len);
    if in_reach == 0 {
        return -ENOMEM;
    }
    let advice = match advice {
        MADV_DONTNEED => Advice::DontNeed,
        MADV_HUGEPAGE => Advice::HugePage,
        MADV_COLLAPSE => Advice::Collapse,
        _ => Advice::NoHugePage,
    };
    match madvise::do_madvise(p.mt(), addr, in_reach, advice) {
        Ok(()) if in_reach == len && mmap::range_covered(&p.mm, addr, len) => 0,
        Ok(()) => -ENOMEM, // a hole in the range (Linux: the advice still applied to the rest)
        Err(e) => -e.errno(),
    }
}

/// The shmem file behind `fd`, if it is an open memfd of `p`.
fn fd_file(p: &Process, fd: u64) -> Option<u32> {
    let i = fd.checked_sub(3)? as usize;
    p.fds.lock().get(i).copied().flatten()
}

/// Longest memfd name Linux accepts (249 bytes, without the NUL).
const MFD_NAME_MAX: usize = 249;
const MFD_CLOEXEC: u64 = 1;

/// `memfd_create(name, flags)`: a new in-memory file (an unnamed shmem
/// file here: the name is only for the caller), size 0, open as the lowest
/// free descriptor from 3. `MFD_CLOEXEC` is accepted (there is no exec).
fn memfd_create(p: &Process, name: u64, flags: u64) -> i64 {
    if flags & !MFD_CLOEXEC != 0 {
        return -EINVAL;
    }
    // The name: up to 249 bytes and a NUL, read a byte at a time.
    let mut len = 0;
    loop {
        let mut b = [0u8; 1];
        if copy_from_user(&mut b, name.wrapping_add(len as u64)).is_err() {
            return -EFAULT;
        }
        if b[0] == 0 {
            break;
        }
        len += 1;
        if len > MFD_NAME_MAX {
            return -EINVAL;
        }
    }
    let f = match crate::mm::shmem::create_anon() {
        Ok(f) => f,
        Err(e) => return -e.errno(),
    };
    // The descriptor holds the file like a mapping does.
    crate::mm::shmem::vma_get(f.id);
    let mut fds = p.fds.lock();
    let i = match fds.iter().position(|x| x.is_none()) {
        Some(i) => {
            fds[i] = Some(f.id);
            i
        }
        None => {
            if crate::mm::error::try_reserve(&mut fds, 1).is_err() {
                drop(fds);
                crate::mm::shmem::vma_put(f.id);
                return -ENOMEM;
            }
            fds.push(Some(f.id));
            fds.len() - 1
        }
    };
    (i + 3) as i64
}

/// `close(fd)`; the file goes when nothing maps it and no fd is open.
fn close(p: &Process, fd: u64) -> i64 {
    let id = {
        let mut fds = p.fds.lock();
        let Some(slot) = fd.checked_sub(3).and_then(|i| fds.get_mut(i as usize)) else { return -EBADF };
        let Some(id) = slot.take() else { return -EBADF };
        id
    };
    crate::mm::shmem::vma_put(id);
    0
}

/// `ftruncate(fd, length)`: grows a memfd (zero-filled). Shrinking, which
/// would have to zap every mapping past the new end, is not supported.
fn ftruncate(p: &Process, fd: u64, length: u64) -> i64 {
    let Some(f) = fd_file(p, fd).and_then(crate::mm::shmem::get) else { return -EBADF };
    if (length as i64) < 0 {
        return -EINVAL;
    }
    if length < f.size() {
        return -EINVAL;
    }
    match f.grow(length) {
        Ok(()) => 0,
        Err(e) => -e.errno(),
    }
}
