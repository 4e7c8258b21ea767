//! Device drivers: the console UART and the logger.
pub mod logger;
pub mod uart;
