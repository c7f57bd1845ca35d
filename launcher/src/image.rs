//! Sealed copies of the files a launch measures and boots or executes
//! (kernel, initrd, firmware, and the built-in VMM's `tellus-vmm`).
//!
//! A file named on the command line is opened once and copied into an
//! anonymous memory file (`memfd_create(2)` with `MFD_ALLOW_SEALING`) that is
//! then sealed against every change (`F_SEAL_WRITE`, `F_SEAL_GROW`,
//! `F_SEAL_SHRINK`, and `F_SEAL_SEAL` so no seal can be lifted). The launch
//! records are computed over the sealed copy and the backends load the same
//! copy: the built-in VMM reads it with `pread(2)` through [`ImageReader`],
//! QEMU opens it as `/proc/self/fd/N` from the descriptor it inherits. Whoever
//! replaces the file on disk after staging changes nothing the VM runs, so a
//! VM never runs bytes other than those measured (no time-of-check to
//! time-of-use gap between measurement and load).

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tellus_measured_boot::digest::hash_reader;
use tellus_measured_boot::records::{FileMeasurement, FILE_ALGS};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

/// Largest file staged (1 GiB): far above any kernel, initrd or firmware
/// image, and a bound on the memory a mistaken path (a disk image, say) takes.
pub const MAX_IMAGE: u64 = 1 << 30;

/// Every seal a staged image carries.
const SEALS: SealFlag = SealFlag::F_SEAL_WRITE
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_SEAL);

/// Read size of [`ImageReader`]'s guest-memory path.
const CHUNK: usize = 1 << 20;

/// Why a file could not be staged. Nothing was measured or started.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is not a regular file; pass the image file itself")]
    NotAFile { what: &'static str, path: PathBuf },
    #[error("{what} {path} is larger than {MAX_IMAGE} bytes; pass a kernel, initrd or firmware image, not a disk image")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("{what} {path} is not sealed against change (seals {seals:#x}); it must come from the launcher's sealed copy")]
    NotSealed { what: &'static str, path: PathBuf, seals: i32 },
    #[error("cannot make a sealed in-memory copy of {what} {path}: {source}; tellus needs memfd_create(2) with sealing (Linux 3.17 or later) and memory for the copy")]
    Seal { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// A file copied into a sealed memfd: what the launch measures and what the
/// backends load. Its contents cannot change for as long as it exists.
#[derive(Debug)]
pub struct SealedImage {
    what: &'static str,
    path: PathBuf,
    file: File,
    len: u64,
}

impl SealedImage {
    /// Opens `path` once and copies it into a sealed memfd. `what` names the
    /// file in messages (`kernel`, `initrd`, `firmware`).
    pub fn stage(what: &'static str, path: &Path) -> Result<SealedImage, ImageError> {
        SealedImage::stage_as(what, path, false)
    }

    /// [`SealedImage::stage`] for a program that is executed from its sealed
    /// copy (`tellus-vmm`): the memfd is created executable.
    pub fn stage_executable(what: &'static str, path: &Path) -> Result<SealedImage, ImageError> {
        SealedImage::stage_as(what, path, true)
    }

    fn stage_as(what: &'static str, path: &Path, exec: bool) -> Result<SealedImage, ImageError> {
        let read = |source| ImageError::Read { what, path: path.to_path_buf(), source };
        let seal = |source| ImageError::Seal { what, path: path.to_path_buf(), source };
        let src = File::open(path).map_err(read)?;
        if !src.metadata().map_err(read)?.is_file() {
            return Err(ImageError::NotAFile { what, path: path.to_path_buf() });
        }
        let mut memfd = File::from(memfd(what, exec).map_err(seal)?);
        // Kernel-side copy (copy_file_range or sendfile) of at most one byte
        // over the limit; whatever the file holds now is what is sealed.
        let copied = std::io::copy(&mut (&src).take(MAX_IMAGE + 1), &mut memfd).map_err(read)?;
        if copied > MAX_IMAGE {
            return Err(ImageError::TooLarge { what, path: path.to_path_buf() });
        }
        fcntl(&memfd, FcntlArg::F_ADD_SEALS(SEALS)).map_err(|e| seal(e.into()))?;
        let have = fcntl(&memfd, FcntlArg::F_GET_SEALS).map_err(|e| seal(e.into()))?;
        if !SealFlag::from_bits_truncate(have).contains(SEALS) {
            return Err(seal(std::io::Error::other(format!("seals {have:#x} after sealing"))));
        }
        let len = memfd.metadata().map_err(seal)?.len();
        if len != copied {
            return Err(seal(std::io::Error::other(format!(
                "the copy holds {len} bytes, {copied} were written"
            ))));
        }
        Ok(SealedImage { what, path: path.to_path_buf(), file: memfd, len })
    }

    /// An image this process inherited as descriptor `fd` (`tellus-vmm`
    /// gets the kernel and initrd so from the launcher). It is accepted only
    /// if it carries every seal [`SealedImage::stage`] sets: then its
    /// contents are the ones the launcher measured.
    pub fn inherited(what: &'static str, fd: OwnedFd) -> Result<SealedImage, ImageError> {
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        // EINVAL: not a file that can carry seals (not a memfd) at all.
        let have = fcntl(&fd, FcntlArg::F_GET_SEALS).unwrap_or(0);
        if !SealFlag::from_bits_truncate(have).contains(SEALS) {
            return Err(ImageError::NotSealed { what, path, seals: have });
        }
        let file = File::from(fd);
        let len = file
            .metadata()
            .map_err(|source| ImageError::Read { what, path: path.clone(), source })?
            .len();
        Ok(SealedImage { what, path, file, len })
    }

    /// What the image is (`kernel`, `initrd`, `firmware`).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The file it was copied from (for messages; never opened again).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the image has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sealed memfd itself (writes, truncation and growth fail with
    /// `EPERM`). Read it through [`SealedImage::reader`], which does not move
    /// the shared file offset.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The memfd's descriptor number, at least 3: a child that inherits it
    /// (its close-on-exec flag cleared in the child only) has it under the
    /// same number.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// `/proc/self/fd/N`: the sealed copy as a path, in this process and in a
    /// child that inherits descriptor N. Opening it opens the same sealed
    /// memory file, not the file on disk.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.raw_fd()))
    }

    /// A reader over the whole image from its first byte. Readers are
    /// independent (each keeps its own position and reads with `pread(2)`),
    /// so the image can be read any number of times, e.g. once per boot.
    pub fn reader(&self) -> ImageReader<'_> {
        ImageReader { file: &self.file, pos: 0, len: self.len }
    }

    /// SHA-256, SHA-384 and size of the sealed bytes, as a launch record
    /// carries them.
    pub fn measurement(&self) -> std::io::Result<FileMeasurement> {
        let (d, size) = hash_reader(&mut self.reader(), &FILE_ALGS)?;
        let mut d = d.into_iter();
        match (d.next(), d.next()) {
            (Some(sha256), Some(sha384)) => Ok(FileMeasurement { sha256, sha384, size }),
            _ => Err(std::io::Error::other("the hasher returned fewer digests than asked")),
        }
    }

    /// The whole image in memory, refused beyond `max` bytes.
    pub fn read_all(&self, max: u64) -> std::io::Result<Vec<u8>> {
        if self.len > max {
            return Err(std::io::Error::other(format!(
                "{} bytes; at most {max} are read",
                self.len
            )));
        }
        let mut v = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        self.reader().read_to_end(&mut v)?;
        Ok(v)
    }
}

/// A new memfd with sealing allowed and close-on-exec set, at descriptor 3
/// or above (0..=2 are replaced by a child's standard streams); executable
/// or not as `exec` says.
fn memfd(what: &str, exec: bool) -> std::io::Result<OwnedFd> {
    let name = format!("tellus-{what}");
    let base = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    // Linux 6.3 and later take the executable bit explicitly (and, with
    // the vm.memfd_noexec sysctl, refuse to execute a memfd created
    // without MFD_EXEC); older kernels reject both flags with EINVAL.
    let mode =
        MFdFlags::from_bits_retain(if exec { libc::MFD_EXEC } else { libc::MFD_NOEXEC_SEAL });
    let fd = match memfd_create(name.as_str(), base | mode) {
        Err(nix::errno::Errno::EINVAL) => memfd_create(name.as_str(), base)?,
        r => r?,
    };
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else
    // owns; the OwnedFd takes sole ownership and closes it once.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) })
}

/// Reads a [`SealedImage`] from a position of its own with `pread(2)`: the
/// image's shared file offset is never used, so readers do not disturb each
/// other and the image is never consumed.
#[derive(Debug)]
pub struct ImageReader<'a> {
    file: &'a File,
    pos: u64,
    len: u64,
}

impl Read for ImageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ImageReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the image start")
        })?;
        Ok(self.pos)
    }
}

impl ReadVolatile for ImageReader<'_> {
    /// Into guest memory through a bounce buffer: vm-memory's own
    /// implementations use `read(2)` on the shared offset, which would let
    /// two readers of one image disturb each other.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut tmp = vec![0u8; buf.len().min(CHUNK)];
        let n = self.read(&mut tmp).map_err(VolatileMemoryError::IOError)?;
        (&tmp[..n]).read_volatile(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tellus_measured_boot::digest::hash_file;

    fn source(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinuz");
        std::fs::write(&p, bytes).unwrap();
        (dir, p)
    }

    fn errno(e: &std::io::Error) -> Option<i32> {
        e.raw_os_error()
    }

    #[test]
    fn sealed_copy_refuses_every_change() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (_d, p) = source(&bytes);
        let img = SealedImage::stage("kernel", &p).unwrap();
        assert_eq!(img.len(), bytes.len() as u64);
        assert!(img.raw_fd() > 2);
        let seals = fcntl(img.file(), FcntlArg::F_GET_SEALS).unwrap();
        assert!(SealFlag::from_bits_truncate(seals).contains(SEALS), "{seals:#x}");

        let eperm = Some(libc::EPERM);
        // Write in place, append (growth), truncate (shrink), extend with
        // set_len (growth), positional write: all refused with EPERM.
        let mut f = img.file();
        assert_eq!(errno(&f.write(b"evil").unwrap_err()), eperm);
        assert_eq!(errno(&img.file().write_at(b"evil", 0).unwrap_err()), eperm);
        assert_eq!(errno(&img.file().set_len(10).unwrap_err()), eperm);
        assert_eq!(errno(&img.file().set_len(bytes.len() as u64 + 4096).unwrap_err()), eperm);
        assert_eq!(errno(&img.file().write_at(b"x", bytes.len() as u64 + 1).unwrap_err()), eperm);
        // A writable mapping is refused too (EPERM: F_SEAL_WRITE).
        // SAFETY: mmap with a null hint only creates a new mapping (or fails);
        // on success it is unmapped at once and never dereferenced.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                img.raw_fd(),
                0,
            )
        };
        if m != libc::MAP_FAILED {
            // SAFETY: `m` is the 4096-byte mapping just created above.
            unsafe { libc::munmap(m, 4096) };
            panic!("a writable shared mapping of the sealed image was allowed");
        }
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), eperm);
        // No seal can be added (F_SEAL_SEAL); none can ever be removed.
        assert_eq!(
            fcntl(img.file(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW)).unwrap_err(),
            nix::errno::Errno::EPERM
        );
        // Through /proc/self/fd (what QEMU opens): read-write open works,
        // the write itself does not.
        let mut again = std::fs::OpenOptions::new().write(true).open(img.fd_path()).unwrap();
        assert_eq!(errno(&again.write(b"evil").unwrap_err()), eperm);
        assert_eq!(img.read_all(MAX_IMAGE).unwrap(), bytes, "nothing changed");
    }

    #[test]
    fn contents_are_the_source_at_staging_time_and_stay_so() {
        let original = b"the measured kernel".repeat(5000);
        let (_d, p) = source(&original);
        let img = SealedImage::stage("kernel", &p).unwrap();
        let m = img.measurement().unwrap();
        let (d, size) = hash_file(&p, &FILE_ALGS).unwrap();
        assert_eq!(
            (m.sha256.clone(), m.sha384.clone(), m.size),
            (d[0].clone(), d[1].clone(), size)
        );

        // The file on disk is rewritten in place and then replaced.
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().write_all(b"EVIL").unwrap();
        std::fs::write(&p, b"a different kernel").unwrap();
        assert_eq!(img.read_all(MAX_IMAGE).unwrap(), original);
        assert_eq!(std::fs::read(img.fd_path()).unwrap(), original);
        assert_eq!(img.measurement().unwrap(), m);
        assert_ne!(FileMeasurement::of("kernel", &p).unwrap(), m);
    }

    #[test]
    fn readers_are_independent_and_repeatable() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let (_d, p) = source(&bytes);
        let img = SealedImage::stage("initrd", &p).unwrap();
        let mut a = img.reader();
        let mut b = img.reader();
        let mut x = [0u8; 100];
        a.read_exact(&mut x).unwrap();
        assert_eq!(&x[..], &bytes[..100]);
        let mut all = Vec::new();
        b.read_to_end(&mut all).unwrap();
        assert_eq!(all, bytes);
        a.read_exact(&mut x).unwrap();
        assert_eq!(&x[..], &bytes[100..200], "b's reads did not move a");
        assert_eq!(a.seek(SeekFrom::End(-10)).unwrap(), 9990);
        let mut tail = Vec::new();
        a.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, &bytes[9990..]);
        assert!(a.seek(SeekFrom::Current(-20_000)).is_err());
        assert_eq!(a.seek(SeekFrom::Start(20_000)).unwrap(), 20_000);
        assert_eq!(a.read(&mut x).unwrap(), 0, "past the end reads nothing");
        // Into (volatile) guest memory.
        let mut mem = vec![0u8; 12_000];
        let vs = VolatileSlice::from(&mut mem[..]);
        let mut r = img.reader();
        let mut got = 0;
        while got < bytes.len() {
            let n = r.read_volatile(&mut vs.offset(got).unwrap()).unwrap();
            assert!(n > 0);
            got += n;
        }
        assert_eq!(&mem[..bytes.len()], &bytes[..]);
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let e = SealedImage::stage("kernel", &dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, ImageError::Read { what: "kernel", .. }), "{e}");
        let e = SealedImage::stage("initrd", dir.path()).unwrap_err();
        assert!(matches!(e, ImageError::NotAFile { what: "initrd", .. }), "{e}");
        let e = SealedImage::stage("firmware", Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(e, ImageError::NotAFile { .. }), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let img = SealedImage::stage("initrd", &empty).unwrap();
        assert!(img.is_empty());
        assert_eq!(img.measurement().unwrap().size, 0);
    }

    #[test]
    fn an_executable_image_runs_from_its_sealed_copy_and_others_do_not() {
        let exe = SealedImage::stage_executable("vmm", Path::new("/bin/true")).unwrap();
        let st = std::process::Command::new(exe.fd_path()).status().unwrap();
        assert!(st.success(), "{st}");
        let data = SealedImage::stage("kernel", Path::new("/bin/true")).unwrap();
        // Not executable where the kernel knows MFD_NOEXEC_SEAL (6.3+).
        let noexec = std::fs::read_to_string("/proc/sys/vm/memfd_noexec").is_ok();
        let r = std::process::Command::new(data.fd_path()).status();
        assert_eq!(r.is_err(), noexec, "{r:?}");
    }

    #[test]
    fn an_inherited_image_must_carry_every_seal() {
        let (_dir, path) = source(b"measured bytes");
        let staged = SealedImage::stage("kernel", &path).unwrap();
        let dup = || OwnedFd::from(staged.file().try_clone().unwrap());
        let got = SealedImage::inherited("kernel", dup()).unwrap();
        assert_eq!(got.len(), staged.len());
        assert_eq!(got.measurement().unwrap(), staged.measurement().unwrap());
        assert_eq!(got.fd_path(), got.path());
        // A plain file, and a memfd with some seals but not all, are refused.
        let plain = OwnedFd::from(File::open(&path).unwrap());
        let e = SealedImage::inherited("kernel", plain).unwrap_err();
        assert!(matches!(e, ImageError::NotSealed { what: "kernel", seals: 0, .. }), "{e}");
        let partly = memfd("initrd", false).unwrap();
        fcntl(&partly, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW))
            .unwrap();
        let e = SealedImage::inherited("initrd", partly).unwrap_err();
        assert!(matches!(e, ImageError::NotSealed { what: "initrd", .. }), "{e}");
        assert!(e.to_string().contains("must come from the launcher's sealed copy"), "{e}");
    }
}
