//! Device drivers: the console UART, the logger, the GIC and the generic timer.
pub mod gic;
pub mod logger;
pub mod timer;
pub mod uart;
