//! The `log` facade, printed on the console with level and CPU.

use log::{Level, LevelFilter, Metadata, Record};

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let cpu = crate::arch::percpu::this_cpu().id;
        let tag = match r.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        crate::println!("[{tag} cpu{cpu}] {}", r.args());
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the logger; `level` comes from `loglevel=` in bootargs.
pub fn init(level: Option<&str>) {
    let filter = match level {
        Some("error") => LevelFilter::Error,
        Some("warn") => LevelFilter::Warn,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        Some("off") => LevelFilter::Off,
        _ => LevelFilter::Info,
    };
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(filter);
}
