//! Guest RAM after loading: a mapping KVM runs the guest in, and nothing else.
//!
//! This is where "no introspection by construction" is enforced for memory.
//! [`boot::load`](super::boot::load) is the only code that writes guest
//! memory; it builds a `GuestMemoryMmap`, writes the kernel, initrd and boot
//! structures, and then hands the mapping to [`GuestRam::seal`], which takes
//! it by value. `GuestRam`'s field is private to this module and the type has
//! exactly one method, [`GuestRam::register`], which gives KVM the mapping's
//! address. No code in the VMM can read or write guest memory afterwards: the
//! devices (UARTs, i8042) are port-I/O only and never see memory, and there is
//! no gdbstub, snapshot or migration code that could.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Guest RAM, sealed: only KVM can use it.
pub struct GuestRam {
    mem: GuestMemoryMmap,
}

impl GuestRam {
    /// Takes the loaded memory; the loader's handle is gone after this.
    pub fn seal(mem: GuestMemoryMmap) -> GuestRam {
        GuestRam { mem }
    }

    /// Registers every region as a KVM memory slot.
    pub fn register(&self, vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
        for (slot, r) in self.mem.iter().enumerate() {
            let host = self
                .mem
                .get_host_address(r.start_addr())
                .map_err(|_| kvm_ioctls::Error::new(libc::EFAULT))?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of exactly `memory_size`
            // bytes owned by `self.mem`. `GuestRam` is dropped only after the
            // VM fd and all vCPU fds (see `Vm`'s field order), so KVM never
            // uses the address after it is unmapped.
            unsafe { vm.set_user_memory_region(region)? };
        }
        Ok(())
    }
}
