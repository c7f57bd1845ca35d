//! `tellus-vmm`: the built-in VMM's process. `tellus run --backend builtin`
//! starts it from a sealed copy of this file and hands it one VM's
//! descriptors; see `tellus_launcher::backend::builtin::process`.

fn main() -> std::process::ExitCode {
    tellus_launcher::backend::builtin::process::vmm_main()
}
