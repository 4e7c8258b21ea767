//! What the devicetree says about the machine: RAM, reserved memory, the
//! UART, the GIC, the timer, PSCI, CPUs, bootargs and the initrd.
//!
//! Built on the `fdt` crate. Bus addresses are translated through every
//! parent's `ranges` (the Raspberry Pi puts its peripherals behind one), so
//! everything here is a CPU physical address.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use fdt::Fdt;
use fdt::node::FdtNode;

use crate::mm::addr::PhysRange;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciConduit {
    Hvc,
    Smc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub path: String,
    pub compatible: String,
    pub regs: Vec<PhysRange>,
    pub interrupts: Vec<u32>,
    /// `status` is absent, "okay" or "ok" (firmware disables what a board
    /// does not wire up, e.g. the Pi 3's UART that drives Bluetooth).
    pub enabled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicVersion {
    V2,
    V3,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gic {
    pub version: GicVersion,
    pub dev: Device,
}

impl Gic {
    /// The distributor's registers (first `reg` entry, both versions).
    pub fn distributor(&self) -> Option<PhysRange> {
        self.dev.regs.first().copied()
    }
    /// The second `reg` entry: the CPU interface (GICv2) or the first
    /// redistributor region (GICv3).
    pub fn cpu_or_redistributors(&self) -> Option<PhysRange> {
        self.dev.regs.get(1).copied()
    }
}

/// The four interrupts of an `arm,armv8-timer` node, in binding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerIrq {
    SecurePhys = 0,
    Phys = 1,
    Virt = 2,
    HypPhys = 3,
}

impl Device {
    /// The GIC INTID of the `index`-th interrupt of a node whose
    /// `#interrupt-cells` is 3 (type, number, flags): SPI n is INTID n + 32,
    /// PPI n is INTID n + 16. None for a missing entry or an unknown type.
    pub fn gic_intid(&self, index: usize) -> Option<u32> {
        let c = self.interrupts.get(index * 3..index * 3 + 3)?;
        match c[0] {
            0 => c[1].checked_add(32),
            1 => c[1].checked_add(16),
            _ => None,
        }
    }
    /// Whether the `index`-th interrupt is level-sensitive (flags bits 3:2).
    pub fn gic_level(&self, index: usize) -> bool {
        self.interrupts.get(index * 3 + 2).is_some_and(|f| f & 0xc != 0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuNode {
    pub mpidr: u64,
    pub enable_method: String,
    pub release_addr: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct BoardInfo {
    pub model: String,
    /// The root's first `compatible`.
    pub compatible: String,
    /// All of the root's `compatible` strings, space-separated.
    pub compatible_all: String,
    pub ram: Vec<PhysRange>,
    /// `/memreserve/` entries and `/reserved-memory` children.
    pub reserved: Vec<(PhysRange, String)>,
    /// The console UART: a PL011 (`arm,pl011`) or the BCM2835 mini UART
    /// (`brcm,bcm2835-aux-uart`); see [`parse`] for how it is chosen.
    pub uart: Option<Device>,
    /// What picked `uart`: "pagelab.uart", "stdout-path", "alias serial0",
    /// "first PL011" or "first mini UART".
    pub uart_chosen_by: &'static str,
    /// The BCM2835 AUX block (`brcm,bcm2835-aux`) whose enable register
    /// gates the mini UART.
    pub aux: Option<Device>,
    pub gic: Option<Gic>,
    /// The BCM2836 ARM-local interrupt controller (Raspberry Pi 2/3: no GIC).
    pub local_intc: Option<Device>,
    /// The BCM2835 ARM interrupt controller ("armctrl": the peripherals'
    /// interrupts on the Pi 2/3, which feed `local_intc`).
    pub armctrl: Option<Device>,
    pub timer: Option<Device>,
    pub psci: Option<PsciConduit>,
    pub cpus: Vec<CpuNode>,
    pub bootargs: String,
    pub initrd: Option<PhysRange>,
    pub dtb_size: usize,
}

impl BoardInfo {
    /// Value of `key=value` in bootargs.
    pub fn bootarg(&self, key: &str) -> Option<&str> {
        self.bootargs.split_ascii_whitespace().find_map(|w| {
            let (k, v) = w.split_once('=')?;
            (k == key).then_some(v)
        })
    }
    /// Whether the root is compatible with one of `names` (the SoC, say).
    pub fn compatible_any(&self, names: &[&str]) -> bool {
        self.compatible_all.split(' ').any(|c| names.contains(&c))
    }
    pub fn total_ram(&self) -> u64 {
        self.ram.iter().map(|r| r.size()).sum()
    }
    /// INTID of one of the generic timer's interrupts (PPIs).
    pub fn timer_intid(&self, which: TimerIrq) -> Option<u32> {
        self.timer.as_ref()?.gic_intid(which as usize)
    }
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

/// One level of `ranges`: empty means identity, `None` means no `ranges`
/// property at all (addresses cannot be translated past this bus).
type Ranges = Option<Vec<(u64, u64, u64)>>;

fn parse_ranges(node: FdtNode<'_, '_>, parent_addr_cells: usize) -> Ranges {
    let prop = node.property("ranges")?;
    let cells = node.cell_sizes();
    let (ca, sc) = (cells.address_cells, cells.size_cells);
    let entry = (ca + parent_addr_cells + sc) * 4;
    if prop.value.is_empty() || entry == 0 {
        return Some(Vec::new());
    }
    Some(
        prop.value
            .chunks_exact(entry)
            .map(|c| {
                (be(&c[..ca * 4]), be(&c[ca * 4..(ca + parent_addr_cells) * 4]), be(&c[(ca + parent_addr_cells) * 4..]))
            })
            .collect(),
    )
}

fn translate(mut addr: u64, stack: &[Ranges]) -> Option<u64> {
    for level in stack.iter().rev() {
        let table = level.as_ref()?;
        if table.is_empty() {
            continue;
        }
        let &(child, parent, size) = table.iter().find(|&&(c, _, s)| addr >= c && addr - c < s)?;
        let _ = size;
        addr = addr - child + parent;
    }
    Some(addr)
}

struct Walker {
    devices: Vec<(Device, Vec<(u64, u64)>)>,
}

impl Walker {
    fn visit(&mut self, node: FdtNode<'_, '_>, path: &str, stack: &mut Vec<Ranges>, addr_cells: usize) {
        if let Some(compat) = node.compatible() {
            let mut regs = Vec::new();
            let mut raw = Vec::new();
            if let Some(rr) = node.raw_reg() {
                for r in rr {
                    let a = be(r.address);
                    let s = be(r.size);
                    raw.push((a, s));
                    if let Some(pa) = translate(a, stack) {
                        regs.push(PhysRange::new(pa, pa + s));
                    }
                }
            }
            let interrupts = node
                .property("interrupts")
                .map(|p| p.value.chunks_exact(4).map(|c| be(c) as u32).collect())
                .unwrap_or_default();
            let enabled = matches!(node.property("status").and_then(|p| p.as_str()), None | Some("okay") | Some("ok"));
            self.devices.push((
                Device {
                    path: path.to_string(),
                    compatible: compat.all().collect::<Vec<_>>().join(" "),
                    regs,
                    interrupts,
                    enabled,
                },
                raw,
            ));
        }
        let my_cells = node.cell_sizes().address_cells;
        stack.push(parse_ranges(node, addr_cells));
        for child in node.children() {
            let cpath =
                if path == "/" { alloc::format!("/{}", child.name) } else { alloc::format!("{path}/{}", child.name) };
            self.visit(child, &cpath, stack, my_cells);
        }
        stack.pop();
    }
}

/// The console UARTs pagelab drives, in the order a fallback tries them.
pub const UART_COMPATIBLES: [&str; 2] = ["arm,pl011", "brcm,bcm2835-aux-uart"];

/// Parses a flattened devicetree.
pub fn parse(bytes: &[u8]) -> Result<BoardInfo, &'static str> {
    let fdt = Fdt::new(bytes).map_err(|_| "not a valid flattened devicetree")?;
    let mut info = BoardInfo { dtb_size: fdt.total_size(), ..Default::default() };
    let root = fdt.find_node("/").ok_or("devicetree has no root node")?;
    info.model = root.property("model").and_then(|p| p.as_str()).unwrap_or("unknown").to_string();
    info.compatible = root.compatible().map(|c| c.first().to_string()).unwrap_or_default();
    info.compatible_all = root.compatible().map(|c| c.all().collect::<Vec<_>>().join(" ")).unwrap_or_default();

    // Every node with a compatible, with translated regs. The tree root has
    // an identity "bus".
    let mut w = Walker { devices: Vec::new() };
    let mut stack = alloc::vec![Some(Vec::new())];
    for child in root.children() {
        w.visit(child, &alloc::format!("/{}", child.name), &mut stack, root.cell_sizes().address_cells);
    }
    let find = |names: &[&str]| -> Option<Device> {
        w.devices.iter().map(|(d, _)| d).find(|d| d.compatible.split(' ').any(|c| names.contains(&c))).cloned()
    };

    for node in fdt.all_nodes() {
        if node.name == "memory" || node.name.starts_with("memory@") {
            if node.property("device_type").and_then(|p| p.as_str()) != Some("memory") {
                continue;
            }
            if let Some(regs) = node.reg() {
                for r in regs {
                    let start = r.starting_address as u64;
                    let size = r.size.unwrap_or(0) as u64;
                    if size > 0 {
                        info.ram.push(PhysRange::new(start, start + size));
                    }
                }
            }
        }
    }
    if info.ram.is_empty() {
        return Err("devicetree describes no memory");
    }
    info.ram.sort_by_key(|r| r.start);

    for r in fdt.memory_reservations() {
        let start = r.address() as u64;
        info.reserved.push((PhysRange::new(start, start + r.size() as u64), "/memreserve/".to_string()));
    }
    if let Some(rm) = fdt.find_node("/reserved-memory") {
        for child in rm.children() {
            if let Some(regs) = child.reg() {
                for r in regs {
                    let start = r.starting_address as u64;
                    let size = r.size.unwrap_or(0) as u64;
                    info.reserved
                        .push((PhysRange::new(start, start + size), alloc::format!("/reserved-memory/{}", child.name)));
                }
            }
        }
    }

    let chosen = fdt.find_node("/chosen");
    if let Some(ch) = chosen {
        info.bootargs = ch.property("bootargs").and_then(|p| p.as_str()).unwrap_or("").trim().to_string();
        let s = ch.property("linux,initrd-start").map(|p| be(p.value));
        let e = ch.property("linux,initrd-end").map(|p| be(p.value));
        if let (Some(s), Some(e)) = (s, e)
            && e > s
        {
            info.initrd = Some(PhysRange::new(s, e));
        }
    }

    // UART, as Linux picks its console: `pagelab.uart=ALIAS|PATH` in
    // bootargs, else the one /chosen/stdout-path names, else alias serial0
    // (the Raspberry Pi firmware's devicetrees have no stdout-path; their
    // serial0 is whichever UART drives GPIO 14/15), else the first enabled
    // PL011, else the first enabled mini UART.
    let aliases: Vec<(String, String)> = fdt
        .all_nodes()
        .find(|n| n.name == "aliases")
        .map(|n| n.properties().filter_map(|p| Some((p.name.to_string(), p.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    let resolve = |s: &str| -> Option<String> {
        let s = s.split(':').next().unwrap_or(s);
        if s.starts_with('/') {
            Some(s.to_string())
        } else {
            aliases.iter().find(|(k, _)| k == s).map(|(_, v)| v.clone())
        }
    };
    let is_uart = |d: &Device| d.compatible.split(' ').any(|c| UART_COMPATIBLES.contains(&c));
    let by_path = |p: String| w.devices.iter().map(|(d, _)| d).find(|d| d.path == p && is_uart(d)).cloned();
    let stdout = chosen.and_then(|c| c.property("stdout-path")).and_then(|p| p.as_str());
    let named =
        [("pagelab.uart", info.bootarg("pagelab.uart")), ("stdout-path", stdout), ("alias serial0", Some("serial0"))];
    let chosen_uart = named.iter().find_map(|&(how, s)| Some((how, resolve(s?).and_then(by_path)?)));
    let first = || {
        UART_COMPATIBLES.iter().find_map(|c| {
            let d = w.devices.iter().map(|(d, _)| d).find(|d| d.enabled && d.compatible.split(' ').any(|x| x == *c))?;
            Some((if *c == "arm,pl011" { "first PL011" } else { "first mini UART" }, d.clone()))
        })
    };
    if let Some((how, d)) = chosen_uart.or_else(first) {
        info.uart_chosen_by = how;
        info.uart = Some(d);
    }
    info.aux = find(&["brcm,bcm2835-aux"]);

    info.gic = find(&["arm,gic-v3"]).map(|dev| Gic { version: GicVersion::V3, dev }).or_else(|| {
        find(&["arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a7-gic", "arm,gic-v2"])
            .map(|dev| Gic { version: GicVersion::V2, dev })
    });
    info.local_intc = find(&["brcm,bcm2836-l1-intc"]);
    info.armctrl = find(&["brcm,bcm2836-armctrl-ic", "brcm,bcm2835-armctrl-ic"]);
    info.timer = find(&["arm,armv8-timer"]);

    info.psci =
        fdt.find_node("/psci").and_then(|n| n.property("method")).and_then(|p| p.as_str()).and_then(|m| match m {
            "hvc" => Some(PsciConduit::Hvc),
            "smc" => Some(PsciConduit::Smc),
            _ => None,
        });

    // CPUs: every node with device_type "cpu" (they live under /cpus).
    // Found through `all_nodes` rather than `find_node("/cpus")`: the fdt
    // crate's path lookup stops at the FDT_NOP tags QEMU leaves where it
    // deleted nodes from a devicetree it was given with -dtb (its raspi
    // machines replace the memory nodes), and then finds no /cpus at all.
    for c in fdt.all_nodes() {
        if c.property("device_type").and_then(|p| p.as_str()) != Some("cpu") {
            continue;
        }
        let mpidr = c.property("reg").map(|p| be(p.value)).unwrap_or(0);
        let enable_method = c.property("enable-method").and_then(|p| p.as_str()).unwrap_or("").to_string();
        let release_addr = c.property("cpu-release-addr").map(|p| be(p.value));
        info.cpus.push(CpuNode { mpidr, enable_method, release_addr });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    static VIRT_A72: &[u8] = include_bytes!("../../tests/data/virt-a72-smp4-1g.dtb");
    static VIRT_EL2: &[u8] = include_bytes!("../../tests/data/virt-el2-smp2-1536m.dtb");
    static VIRT_GICV3: &[u8] = include_bytes!("../../tests/data/virt-gicv3-a72-smp4-1g.dtb");

    #[test]
    fn qemu_virt_el1() {
        let b = parse(VIRT_A72).unwrap();
        assert_eq!(b.ram, [PhysRange::new(0x4000_0000, 0x8000_0000)]);
        assert_eq!(b.total_ram(), 1 << 30);
        assert_eq!(b.psci, Some(PsciConduit::Hvc));
        assert_eq!(b.cpus.len(), 4);
        assert_eq!(b.cpus[3].mpidr, 3);
        assert_eq!(b.cpus[0].enable_method, "psci");
        let uart = b.uart.clone().unwrap();
        assert_eq!(uart.regs, [PhysRange::new(0x0900_0000, 0x0900_1000)]);
        assert_eq!(uart.path, "/pl011@9000000");
        let gic = b.gic.clone().unwrap();
        assert_eq!(gic.version, GicVersion::V2);
        assert_eq!(gic.dev.regs[0].start.as_u64(), 0x0800_0000);
        assert_eq!(gic.dev.regs[1].start.as_u64(), 0x0801_0000);
        assert_eq!(gic.distributor().unwrap(), PhysRange::new(0x0800_0000, 0x0801_0000));
        assert_eq!(gic.cpu_or_redistributors().unwrap(), PhysRange::new(0x0801_0000, 0x0802_0000));
        assert_eq!(b.timer_intid(TimerIrq::Virt), Some(27));
        assert_eq!(b.timer_intid(TimerIrq::Phys), Some(30));
        assert_eq!(b.timer_intid(TimerIrq::HypPhys), Some(26));
        assert!(
            b.timer.as_ref().unwrap().gic_level(TimerIrq::Virt as usize),
            "flags 0xf04: level high, CPU mask in bits 15:8"
        );
        assert_eq!(b.timer.unwrap().interrupts.len(), 12);
        assert!(b.initrd.is_none());
        assert!(b.reserved.is_empty());
    }

    #[test]
    fn qemu_virt_el2_with_memreserve_and_initrd() {
        let b = parse(VIRT_EL2).unwrap();
        assert_eq!(b.total_ram(), 1536 << 20);
        assert_eq!(b.psci, Some(PsciConduit::Smc), "PSCI goes to EL3 when EL2 is the guest's");
        assert_eq!(b.cpus.len(), 2);
        assert_eq!(b.reserved, [(PhysRange::new(0x5f00_0000, 0x5f02_0000), "/memreserve/".into())]);
        assert_eq!(b.initrd, Some(PhysRange::new(0x4800_0000, 0x4800_0123)));
        assert_eq!(b.bootarg("pagelab.mode"), Some("script"));
        assert_eq!(b.bootarg("pagelab.exit"), Some("semihosting"));
        assert_eq!(b.bootarg("nosuch"), None);
    }

    #[test]
    fn qemu_virt_gicv3() {
        let b = parse(VIRT_GICV3).unwrap();
        let gic = b.gic.as_ref().unwrap();
        assert_eq!(gic.version, GicVersion::V3, "the ITS child (arm,gic-v3-its) must not be taken for the GIC");
        assert_eq!(gic.dev.path, "/intc@8000000");
        assert_eq!(gic.distributor().unwrap(), PhysRange::new(0x0800_0000, 0x0801_0000));
        assert_eq!(gic.cpu_or_redistributors().unwrap(), PhysRange::new(0x080a_0000, 0x0900_0000));
        assert_eq!(b.timer_intid(TimerIrq::Virt), Some(27));
        assert_eq!(b.cpus.len(), 4);
    }

    #[test]
    fn interrupt_specifiers() {
        let d = Device {
            path: "/x".into(),
            compatible: "x".into(),
            regs: Vec::new(),
            interrupts: std::vec![0, 1, 4, 1, 11, 1, 7, 0, 0],
            enabled: true,
        };
        assert_eq!(d.gic_intid(0), Some(33), "SPI 1");
        assert_eq!(d.gic_intid(1), Some(27), "PPI 11");
        assert!(d.gic_level(0) && !d.gic_level(1), "4 = level high, 1 = edge rising");
        assert_eq!(d.gic_intid(2), None, "unknown type");
        assert_eq!(d.gic_intid(3), None, "past the end");
    }

    #[test]
    fn ranges_translation() {
        let stack = [Some(Vec::new()), Some(std::vec![(0x7e00_0000, 0x3f00_0000, 0x0100_0000)])];
        assert_eq!(translate(0x7e20_1000, &stack), Some(0x3f20_1000));
        assert_eq!(translate(0x1000, &stack), None, "outside every range");
        assert_eq!(translate(0x1000, &[Some(Vec::new())]), Some(0x1000));
        assert_eq!(translate(0x1000, &[None]), None, "no ranges property: not translatable");
    }

    // Trees shaped like the Raspberry Pi firmware's (tests/data/pi3-*.dts).
    static PI3_FW: &[u8] = include_bytes!("../../tests/data/pi3-firmware.dtb");
    static PI3_FW_SERIAL1: &[u8] = include_bytes!("../../tests/data/pi3-firmware-uart-serial1.dtb");
    static PI3_FW_NOSUCH: &[u8] = include_bytes!("../../tests/data/pi3-firmware-uart-nosuch.dtb");
    static PI3_NO_ALIASES: &[u8] = include_bytes!("../../tests/data/pi3-no-aliases-pl011-disabled.dtb");

    #[test]
    fn uart_choice_follows_the_firmware_alias_then_bootargs() {
        let b = parse(PI3_FW).unwrap();
        let u = b.uart.as_ref().unwrap();
        assert_eq!(
            (u.path.as_str(), b.uart_chosen_by),
            ("/soc/serial@7e215040", "alias serial0"),
            "no stdout-path: serial0, the mini UART"
        );
        assert_eq!(u.regs, [PhysRange::new(0x3f21_5040, 0x3f21_5080)]);
        assert_eq!(b.aux.as_ref().unwrap().regs, [PhysRange::new(0x3f21_5000, 0x3f21_5008)]);
        assert!(b.compatible_any(&["brcm,bcm2837"]) && !b.compatible_any(&["brcm,bcm2711"]));

        let b = parse(PI3_FW_SERIAL1).unwrap();
        assert_eq!(
            (b.uart.as_ref().unwrap().path.as_str(), b.uart_chosen_by),
            ("/soc/serial@7e201000", "pagelab.uart")
        );

        let b = parse(PI3_FW_NOSUCH).unwrap();
        assert_eq!(
            (b.uart.as_ref().unwrap().path.as_str(), b.uart_chosen_by),
            ("/soc/serial@7e215040", "alias serial0"),
            "a bad pagelab.uart falls back"
        );
    }

    #[test]
    fn a_disabled_uart_is_not_chosen() {
        let b = parse(PI3_NO_ALIASES).unwrap();
        let u = b.uart.as_ref().unwrap();
        assert_eq!(
            (u.path.as_str(), b.uart_chosen_by),
            ("/soc/serial@7e215040", "first mini UART"),
            "the PL011 is disabled"
        );
    }

    #[test]
    fn virt_uart_by_stdout_path() {
        let b = parse(VIRT_A72).unwrap();
        assert_eq!(b.uart_chosen_by, "stdout-path");
        assert!(b.aux.is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(&[0u8; 64]).is_err());
        assert!(parse(&[]).is_err());
    }
}
