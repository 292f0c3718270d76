//! The two systemd protocols a daemon needs, with nothing but std and libc:
//! socket activation (`LISTEN_FDS`/`LISTEN_PID`, sd_listen_fds(3)) and readiness notification
//! (`NOTIFY_SOCKET`, sd_notify(3)): `READY=1`, `STOPPING=1`, `WATCHDOG=1`.

use std::io;
use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The first passed descriptor (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: i32 = 3;

/// Takes the listening socket systemd passed, if the environment says it passed one to this
/// process. Called once at start-up, before anything else opens a descriptor.
pub fn take_listener() -> io::Result<Option<TcpListener>> {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    if !pid_matches || count < 1 {
        return Ok(None);
    }
    // Children must not inherit the variables (sd_listen_fds(3) unsets them too).
    // SAFETY: called at start-up while the process has a single thread.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if count > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("systemd passed {count} sockets; wschat serves exactly one"),
        ));
    }
    let fd = LISTEN_FDS_START;
    // SAFETY: fstat on any integer is safe; it only fills the struct.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } != 0 || (stat.st_mode & libc::S_IFMT) != libc::S_IFSOCK
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "LISTEN_FDS is set but descriptor 3 is not a socket",
        ));
    }
    // A socket, but is it listening? (A .socket unit with Accept=yes, or a datagram socket,
    // would otherwise fail later with a puzzling error.)
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `listening`.
    let ok = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    } == 0;
    if !ok || listening == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptor 3 is not a listening socket (use ListenStream= with Accept=no)",
        ));
    }
    // Close-on-exec, as sd_listen_fds does.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: systemd handed this process descriptor 3 to own; nothing else uses it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Sends state lines to the service manager, if `NOTIFY_SOCKET` names one.
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    pub watchdog_every: Option<Duration>,
}

impl Notifier {
    /// Reads the environment once at start-up; None when not run under a notifying manager.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_str()?.to_string();
        let address = if let Some(name) = path.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes()).ok()?
        } else {
            SocketAddr::from_pathname(&path).ok()?
        };
        let socket = UnixDatagram::unbound().ok()?;
        socket.set_nonblocking(true).ok()?;
        let watchdog_pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&usec| usec > 0 && watchdog_pid_ok)
            .map(|usec| Duration::from_micros(usec / 2));
        Some(Notifier {
            socket,
            address,
            watchdog_every,
        })
    }

    /// Sends one datagram; a manager that is gone or busy is not the server's problem.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.address) {
            log::debug!("sd_notify {state:?} failed: {e}");
        }
    }
}
