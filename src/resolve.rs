//! Host names for outbound links (the Redis link's `redis://host:port`), resolved so that the
//! static armv7 build finds them too. Blocking: call it off the loop, as the Redis link does on
//! its short-lived lookup thread.
//!
//! The armv7 build links glibc statically (the armv7 musl standard library cannot be fetched
//! here; docs/targets.md). Such a binary resolves names with its own copy of glibc's `files`
//! and `dns` sources (built into libc since glibc 2.34), but any other source named in
//! `/etc/nsswitch.conf` (mdns4_minimal, resolve, myhostname) is a shared module that it
//! `dlopen`s, and that works only with the very glibc version it was linked with. So on that
//! build `/etc/hosts` is read here first, which covers `localhost` and names an operator pins
//! there without touching the host's modules; everywhere else `/etc/hosts` is the fallback
//! when `getaddrinfo` fails (a minimal container without `files` in nsswitch.conf).

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Read `/etc/hosts` before asking `getaddrinfo`: only on static glibc builds (see above).
const HOSTS_FIRST: bool = cfg!(all(target_env = "gnu", target_feature = "crt-static"));

const HOSTS_FILE: &str = "/etc/hosts";

/// The first address for `host` (an IP address, a name in `/etc/hosts`, or a name the
/// system resolver knows), with `port`.
pub(crate) fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    resolve_with(
        host,
        port,
        HOSTS_FIRST,
        || std::fs::read_to_string(HOSTS_FILE).ok(),
        |host, port| (host, port).to_socket_addrs().map(|mut all| all.next()),
    )
}

/// [`resolve`] with its two sources and their order passed in, for the tests.
fn resolve_with(
    host: &str,
    port: u16,
    hosts_first: bool,
    hosts_file: impl Fn() -> Option<String>,
    system: impl Fn(&str, u16) -> io::Result<Option<SocketAddr>>,
) -> io::Result<SocketAddr> {
    // An address needs no lookup (IPv6 comes without brackets, as RedisUrl stores it).
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let from_hosts = || {
        hosts_file()
            .and_then(|text| lookup_hosts(&text, host))
            .map(|ip| SocketAddr::new(ip, port))
    };
    if hosts_first && let Some(found) = from_hosts() {
        return Ok(found);
    }
    let error = match system(host, port) {
        Ok(Some(found)) => return Ok(found),
        Ok(None) => io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        ),
        Err(e) => e,
    };
    if !hosts_first && let Some(found) = from_hosts() {
        return Ok(found);
    }
    Err(error)
}

/// The address of the first line of a hosts file (`IP NAME [ALIAS...]`, `#` comments) that
/// names `host`, compared case-insensitively and without a trailing dot, as glibc does.
fn lookup_hosts(text: &str, host: &str) -> Option<IpAddr> {
    let wanted = host.strip_suffix('.').unwrap_or(host);
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let ip = fields.next()?.parse::<IpAddr>().ok()?;
        fields
            .any(|name| name.trim_end_matches('.').eq_ignore_ascii_case(wanted))
            .then_some(ip)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const HOSTS: &str = "\
# a comment line
127.0.0.1\tlocalhost
::1     localhost ip6-localhost ip6-loopback
10.1.2.3  redis.internal   Redis   # the broker
not-an-address  broken
fe80::1%eth0 scoped
192.0.2.7 redis.internal
";

    fn no_system(_: &str, _: u16) -> io::Result<Option<SocketAddr>> {
        Err(io::Error::other("no resolver here"))
    }

    #[test]
    fn hosts_lines_match_names_and_aliases_ignoring_case_and_comments() {
        let v4 = |a, b, c, d| Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        assert_eq!(lookup_hosts(HOSTS, "localhost"), v4(127, 0, 0, 1));
        assert_eq!(lookup_hosts(HOSTS, "LOCALHOST."), v4(127, 0, 0, 1));
        assert_eq!(
            lookup_hosts(HOSTS, "ip6-loopback"),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        // The first line that names it wins; an alias counts like the name.
        assert_eq!(lookup_hosts(HOSTS, "redis.internal"), v4(10, 1, 2, 3));
        assert_eq!(lookup_hosts(HOSTS, "redis"), v4(10, 1, 2, 3));
        // Words after '#' are not names; a line without a valid address is skipped.
        assert_eq!(lookup_hosts(HOSTS, "broker"), None);
        assert_eq!(lookup_hosts(HOSTS, "broken"), None);
        assert_eq!(lookup_hosts(HOSTS, "redis.internal.example"), None);
    }

    #[test]
    fn addresses_need_no_lookup() {
        let asked = Cell::new(false);
        let system = |_: &str, _: u16| {
            asked.set(true);
            no_system("", 0)
        };
        let v6 = resolve_with("::1", 6379, false, || None, system).unwrap();
        assert_eq!(v6, SocketAddr::from((Ipv6Addr::LOCALHOST, 6379)));
        let v4 = resolve_with("192.0.2.1", 7000, true, || None, system).unwrap();
        assert_eq!(v4, SocketAddr::from(([192, 0, 2, 1], 7000)));
        assert!(!asked.get());
    }

    #[test]
    fn hosts_file_is_the_fallback_when_the_system_resolver_fails() {
        let found =
            resolve_with("redis", 6379, false, || Some(HOSTS.to_string()), no_system).unwrap();
        assert_eq!(found, SocketAddr::from(([10, 1, 2, 3], 6379)));
        // A name in neither source keeps the resolver's own error.
        let error = resolve_with(
            "nowhere",
            6379,
            false,
            || Some(HOSTS.to_string()),
            no_system,
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "no resolver here");
        // The resolver answering with no address is an error too, not a panic.
        let error = resolve_with("nowhere", 1, false, || None, |_, _| Ok(None)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn system_resolver_answers_first_unless_hosts_come_first() {
        let elsewhere = SocketAddr::from(([192, 0, 2, 99], 6379));
        let asked = Cell::new(0);
        let system = |_: &str, _: u16| {
            asked.set(asked.get() + 1);
            Ok(Some(elsewhere))
        };
        let hosts = || Some(HOSTS.to_string());
        assert_eq!(
            resolve_with("redis", 6379, false, hosts, system).unwrap(),
            elsewhere
        );
        assert_eq!(asked.get(), 1);
        // Static glibc: /etc/hosts first, the system resolver not asked at all.
        let found = resolve_with("redis", 6379, true, hosts, system).unwrap();
        assert_eq!(found, SocketAddr::from(([10, 1, 2, 3], 6379)));
        assert_eq!(asked.get(), 1);
        // Not in the hosts file: on to the resolver.
        assert_eq!(
            resolve_with("other", 6379, true, hosts, system).unwrap(),
            elsewhere
        );
        assert_eq!(asked.get(), 2);
    }

    #[test]
    fn localhost_resolves_to_loopback_on_this_build() {
        // The real sources: on the static armv7 build under qemu-arm this goes through
        // /etc/hosts (or glibc's built-in files source), never a shared NSS module.
        let found = resolve("localhost", 6379).expect("localhost resolves");
        assert!(found.ip().is_loopback(), "{found}");
        assert_eq!(found.port(), 6379);
    }
}
