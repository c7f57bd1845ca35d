//! The agent's end of the channel: a serial port in raw mode.

use crate::AgentError;
use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use std::fs::File;
use std::io::Write;

/// Opens `path` read-write, without making it the controlling terminal, and
/// puts it in raw mode (no echo, no line discipline), so frames pass unchanged.
/// The line speed is left alone: a virtual UART does not pace bytes by it
/// (and glibc's versioned `cfsetspeed` does not link statically).
pub fn open(path: &str) -> Result<File, AgentError> {
    let fd = fcntl::open(path, OFlag::O_RDWR | OFlag::O_NOCTTY, Mode::empty())
        .map_err(|source| AgentError::OpenChannel { path: path.into(), source })?;
    let raw = |source| AgentError::RawMode { path: path.into(), source };
    let mut t = tcgetattr(&fd).map_err(raw)?;
    cfmakeraw(&mut t);
    tcsetattr(&fd, SetArg::TCSANOW, &t).map_err(raw)?;
    Ok(File::from(fd))
}

/// Test hook (`tellus.test.channel_noise`): garbage, then a frame header that
/// announces 1 MiB followed by some of its "payload", then a stray plausible
/// header. The launcher must drop all of it and still see the `Ready` after.
pub fn write_noise(chan: &mut File) -> Result<(), AgentError> {
    chan.write_all(b"\xde\xad\xbe\xef noise from tellus.test.channel_noise \xff\x00")?;
    chan.write_all(&(1u32 << 20).to_be_bytes())?;
    chan.write_all(&[0x5a; 2048])?;
    chan.write_all(&4000u32.to_be_bytes())?;
    chan.flush()?;
    println!("tellus-agent: wrote test noise to the channel");
    Ok(())
}
