//! Linux errno values (arm64 uses the generic ones) and their names.

pub const EINTR: i64 = 4;
pub const EBADF: i64 = 9;
pub const ECHILD: i64 = 10;
pub const EAGAIN: i64 = 11;
pub const ENOMEM: i64 = 12;
pub const EFAULT: i64 = 14;
pub const EBUSY: i64 = 16;
pub const EEXIST: i64 = 17;
pub const EINVAL: i64 = 22;
pub const EFBIG: i64 = 27;
pub const ENOSYS: i64 = 38;

/// The name of errno `e` (positive), for messages.
pub fn name(e: i64) -> &'static str {
    match e {
        EINTR => "EINTR",
        EBADF => "EBADF",
        ECHILD => "ECHILD",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EFAULT => "EFAULT",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        EINVAL => "EINVAL",
        EFBIG => "EFBIG",
        ENOSYS => "ENOSYS",
        _ => "error",
    }
}
