//! The listening socket, made by hand so that `--reuse-port` can set `SO_REUSEPORT` before
//! `bind`: std and mio bind in one call and leave no moment to set it.
//!
//! With `SO_REUSEPORT` several processes (one per core, `contrib/wschat@.service`) bind the
//! same address and the kernel spreads new connections across them by a hash of the
//! connection's addresses; with `--redis` they share rooms. Every socket bound to the port
//! must set it, from the same user, or the bind fails with `EADDRINUSE`. A process that exits
//! drops the connections still waiting in its own accept queue (docs/scaling.md).
//!
//! `--send-buffer` is set here too, on the listener, and the kernel hands it to every socket
//! accepted from it: no system call per connection.

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Connections the kernel may hold completed but not yet accepted. mio's own `bind` uses the
/// same figure; the kernel caps it at `net.core.somaxconn` (4096 on current kernels). A
/// burst of reconnects after a restart is what fills it.
const BACKLOG: libc::c_int = 1024;

/// Binds a non-blocking, close-on-exec TCP listener on `address` (IPv4 or IPv6) with
/// `SO_REUSEADDR` (a restart may bind while old connections sit in TIME_WAIT) and, when
/// `reuse_port` is set, `SO_REUSEPORT`. Called once by `Server::bind`; the caller hands the
/// result to `mio::net::TcpListener::from_std`.
pub(crate) fn bind_listener(address: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let family = match address {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket() takes no pointers; a negative result is an error, checked below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns; OwnedFd closes it on every
    // early return below.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    set_flag(&socket, libc::SO_REUSEADDR)?;
    if reuse_port {
        set_flag(&socket, libc::SO_REUSEPORT)?;
    }

    let (storage, length) = socket_address(address);
    // SAFETY: storage is a sockaddr_storage holding a sockaddr_in or sockaddr_in6 of `length`
    // bytes, alive for the call.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const storage).cast::<libc::sockaddr>(),
            length,
        )
    };
    if bound != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen() takes no pointers.
    if unsafe { libc::listen(socket.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(socket))
}

/// Sets a boolean SOL_SOCKET option to 1.
fn set_flag(socket: &OwnedFd, option: libc::c_int) -> io::Result<()> {
    set_option(socket.as_raw_fd(), option, 1)
}

/// Fixes the kernel send buffer of a listening socket's connections at `bytes` (the kernel
/// doubles the figure for its bookkeeping and caps it at `net.core.wmem_max`), and returns
/// what the kernel set. Sockets accepted from the listener inherit it, with the lock that
/// stops the kernel from growing it: autotuned, a connection whose peer does not read
/// takes up to `tcp_wmem`'s maximum (4 MiB by default) of kernel memory, outside the
/// process's RSS and its memory ceiling. 2,000 such members of one room took the machine's
/// TCP memory to 1.5 GiB over loopback, past the point where the kernel throttles every
/// socket (docs/hostile.md).
pub(crate) fn set_send_buffer(socket: &impl AsRawFd, bytes: usize) -> io::Result<usize> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_option(socket.as_raw_fd(), libc::SO_SNDBUF, bytes)?;
    send_buffer(socket)
}

/// The kernel send buffer of a socket, in bytes.
pub(crate) fn send_buffer(socket: &impl AsRawFd) -> io::Result<usize> {
    let mut value: libc::c_int = 0;
    let mut length = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the value pointer and the length pointer describe `value` and `length`, alive
    // for the call.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw mut value).cast::<libc::c_void>(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(value).unwrap_or(0))
}

/// Sets an integer SOL_SOCKET option.
fn set_option(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the value pointer and its length describe `value`, alive for the call.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast::<libc::c_void>(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The C form of `address`, in a `sockaddr_storage` (large enough for either family), and
/// the length of the part that `bind` reads.
fn socket_address(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let length = match address {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            // The octets are already in network order; from_ne_bytes keeps them as they are.
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = v6.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, length as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Ipv6Addr, TcpStream};
    use std::time::Duration;

    fn loopback_v4() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    /// Accepts one connection on a non-blocking listener, waiting at most two seconds.
    fn accept_one(listener: &TcpListener) -> TcpStream {
        for _ in 0..200 {
            match listener.accept() {
                Ok((stream, _)) => return stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        panic!("no connection arrived");
    }

    #[test]
    fn two_listeners_share_a_port_with_reuse_port() {
        let first = bind_listener(loopback_v4(), true).expect("first bind");
        let address = first.local_addr().unwrap();
        assert_ne!(address.port(), 0);
        let second = bind_listener(address, true).expect("second bind on the same port");
        assert_eq!(second.local_addr().unwrap(), address);
    }

    #[test]
    fn a_second_bind_fails_without_reuse_port() {
        let first = bind_listener(loopback_v4(), false).expect("first bind");
        let address = first.local_addr().unwrap();
        let error = bind_listener(address, false).expect_err("the port is taken");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
    }

    #[test]
    fn every_socket_on_the_port_must_ask_for_reuse_port() {
        // The kernel shares a port only among sockets that all set SO_REUSEPORT: a process
        // started without --reuse-port cannot join (or hijack) a group that uses it.
        let first = bind_listener(loopback_v4(), true).expect("first bind");
        let address = first.local_addr().unwrap();
        let error = bind_listener(address, false).expect_err("the port is taken");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
    }

    #[test]
    fn the_listener_accepts_and_is_non_blocking_and_close_on_exec() {
        let listener = bind_listener(loopback_v4(), false).expect("bind");
        let error = listener.accept().expect_err("nothing is waiting yet");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        // SAFETY: F_GETFD reads the descriptor flags of a descriptor we own.
        let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFD) };
        assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "flags {flags}");

        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut served = accept_one(&listener);
        served.set_nonblocking(false).unwrap();
        served
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.write_all(b"hi").unwrap();
        let mut buffer = [0u8; 2];
        served.read_exact(&mut buffer).unwrap();
        assert_eq!(&buffer, b"hi");
    }

    #[test]
    fn accepted_sockets_keep_the_listeners_send_buffer() {
        let listener = bind_listener(loopback_v4(), false).expect("bind");
        let autotuned = {
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            send_buffer(&accept_one(&listener)).unwrap()
        };
        let set = set_send_buffer(&listener, 32 * 1024).expect("SO_SNDBUF");
        // Linux doubles the request for its bookkeeping.
        assert_eq!(set, 64 * 1024);
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let served = accept_one(&listener);
        assert_eq!(send_buffer(&served).unwrap(), set, "autotuned: {autotuned}");
        // An established connection's buffer would have grown by now if it were not locked:
        // write until the socket refuses, which is where autotuning grows it.
        served.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0;
        while written < 64 * 1024 * 1024 {
            match (&served).write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        assert_eq!(
            send_buffer(&served).unwrap(),
            set,
            "after {written} bytes queued"
        );
    }

    #[test]
    fn ipv6_loopback_binds_and_accepts() {
        let address = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
        let first = match bind_listener(address, true) {
            Ok(listener) => listener,
            // A host without IPv6 at all (the module not loaded, or disabled): nothing of
            // ours to test there. Any other error is a failure.
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => return,
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return,
            Err(e) => panic!("bind [::1]:0: {e}"),
        };
        let address = first.local_addr().unwrap();
        assert!(address.is_ipv6());
        let second = bind_listener(address, true).expect("second bind on [::1]");
        drop(second);
        let _client = TcpStream::connect(address).unwrap();
        accept_one(&first);
    }
}
