//! Device drivers: the console UART, the logger, the GIC, the BCM2836
//! ARM-local interrupt controller (Pi 3) and the generic timer.
pub mod bcm2836_local;
pub mod gic;
pub mod logger;
pub mod timer;
pub mod uart;
