//! Device drivers: the console UARTs (PL011, BCM2835 mini UART), the logger,
//! the GIC, the BCM2836 ARM-local interrupt controller (Pi 3) and the
//! generic timer. The mini UART's register logic builds on the host too.
#[cfg(target_os = "none")]
pub mod bcm2835_armctrl;
pub mod bcm2835_aux_uart;
#[cfg(target_os = "none")]
pub mod bcm2836_local;
#[cfg(target_os = "none")]
pub mod gic;
#[cfg(target_os = "none")]
pub mod logger;
pub mod rx_ring;
#[cfg(target_os = "none")]
pub mod timer;
#[cfg(target_os = "none")]
pub mod uart;
