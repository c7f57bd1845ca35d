//! `swtpm:path=SOCK`: swtpm on UNIX sockets.
//!
//! libtss2 3.2.1's swtpm TCTI can connect to `SOCK` and `SOCK.ctrl`, but
//! tss-esapi 7's TCTI configuration type can only name a host and port, and
//! tss-esapi 8 needs a newer libtss2. So for the short time a [`super::Tpm`]
//! is open, this relay listens on two loopback ports (P for commands, P + 1
//! for control, the layout the TCTI expects) and forwards each connection to
//! the matching UNIX socket. It accepts only loopback peers, and it stops
//! listening when the connection it serves is dropped, so nothing stays open
//! after a measurement.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running relay; stops accepting when dropped.
pub struct UnixRelay {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl UnixRelay {
    /// Checks that both sockets exist, then listens on a loopback port pair.
    pub fn start(path: &Path) -> std::io::Result<UnixRelay> {
        let ctrl = PathBuf::from(format!("{}.ctrl", path.display()));
        for p in [path, ctrl.as_path()] {
            // Fail now, with the path in the message, rather than inside the TCTI.
            UnixStream::connect(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        }
        let (cmd, ctl) = bind_pair()?;
        let port = cmd.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        for (listener, target) in [(cmd, path.to_path_buf()), (ctl, ctrl)] {
            listener.set_nonblocking(true)?;
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("tpm-relay".into())
                .spawn(move || accept_loop(listener, target, stop))?;
        }
        Ok(UnixRelay { port, stop })
    }

    /// The command port (control is `port + 1`).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for UnixRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn bind_pair() -> std::io::Result<(TcpListener, TcpListener)> {
    for _ in 0..64 {
        let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let p = a.local_addr()?.port();
        if p == u16::MAX {
            continue;
        }
        if let Ok(b) = TcpListener::bind((Ipv4Addr::LOCALHOST, p + 1)) {
            return Ok((a, b));
        }
    }
    Err(std::io::Error::new(ErrorKind::AddrInUse, "no free loopback port pair for the swtpm relay"))
}

fn accept_loop(listener: TcpListener, target: PathBuf, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((tcp, peer)) if peer.ip().is_loopback() => {
                if let Ok(unix) = UnixStream::connect(&target) {
                    let _ = relay(tcp, unix);
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => break,
        }
    }
}

/// Copies both directions on their own threads; closing either side closes both.
fn relay(tcp: TcpStream, unix: UnixStream) -> std::io::Result<()> {
    tcp.set_nonblocking(false)?;
    let (mut t_in, mut u_out) = (tcp.try_clone()?, unix.try_clone()?);
    let (mut u_in, mut t_out) = (unix, tcp);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut t_in, &mut u_out);
        let _ = u_out.shutdown(std::net::Shutdown::Both);
        let _ = t_in.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut u_in, &mut t_out);
        let _ = t_out.shutdown(std::net::Shutdown::Both);
        let _ = u_in.shutdown(std::net::Shutdown::Both);
    });
    Ok(())
}
