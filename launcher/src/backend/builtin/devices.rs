//! The only devices: two 8250 UARTs and the i8042 reset line, all on port
//! I/O (vm-superio). None of them has, or needs, access to guest memory.
//!
//! - COM1 at 0x3f8, IRQ 4: the console; output goes to the host's console
//!   stream. Input is not connected (the console is for logging only).
//! - COM2 at 0x2f8, IRQ 3: the agent channel, both directions.
//! - i8042 at 0x60/0x64: writing 0xFE to port 0x64 ends the VM.
//!
//! Every other port reads as 0xFF (nothing there) and ignores writes.

use std::io::Write;
use std::sync::{Arc, Mutex};
use vm_superio::serial::NoEvents;
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1 (console) port base and IRQ.
pub const COM1: (u16, u32) = (0x3f8, 4);
/// COM2 (agent channel) port base and IRQ.
pub const COM2: (u16, u32) = (0x2f8, 3);
/// i8042 data port; the command port is this + 4.
pub const I8042_BASE: u16 = 0x60;

/// An interrupt line: an eventfd that KVM turns into the UART's IRQ (irqfd).
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// What the i8042 reset line does: tells the VMM the guest asked to end.
pub struct ResetLine(pub Box<dyn Fn() + Send>);

impl Trigger for ResetLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        (self.0)();
        Ok(())
    }
}

/// Where a UART's output goes: a host stream. A write error (the reader went
/// away) drops the bytes; the guest is never stalled on a dead host reader.
pub struct Sink<W: Write>(pub W);

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// A UART as the VMM uses it.
pub type Uart<W> = Serial<IrqLine, NoEvents, Sink<W>>;

/// The port-I/O bus: the three devices, each behind its own lock.
pub struct PioBus<W: Write> {
    /// Console UART at 0x3f8.
    pub com1: Mutex<Uart<W>>,
    /// Agent-channel UART at 0x2f8 (shared with the host-input thread).
    pub com2: Arc<Mutex<Uart<W>>>,
    /// Keyboard controller: only its reset line does anything.
    pub i8042: Mutex<I8042Device<ResetLine>>,
}

fn in_range(port: u16, base: u16, len: u16) -> Option<u8> {
    port.checked_sub(base).filter(|o| *o < len).map(|o| o as u8)
}

impl<W: Write> PioBus<W> {
    /// A guest `in` from `port`; fills `data` (1, 2 or 4 bytes).
    pub fn read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        let Some(first) = data.first_mut() else { return };
        if let Some(o) = in_range(port, COM1.0, 8) {
            if let Ok(mut u) = self.com1.lock() {
                *first = u.read(o);
            }
        } else if let Some(o) = in_range(port, COM2.0, 8) {
            if let Ok(mut u) = self.com2.lock() {
                *first = u.read(o);
            }
        } else if let Some(o) = in_range(port, I8042_BASE, 5) {
            if let Ok(mut d) = self.i8042.lock() {
                *first = d.read(o);
            }
        }
    }

    /// A guest `out` to `port`. The devices are 8-bit: only the first byte
    /// of a wider access counts, and string I/O (`rep outsb`) is not
    /// supported (Linux's 8250 and i8042 drivers use single-byte `outb`).
    pub fn write(&self, port: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if let Some(o) = in_range(port, COM1.0, 8) {
            if let Ok(mut u) = self.com1.lock() {
                let _ = u.write(o, v);
            }
        } else if let Some(o) = in_range(port, COM2.0, 8) {
            if let Ok(mut u) = self.com2.lock() {
                let _ = u.write(o, v);
            }
        } else if let Some(o) = in_range(port, I8042_BASE, 5) {
            if let Ok(mut d) = self.i8042.lock() {
                let _ = d.write(o, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn bus(out1: Vec<u8>, out2: Vec<u8>, reset: Arc<AtomicBool>) -> PioBus<Vec<u8>> {
        let irq = || IrqLine(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        PioBus {
            com1: Mutex::new(Serial::new(irq(), Sink(out1))),
            com2: Arc::new(Mutex::new(Serial::new(irq(), Sink(out2)))),
            i8042: Mutex::new(I8042Device::new(ResetLine(Box::new(move || {
                reset.store(true, Ordering::SeqCst)
            })))),
        }
    }

    #[test]
    fn ports_route_to_their_devices() {
        let reset = Arc::new(AtomicBool::new(false));
        let b = bus(Vec::new(), Vec::new(), reset.clone());
        b.write(0x3f8, b"A");
        b.write(0x2f8, b"B");
        b.write(0x3e8, b"C"); // COM3: nothing there
        assert_eq!(b.com1.lock().unwrap().writer().0, b"A");
        assert_eq!(b.com2.lock().unwrap().writer().0, b"B");
        let mut d = [0u8; 1];
        b.read(0x3ed, &mut d);
        assert_eq!(d, [0xff]);
        b.read(0x3fd, &mut d); // LSR: transmitter empty
        assert_ne!(d[0] & 0x20, 0);
        b.write(0x64, &[0x01]);
        assert!(!reset.load(Ordering::SeqCst));
        b.write(0x64, &[0xfe]);
        assert!(reset.load(Ordering::SeqCst));
    }
}
