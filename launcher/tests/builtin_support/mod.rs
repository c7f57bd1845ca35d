//! Test guests for the built-in VMM: tiny x86-64 programs assembled here, in
//! Rust, wrapped in a bzImage boot header (protocol 2.15, `XLF_KERNEL_64`) so
//! they go through exactly the loader and boot path a Linux kernel does; the
//! VMM enters them at the 64-bit entry (load address + 0x200) in long mode
//! with `rsi` pointing at the zero page.
//!
//! The assembler below emits only the handful of instructions the payloads
//! use; each encoding is written out next to its mnemonic (checked against
//! GNU as while writing it). Jumps are rel8/rel32 to labels, fixed up at the end.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tellus_launcher::accel::Accel;
use tellus_launcher::backend::builtin::Builtin;
use tellus_launcher::backend::{Backend, EventSink, PowerControl, VmmEvent};
use tellus_launcher::channel::{self, ChannelEvent};
use tellus_launcher::vm_config::VmConfig;
use tellus_protocol::{encode_frame, GuestMessage, HostMessage};

pub const COM1: u16 = 0x3f8;
pub const COM2: u16 = 0x2f8;

enum Fix {
    Rel8,
    Rel32,
}

/// A minimal x86-64 assembler for the payloads.
#[derive(Default)]
pub struct Asm {
    code: Vec<u8>,
    labels: HashMap<String, usize>,
    fixups: Vec<(usize, String, Fix)>,
    unique: usize,
}

impl Asm {
    fn b(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }
    fn rel8(&mut self, op: u8, label: &str) -> &mut Self {
        self.code.push(op);
        self.fixups.push((self.code.len(), label.into(), Fix::Rel8));
        self.code.push(0);
        self
    }
    fn rel32(&mut self, prefix: &[u8], label: &str) -> &mut Self {
        self.code.extend_from_slice(prefix);
        self.fixups.push((self.code.len(), label.into(), Fix::Rel32));
        self.code.extend_from_slice(&[0; 4]);
        self
    }
    /// A fresh label name.
    pub fn fresh(&mut self, stem: &str) -> String {
        self.unique += 1;
        format!("{stem}.{}", self.unique)
    }
    pub fn label(&mut self, name: &str) -> &mut Self {
        let at = self.code.len();
        assert!(self.labels.insert(name.into(), at).is_none(), "label {name} twice");
        self
    }
    /// `lea rsi, [rip + label]`
    pub fn lea_rsi(&mut self, label: &str) -> &mut Self {
        self.rel32(&[0x48, 0x8d, 0x35], label)
    }
    /// `lea rdi, [rip + label]`
    pub fn lea_rdi(&mut self, label: &str) -> &mut Self {
        self.rel32(&[0x48, 0x8d, 0x3d], label)
    }
    /// `lea rax, [rip + label]`
    pub fn lea_rax(&mut self, label: &str) -> &mut Self {
        self.rel32(&[0x48, 0x8d, 0x05], label)
    }
    /// Points the 64-bit interrupt gate at `gate` to `handler` and the IDTR
    /// at `idtr` to `idt`, then loads it (`mov [rdi], ax` 66 89 07,
    /// `shr rax, 16` 48 c1 e8 10, `mov [rdi+6], ax` 66 89 47 06,
    /// `mov [rdi+8], eax` 89 47 08, `mov [rdi+2], rax` 48 89 47 02).
    pub fn load_idt(&mut self, idt: &str, idtr: &str, gate: &str, handler: &str) -> &mut Self {
        self.lea_rdi(gate).lea_rax(handler).b(&[0x66, 0x89, 0x07]);
        self.b(&[0x48, 0xc1, 0xe8, 0x10]).b(&[0x66, 0x89, 0x47, 0x06]);
        self.b(&[0x48, 0xc1, 0xe8, 0x10]).b(&[0x89, 0x47, 0x08]);
        self.lea_rax(idt).lea_rdi(idtr).b(&[0x48, 0x89, 0x47, 0x02]).lidt(idtr)
    }
    /// `sti; hlt`
    pub fn sti_hlt(&mut self) -> &mut Self {
        self.b(&[0xfb, 0xf4])
    }
    /// `lidt [rip + label]`
    pub fn lidt(&mut self, label: &str) -> &mut Self {
        self.rel32(&[0x0f, 0x01, 0x1d], label)
    }
    /// `mov ecx, imm32`
    pub fn mov_ecx(&mut self, v: u32) -> &mut Self {
        self.b(&[0xb9]).b(&v.to_le_bytes())
    }
    /// `mov edi, imm32`
    pub fn mov_edi(&mut self, v: u32) -> &mut Self {
        self.b(&[0xbf]).b(&v.to_le_bytes())
    }
    /// `mov dx, imm16`
    pub fn mov_dx(&mut self, v: u16) -> &mut Self {
        self.b(&[0x66, 0xba]).b(&v.to_le_bytes())
    }
    /// `mov al, imm8`
    pub fn mov_al(&mut self, v: u8) -> &mut Self {
        self.b(&[0xb0, v])
    }
    /// `out dx, al`
    pub fn out_dx(&mut self) -> &mut Self {
        self.b(&[0xee])
    }
    /// `out imm8, al`
    pub fn out_imm(&mut self, port: u8) -> &mut Self {
        self.b(&[0xe6, port])
    }
    /// `in al, dx`
    pub fn in_dx(&mut self) -> &mut Self {
        self.b(&[0xec])
    }
    /// `lodsb`
    pub fn lodsb(&mut self) -> &mut Self {
        self.b(&[0xac])
    }
    /// `test al, imm8`
    pub fn test_al(&mut self, v: u8) -> &mut Self {
        self.b(&[0xa8, v])
    }
    /// `cmp al, [rdi]`
    pub fn cmp_al_rdi(&mut self) -> &mut Self {
        self.b(&[0x3a, 0x07])
    }
    /// `inc rdi`
    pub fn inc_rdi(&mut self) -> &mut Self {
        self.b(&[0x48, 0xff, 0xc7])
    }
    /// `mov rbx, rsi`
    pub fn mov_rbx_rsi(&mut self) -> &mut Self {
        self.b(&[0x48, 0x89, 0xf3])
    }
    /// `mov esi, [rbx + disp32]` (zero-extends into rsi)
    pub fn mov_esi_rbx(&mut self, disp: u32) -> &mut Self {
        self.b(&[0x8b, 0xb3]).b(&disp.to_le_bytes())
    }
    /// `mov ecx, 0xc0000080; rdmsr` (EFER into edx:eax)
    pub fn rdmsr_efer(&mut self) -> &mut Self {
        self.mov_ecx(0xc000_0080).b(&[0x0f, 0x32])
    }
    /// `mov eax, 1; cpuid; mov r8d, ebx; mov r9d, ecx` (clobbers rbx, rdx)
    pub fn cpuid_leaf1(&mut self) -> &mut Self {
        self.b(&[0xb8, 1, 0, 0, 0, 0x0f, 0xa2, 0x41, 0x89, 0xd8, 0x41, 0x89, 0xc9])
    }
    /// `mov eax, r8d`
    pub fn mov_eax_r8d(&mut self) -> &mut Self {
        self.b(&[0x44, 0x89, 0xc0])
    }
    /// `mov eax, r9d`
    pub fn mov_eax_r9d(&mut self) -> &mut Self {
        self.b(&[0x44, 0x89, 0xc8])
    }
    /// `shr eax, imm8`
    pub fn shr_eax(&mut self, n: u8) -> &mut Self {
        self.b(&[0xc1, 0xe8, n])
    }
    /// `and al, imm8`
    pub fn and_al(&mut self, v: u8) -> &mut Self {
        self.b(&[0x24, v])
    }
    /// `add al, imm8`
    pub fn add_al(&mut self, v: u8) -> &mut Self {
        self.b(&[0x04, v])
    }
    /// `loop label` (rcx)
    pub fn loop_(&mut self, label: &str) -> &mut Self {
        self.rel8(0xe2, label)
    }
    /// `cmp al, imm8`
    pub fn cmp_al(&mut self, v: u8) -> &mut Self {
        self.b(&[0x3c, v])
    }
    /// `jz label` (rel32)
    pub fn jz32(&mut self, label: &str) -> &mut Self {
        self.rel32(&[0x0f, 0x84], label)
    }
    /// `jnz label` (rel32)
    pub fn jnz32(&mut self, label: &str) -> &mut Self {
        self.rel32(&[0x0f, 0x85], label)
    }
    /// `jz label`
    pub fn jz(&mut self, label: &str) -> &mut Self {
        self.rel8(0x74, label)
    }
    /// `jnz label`
    pub fn jnz(&mut self, label: &str) -> &mut Self {
        self.rel8(0x75, label)
    }
    /// `jmp label` (rel32)
    pub fn jmp(&mut self, label: &str) -> &mut Self {
        self.rel32(&[0xe9], label)
    }
    /// `ud2`
    pub fn ud2(&mut self) -> &mut Self {
        self.b(&[0x0f, 0x0b])
    }
    /// `cli; hlt`
    pub fn cli_hlt(&mut self) -> &mut Self {
        self.b(&[0xfa, 0xf4])
    }
    /// Raw data.
    pub fn data(&mut self, bytes: &[u8]) -> &mut Self {
        self.b(bytes)
    }

    /// Writes `len` bytes at `label` to UART `port`.
    pub fn puts(&mut self, port: u16, label: &str, len: usize) -> &mut Self {
        let l = self.fresh("puts");
        self.lea_rsi(label).mov_ecx(len as u32).mov_dx(port);
        self.label(&l).lodsb().out_dx().loop_(&l)
    }

    /// Writes `len` bytes from the address already in `rsi` to `port`.
    pub fn puts_rsi(&mut self, port: u16, len: u32) -> &mut Self {
        let l = self.fresh("puts");
        self.mov_ecx(len).mov_dx(port);
        self.label(&l).lodsb().out_dx().loop_(&l)
    }

    /// Writes the NUL-terminated string at `rsi` to `port`.
    pub fn puts_cstr(&mut self, port: u16) -> &mut Self {
        let (l, done) = (self.fresh("cstr"), self.fresh("cstr.done"));
        self.mov_dx(port);
        self.label(&l).lodsb().b(&[0x84, 0xc0]).jz(&done).out_dx().b(&[0xeb]);
        // jmp rel8 back to l
        let back = self.labels[&l] as isize - (self.code.len() as isize + 1);
        self.code.push(back as i8 as u8);
        self.label(&done)
    }

    /// Reads `len` bytes from UART `port` (polling its line status) and
    /// compares them with the bytes at `label`; jumps to `bad` on the first
    /// difference.
    pub fn expect_rx(&mut self, port: u16, label: &str, len: usize, bad: &str) -> &mut Self {
        let (l, wait) = (self.fresh("rx"), self.fresh("rx.wait"));
        self.lea_rdi(label).mov_ecx(len as u32);
        self.label(&l).label(&wait);
        self.mov_dx(port + 5).in_dx().test_al(1).jz(&wait);
        self.mov_dx(port).in_dx().cmp_al_rdi().jnz32(bad).inc_rdi().loop_(&l)
    }

    /// Reads one byte from UART `port` into `al` (polling its line status).
    pub fn rx_byte(&mut self, port: u16) -> &mut Self {
        let wait = self.fresh("rxb.wait");
        self.label(&wait).mov_dx(port + 5).in_dx().test_al(1).jz(&wait);
        self.mov_dx(port).in_dx()
    }

    /// The payload's power-off: load the empty IDT at label `idt0` (10 zero
    /// bytes the caller places) and execute `ud2`, a triple fault, which
    /// ends a built-in VM (there is no ACPI to power off through).
    pub fn power_off(&mut self) -> &mut Self {
        self.lidt("idt0").ud2().cli_hlt()
    }

    /// `mov al, 0xfe; out 0x64, al`, then halt: the i8042 reset request (the
    /// built-in VMM boots the VM again).
    pub fn i8042_reset(&mut self) -> &mut Self {
        self.mov_al(0xfe).out_imm(0x64).cli_hlt()
    }

    /// The finished code with every label resolved.
    pub fn finish(mut self) -> Vec<u8> {
        for (at, label, fix) in std::mem::take(&mut self.fixups) {
            let target = *self.labels.get(&label).unwrap_or_else(|| panic!("no label {label}"));
            match fix {
                Fix::Rel8 => {
                    let rel = target as isize - (at as isize + 1);
                    let rel = i8::try_from(rel).unwrap_or_else(|_| panic!("{label} out of rel8"));
                    self.code[at] = rel as u8;
                }
                Fix::Rel32 => {
                    let rel = (target as isize - (at as isize + 4)) as i32;
                    self.code[at..at + 4].copy_from_slice(&rel.to_le_bytes());
                }
            }
        }
        self.code
    }
}

/// What a payload does after its banner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Sends `Ready`, then waits for a host frame: `PowerOff` → powers off
    /// (triple fault, see [`Asm::power_off`]); `Reboot` → writes 0xFE to port
    /// 0x64 (a reset: the VMM boots it again); anything else → a message on
    /// COM1 and power-off.
    Ready,
    /// Sends garbage, then `Ready`, then as [`Variant::Ready`].
    Garbage,
    /// Sends a header announcing 1 MiB, then `Ready`, then as [`Variant::Ready`].
    Oversized,
    /// Loads an empty IDT and executes `ud2`: a triple fault.
    TripleFault,
    /// Spins forever after its banner.
    Spin,
    /// Starts vCPU 1 with INIT + SIPI (x2APIC ICR); the AP writes to COM1
    /// from real mode and sets a flag the boot vCPU waits for; then powers off.
    Smp,
    /// Takes an interrupt from COM1 (THR empty, IRQ 4 through the in-kernel
    /// PIC and the LAPIC's LINT0 as ExtINT) on vector 0x24, then powers off.
    Interrupt,
}

/// Where the AP of [`Variant::Smp`] sets its flag (free low memory).
pub const AP_FLAG: u32 = 0x6f00;

/// The AP's code, 16-bit real mode at 0x8000: writes "AP 1 up\n" to COM1
/// (`mov dx, 0x3f8` ba f8 03, then `mov al, c; out dx, al` b0 c ee per
/// byte), sets the flag (`mov byte [0x6f00], 1` c6 06 00 6f 01) and halts
/// (`cli; hlt; jmp $`).
pub const AP_CODE: &[u8] = &[
    0xba, 0xf8, 0x03, //
    0xb0, b'A', 0xee, 0xb0, b'P', 0xee, 0xb0, b' ', 0xee, 0xb0, b'1', 0xee, //
    0xb0, b' ', 0xee, 0xb0, b'u', 0xee, 0xb0, b'p', 0xee, 0xb0, b'\n', 0xee, //
    0xc6, 0x06, 0x00, 0x6f, 0x01, //
    0xfa, 0xf4, 0xeb, 0xfe,
];

/// Bytes the garbage variant sends before its `Ready` frame.
pub const GARBAGE: &[u8] = b"\xff\xfe garbage from the guest \x00\x01\x02";
/// Header the oversized variant sends: 1 MiB announced, then 16 bytes of it.
pub const OVERSIZED: &[u8] = b"\x00\x10\x00\x00oversized-frame!";
/// What the payload's `Ready` says.
pub const AGENT_VERSION: &str = "test-payload-1";
pub const UPTIME_MS: u64 = 7;
/// The first bytes of the test initrd (the payload prints them).
pub const INITRD_MAGIC: &[u8] = b"INITRD-OK";

pub fn ready_frame() -> Vec<u8> {
    encode_frame(&GuestMessage::Ready { agent_version: AGENT_VERSION.into(), uptime_ms: UPTIME_MS })
        .unwrap()
}

pub fn poweroff_frame() -> Vec<u8> {
    encode_frame(&HostMessage::PowerOff).unwrap()
}

pub fn reboot_frame() -> Vec<u8> {
    encode_frame(&HostMessage::Reboot).unwrap()
}

/// Console output of one boot of a `Ready` variant up to and including its
/// `Ready` (what it prints before it waits for the host).
pub fn expected_until_ready(v: Variant, cmdline: &str, vcpus: u32) -> String {
    assert!(matches!(v, Variant::Ready | Variant::Garbage | Variant::Oversized));
    format!("{}ready sent\n", expected_banner(cmdline, vcpus))
}

/// Console output of one boot of a `Ready` variant that the host reboots
/// with a `Reboot` frame.
pub fn expected_rebooted(v: Variant, cmdline: &str, vcpus: u32) -> String {
    format!("{}reboot received\n", expected_until_ready(v, cmdline, vcpus))
}

pub const BANNER: &str = "tellus test payload: 64-bit entry, EFER.LMA=";

/// The console output the payload writes before its variant's own part, on
/// the boot vCPU of a `vcpus`-vCPU VM.
pub fn expected_banner(cmdline: &str, vcpus: u32) -> String {
    format!(
        "{BANNER}1\ncpuid: apic id 0, logical {vcpus}, hypervisor 1\ncmdline: {cmdline}\ninitrd: {}\n",
        std::str::from_utf8(INITRD_MAGIC).unwrap()
    )
}

/// The complete console output of a variant that runs to its end.
pub fn expected_console(v: Variant, cmdline: &str, vcpus: u32) -> String {
    let tail = match v {
        Variant::Ready | Variant::Garbage | Variant::Oversized => {
            "ready sent\npower-off received\n"
        }
        Variant::TripleFault => "triple fault next\n",
        Variant::Spin => "spinning\n",
        Variant::Interrupt => "irq 4 delivered on vector 0x24\n",
        Variant::Smp => "AP 1 up\nBSP saw AP 1\n",
    };
    format!("{}{tail}", expected_banner(cmdline, vcpus))
}

/// The payload's code (entered at its first byte).
pub fn program(v: Variant) -> Vec<u8> {
    let mut a = Asm::default();
    let s = |t: &str| t.as_bytes().to_vec();
    // CPUID leaf 1 as the VMM normalised it (before rbx is used: cpuid
    // clobbers it): EBX[31:24] APIC id, EBX[23:16] logical processors,
    // ECX[31] hypervisor.
    a.cpuid_leaf1();
    // Banner: proves 64-bit code runs (rip-relative addressing) and reads
    // EFER.LMA (bit 10) from the MSR.
    a.mov_rbx_rsi();
    a.puts(COM1, "banner", BANNER.len());
    a.rdmsr_efer().shr_eax(10).and_al(1).add_al(b'0').mov_dx(COM1).out_dx();
    a.puts(COM1, "nl", 1);
    a.puts(COM1, "apic", 15).mov_eax_r8d().shr_eax(24).add_al(b'0').mov_dx(COM1).out_dx();
    a.puts(COM1, "logical", 10).mov_eax_r8d().shr_eax(16).add_al(b'0').mov_dx(COM1).out_dx();
    a.puts(COM1, "hyper", 13).mov_eax_r9d().shr_eax(31).add_al(b'0').mov_dx(COM1).out_dx();
    a.puts(COM1, "nl", 1);
    // Zero page: the command line (cmd_line_ptr at 0x228) and the initrd
    // (ramdisk_image at 0x218) the VMM placed.
    a.puts(COM1, "cmdline", 9).mov_esi_rbx(0x228).puts_cstr(COM1).puts(COM1, "nl", 1);
    a.puts(COM1, "initrd", 8).mov_esi_rbx(0x218).puts_rsi(COM1, INITRD_MAGIC.len() as u32);
    a.puts(COM1, "nl", 1);
    let mut data: Vec<(&str, Vec<u8>)> = vec![
        ("banner", s(BANNER)),
        ("nl", s("\n")),
        ("apic", s("cpuid: apic id ")),
        ("logical", s(", logical ")),
        ("hyper", s(", hypervisor ")),
        ("cmdline", s("cmdline: ")),
        ("initrd", s("initrd: ")),
    ];
    match v {
        Variant::Ready | Variant::Garbage | Variant::Oversized => {
            if v == Variant::Garbage {
                a.puts(COM2, "garbage", GARBAGE.len());
                data.push(("garbage", GARBAGE.to_vec()));
            }
            if v == Variant::Oversized {
                a.puts(COM2, "oversized", OVERSIZED.len());
                data.push(("oversized", OVERSIZED.to_vec()));
            }
            let ready = ready_frame();
            let (off, reboot) = (poweroff_frame(), reboot_frame());
            // Both frames start with the same three length bytes and differ
            // in the fourth (their lengths): read three, then dispatch.
            assert_eq!(off[..3], reboot[..3]);
            assert_ne!(off[3], reboot[3]);
            a.puts(COM2, "ready", ready.len()).puts(COM1, "sent", 11);
            a.expect_rx(COM2, "hdr3", 3, "bad");
            a.rx_byte(COM2).cmp_al(off[3]).jz32("off").cmp_al(reboot[3]).jz32("reboot");
            a.jmp("bad");
            a.label("off").expect_rx(COM2, "off_body", off.len() - 4, "bad");
            a.puts(COM1, "received", 19).power_off();
            a.label("reboot").expect_rx(COM2, "reboot_body", reboot.len() - 4, "bad");
            a.puts(COM1, "rebooting", 16).i8042_reset();
            a.label("bad").puts(COM1, "badmsg", 23).power_off();
            data.push(("ready", ready));
            data.push(("hdr3", off[..3].to_vec()));
            data.push(("off_body", off[4..].to_vec()));
            data.push(("reboot_body", reboot[4..].to_vec()));
            data.push(("sent", s("ready sent\n")));
            data.push(("received", s("power-off received\n")));
            data.push(("rebooting", s("reboot received\n")));
            data.push(("badmsg", s("unexpected host bytes!\n")));
        }
        Variant::TripleFault => {
            a.puts(COM1, "tf", 18).power_off();
            data.push(("tf", s("triple fault next\n")));
        }
        Variant::Smp => {
            // The AP's real-mode code goes to 0x8000 (SIPI vector 0x08).
            a.lea_rsi("ap").mov_edi(0x8000).mov_ecx(AP_CODE.len() as u32).b(&[0xf3, 0xa4]);
            // x2APIC on: APIC_BASE (MSR 0x1b) |= EN | EXTD.
            a.mov_ecx(0x1b).b(&[0x0f, 0x32]).b(&[0x0d, 0x00, 0x0c, 0x00, 0x00]).b(&[0x0f, 0x30]);
            // ICR (MSR 0x830), destination APIC id 1: INIT (level assert), then SIPI.
            for icr in [0x4500u32, 0x4608] {
                a.mov_ecx(0x830)
                    .b(&[0xba, 1, 0, 0, 0, 0xb8])
                    .b(&icr.to_le_bytes())
                    .b(&[0x0f, 0x30]);
            }
            // Wait for the AP's flag: cmp byte [AP_FLAG], 1; jne wait.
            a.label("wait").b(&[0x80, 0x3c, 0x25]).b(&AP_FLAG.to_le_bytes()).b(&[1]).jnz("wait");
            a.puts(COM1, "saw", 13).power_off();
            data.push(("saw", s("BSP saw AP 1\n")));
            data.push(("ap", AP_CODE.to_vec()));
        }
        Variant::Interrupt => {
            // IDT of vectors 0..=0x24; only 0x24 is present.
            let mut idt = vec![0u8; 0x25 * 16];
            idt[0x24 * 16 + 2] = 0x10; // selector: the boot code segment
            idt[0x24 * 16 + 5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
            let mut idtr = vec![0u8; 10];
            idtr[..2].copy_from_slice(&((idt.len() - 1) as u16).to_le_bytes());
            a.load_idt("idt", "idtr", "gate24", "handler");
            // 8259 master: ICW1..4 (vectors 0x20..0x27), then mask all but IRQ 4.
            for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xef)]
            {
                a.mov_al(v).out_imm(port);
            }
            // COM1 IER: THR-empty interrupt; the UART raises it at once.
            a.mov_dx(COM1 + 1).mov_al(0x02).out_dx();
            a.sti_hlt();
            a.puts(COM1, "noirq", 13).power_off();
            a.label("handler").mov_dx(COM1 + 1).mov_al(0).out_dx();
            a.puts(COM1, "irq", 31).power_off();
            data.push(("noirq", s("no interrupt\n")));
            data.push(("irq", s("irq 4 delivered on vector 0x24\n")));
            data.push(("idtr", idtr));
            data.push(("idt", idt[..0x24 * 16].to_vec()));
            data.push(("gate24", idt[0x24 * 16..].to_vec()));
        }
        Variant::Spin => {
            a.puts(COM1, "spin", 9);
            a.label("forever").jmp("forever");
            data.push(("spin", s("spinning\n")));
        }
    }
    // An IDT with limit 0 for `power_off`: every exception faults again.
    data.push(("idt0", vec![0; 10]));
    for (name, bytes) in data {
        a.label(name).data(&bytes);
    }
    a.finish()
}

/// Boot-header options for the bzImage wrapper.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub protocol: u16,
    pub xloadflags: u16,
    /// `init_size`; `None`: the payload's size rounded up to 4 KiB.
    pub init_size: Option<u32>,
}

impl Default for Header {
    fn default() -> Self {
        Header { protocol: 0x020f, xloadflags: 1, init_size: None }
    }
}

/// Wraps `code` as a bzImage: boot sector + one setup sector with the
/// header, then the protected-mode part whose offset 0x200 is `code`.
pub fn bzimage(code: &[u8], h: Header) -> Vec<u8> {
    let mut pm = vec![0xf4u8; 0x200]; // the 32-bit entry: hlt (never used)
    pm.extend_from_slice(code);
    pm.resize(pm.len().div_ceil(16) * 16, 0);
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1; // setup_sects
    let syssize = pm.len().div_ceil(16) as u32;
    img[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x200..0x202].copy_from_slice(&[0xeb, 0x66]); // jump over the header
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&h.protocol.to_le_bytes());
    img[0x211] = 0x01; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    img[0x236..0x238].copy_from_slice(&h.xloadflags.to_le_bytes());
    img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    let init = h.init_size.unwrap_or((pm.len().div_ceil(4096) * 4096) as u32);
    img[0x260..0x264].copy_from_slice(&init.to_le_bytes());
    img.extend_from_slice(&pm);
    img
}

/// A directory with a payload bzImage and the test initrd.
pub struct Guest {
    pub dir: tempfile::TempDir,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl Guest {
    pub fn new(image: &[u8]) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("payload.bzImage");
        let initrd = dir.path().join("payload.initrd");
        std::fs::write(&kernel, image).unwrap();
        let mut rd = INITRD_MAGIC.to_vec();
        rd.resize(8192, 0xa5);
        std::fs::write(&initrd, rd).unwrap();
        Guest { dir, kernel, initrd }
    }

    pub fn payload(v: Variant) -> Guest {
        Guest::new(&bzimage(&program(v), Header::default()))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// An event sink, as `tellus run` gives a backend, that forwards every VMM
/// event to the returned receiver.
pub fn event_channel() -> (EventSink, Receiver<VmmEvent>) {
    let (tx, rx) = mpsc::channel();
    let sink: EventSink = Arc::new(move |e| {
        let _ = tx.send(e);
    });
    (sink, rx)
}

/// The events of the agent channel read from `rx` through the launcher's own
/// frame decoder (`channel::spawn_reader`, as `tellus run` reads it).
pub fn channel_events(rx: Box<dyn Read + Send>) -> Receiver<ChannelEvent> {
    let (tx, events) = mpsc::channel();
    channel::spawn_reader(rx, move |e| {
        let _ = tx.send(e);
    });
    events
}

/// A VM the built-in VMM started on KVM through the `Backend` interface: its
/// VMM events arrive on `vmm` and a thread copies its console into
/// `console`. Its vCPUs are not started yet.
pub struct BuiltinVm {
    pub power: Box<dyn PowerControl>,
    pub vmm: Receiver<VmmEvent>,
    /// Everything the console stream delivered so far.
    pub console: Arc<Mutex<Vec<u8>>>,
    /// The console copier; it ends with the console stream.
    pub console_done: JoinHandle<()>,
    /// Agent channel, guest → host.
    pub channel_rx: Box<dyn Read + Send>,
    /// Agent channel, host → guest.
    pub channel_tx: Box<dyn Write + Send>,
}

/// The built-in backend with this package's `tellus-vmm`.
pub fn builtin() -> Builtin {
    Builtin::locate(Some(Path::new(env!("CARGO_BIN_EXE_tellus-vmm")))).expect("stage tellus-vmm")
}

/// Starts `cfg` on the built-in VMM (KVM) with its console copied; panics
/// if it does not start.
pub fn start_builtin(cfg: &VmConfig) -> BuiltinVm {
    let (sink, vmm) = event_channel();
    let started = builtin().start(cfg, Accel::Kvm, sink).expect("builtin start");
    let console = Arc::new(Mutex::new(Vec::new()));
    let copy = console.clone();
    let mut con = started.streams.console;
    let console_done = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = con.read(&mut buf) {
            if n == 0 {
                break;
            }
            copy.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    BuiltinVm {
        power: started.power,
        vmm,
        console,
        console_done,
        channel_rx: started.streams.channel_rx,
        channel_tx: started.streams.channel_tx,
    }
}

/// The console output in `console` so far (lossy UTF-8).
pub fn console_text(console: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&console.lock().unwrap()).into_owned()
}

/// Waits up to `timeout` until `done` holds for the console output so far;
/// panics with `what` and the output otherwise.
pub fn wait_console(
    console: &Mutex<Vec<u8>>,
    timeout: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    let end = Instant::now() + timeout;
    while !done(&console_text(console)) {
        assert!(Instant::now() < end, "{what}: {:?}", console_text(console));
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `true` when `/dev/kvm` is hardware KVM; prints the SKIP line otherwise.
pub fn hardware_kvm_or_skip(test: &str) -> bool {
    match tellus_launcher::accel::detect() {
        tellus_launcher::accel::KvmKind::Hardware(_) => true,
        other => {
            swtpm_tests::skip(&other.to_string(), test);
            false
        }
    }
}

/// `true` when `/dev/kvm` can be used at all (hardware or PVM).
pub fn kvm_usable_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            swtpm_tests::skip(&format!("/dev/kvm cannot be opened: {e}"), test);
            false
        }
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
