//! The command line: flags into a [`Config`], and the help text. Pure: the environment
//! variables it honours (`PORT`, `WSCHAT_REDIS`) are passed in by `main`.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::*;

pub const HELP: &str = "\
wschat: a WebSocket chat-room server. Serves the chat page and relays every message a client
sends to every other client in its room (the room is the URL path).

Usage: wschat [OPTIONS]

Options:
  --bind ADDR                 address to listen on [default: 0.0.0.0]
  --port N                    port to listen on; 0 picks one [default: 6969, or $PORT]
  --reuse-port                let several wschat processes listen on one port (SO_REUSEPORT):
                              the kernel spreads connections across them; --redis shares
                              their rooms
  --echo                      also send each message back to its sender
  --static-dir DIR            serve the page from DIR (loaded at start and on SIGHUP)
                              instead of the built-in one
  --tls-cert FILE             PEM certificate chain: with --tls-key, the port speaks TLS
                              (https:// and wss://); both are read again on SIGHUP
  --tls-key FILE              PEM private key (ECDSA, Ed25519 or RSA)
  --tls-port N                serve TLS on this second port; --port stays plain
  --log-level LEVEL           error, warn, info, debug, trace or off [default: info]
  --max-message-size BYTES    largest message (and frame) a client may send; larger ones
                              are refused with close 1009 [default: 64K]
  --max-outbound BYTES        bytes that may wait for one client [default: 1M]
  --max-outbound-total BYTES  bytes that may wait for all clients together [default: 256M]
  --max-memory BYTES          the memory clients may make the server use, all together
                              ($WSCHAT_MAX_MEMORY) [default: half the cgroup limit, else
                              half of physical memory]; near it upgrades get 503, the
                              largest partial messages stop being read, queues are shed
  --send-buffer BYTES         fix the kernel send buffer of each client socket (the kernel
                              doubles it): the kernel memory a client that does not read
                              can pin; 0 leaves it to the kernel's autotuning, up to 4 MiB
                              a socket [default: 0]
  --slow-client POLICY        over --max-outbound: close (1008 \"slow consumer\"),
                              drop-newest or drop-oldest [default: close]
  --max-connections N         WebSocket connection cap; more get 503
                              [default: the open-file limit less 32]
  --handshake-timeout SECS    time to send a request head (and keep-alive idle)
                              [default: 10]
  --ping-interval SECS        ping a client silent this long [default: 30]
  --idle-timeout SECS         close a client silent this long, pongs included [default: 75]
  --max-rate N[/BURST]        messages per second per client, with a burst [default: off]
  --over-rate drop|close      over --max-rate: drop the message (counted) or close with
                              1008 [default: drop]
  --allow-origin LIST         browser origins allowed besides the page's own host:
                              comma-separated scheme://host[:port], or * [default: none]
  --stats-interval SECS       one-line stats log at info; 0 = off [default: 60]
  --history N                 messages each room keeps for late joiners; 0 = off [default: 0]
  --history-bytes BYTES       bytes each room's history keeps at most [default: 256K]
  --history-ttl SECS          history kept after a room's last member leaves [default: 3600]
  --redis URL                 share rooms with the other wschat processes on this Redis:
                              redis://[:password@]host:port[/db], or rediss:// for TLS
                              [default: $WSCHAT_REDIS]
  --redis-ca FILE             verify a rediss:// server against the CA certificates in FILE
                              (PEM) instead of the system's [default: $SSL_CERT_FILE, or
                              the system bundle]
  --redis-sharded             use Redis 7 sharded pub/sub (SSUBSCRIBE/SPUBLISH) on one
                              endpoint
  --compression off|on        accept permessage-deflate offers: a room message is
                              compressed once for every member that negotiated it
                              [default: off]
  --compression-min BYTES     messages shorter than this go uncompressed [default: 1K]
  --no-systemd                ignore LISTEN_FDS and NOTIFY_SOCKET
  -h, --help                  print this help
  -V, --version               print the version

BYTES take a K, M or G suffix (powers of 1024).
Signals: SIGINT/SIGTERM drain (Close 1001 to every client, then exit 0; a second one exits
at once); SIGHUP reloads --static-dir and nothing else.
";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>, log::LevelFilter),
    Help,
    Version,
}

/// A command-line mistake, said in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The environment variables the command line honours.
#[derive(Debug, Default, Clone, Copy)]
pub struct Environment<'a> {
    /// `$PORT`
    pub port: Option<&'a str>,
    /// `$WSCHAT_REDIS`
    pub redis: Option<&'a str>,
    /// `$WSCHAT_MAX_MEMORY`
    pub max_memory: Option<&'a str>,
}

/// Parses the arguments (without the program name).
pub fn parse(args: &[String], env: Environment<'_>) -> Result<Command, UsageError> {
    let port_env = env.port;
    let mut config = Config {
        // A daemon started by systemd speaks its protocols unless told not to.
        systemd: true,
        ..Config::default()
    };
    if let Some(url) = env.redis.filter(|u| !u.is_empty()) {
        config.redis = Some(
            crate::redis::RedisUrl::parse(url)
                .map_err(|e| UsageError(format!("WSCHAT_REDIS: {e}")))?,
        );
    }
    if let Some(bytes_text) = env.max_memory.filter(|m| !m.is_empty()) {
        config.max_memory = Some(bytes("WSCHAT_MAX_MEMORY", bytes_text)?);
    }
    let mut level = log::LevelFilter::Info;
    let mut over_rate = OverRate::Drop;
    let mut rate: Option<(f64, f64)> = None;
    if let Some(port) = port_env.filter(|p| !p.is_empty()) {
        config.port = port
            .parse()
            .map_err(|_| UsageError(format!("PORT={port:?} is not a port number")))?;
    }
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, UsageError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => iter
                    .next()
                    .cloned()
                    .ok_or_else(|| UsageError(format!("{flag} needs a value"))),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--echo" => config.echo = true,
            "--no-systemd" => config.systemd = false,
            "--redis-sharded" => config.redis_sharded = true,
            "--reuse-port" => config.reuse_port = true,
            "--redis" => {
                let v = value()?;
                config.redis = Some(
                    crate::redis::RedisUrl::parse(&v)
                        .map_err(|e| UsageError(format!("--redis: {e}")))?,
                );
            }
            "--redis-ca" => {
                let v = value()?;
                if !cfg!(feature = "tls") {
                    return Err(UsageError(
                        "--redis-ca: this build of wschat has no TLS (it was built without the \"tls\" feature)"
                            .to_string(),
                    ));
                }
                config.redis_ca = Some(PathBuf::from(v));
            }
            "--bind" => {
                let v = value()?;
                config.bind = v
                    .parse::<IpAddr>()
                    .map_err(|_| UsageError(format!("--bind {v:?} is not an IP address")))?;
            }
            "--port" => {
                let v = value()?;
                config.port = v.parse().map_err(|_| {
                    UsageError(format!("--port {v:?} is not a port number (0-65535)"))
                })?;
            }
            "--static-dir" => config.page = PageSource::Dir(PathBuf::from(value()?)),
            "--tls-cert" | "--tls-key" | "--tls-port" if !cfg!(feature = "tls") => {
                return Err(UsageError(format!(
                    "{flag}: this build of wschat has no TLS (it was built without the \"tls\" feature)"
                )));
            }
            "--tls-cert" => config.tls_cert = Some(PathBuf::from(value()?)),
            "--tls-key" => config.tls_key = Some(PathBuf::from(value()?)),
            "--tls-port" => {
                let v = value()?;
                config.tls_port = Some(v.parse().map_err(|_| {
                    UsageError(format!("--tls-port {v:?} is not a port number (0-65535)"))
                })?);
            }
            "--log-level" => {
                let v = value()?;
                level = v.parse().map_err(|_| {
                    UsageError(format!(
                        "--log-level {v:?}: use error, warn, info, debug, trace or off"
                    ))
                })?;
            }
            "--max-message-size" => config.max_message_size = bytes(flag, &value()?)?,
            "--max-outbound" => config.max_outbound = bytes(flag, &value()?)?,
            "--max-outbound-total" => config.max_outbound_total = bytes(flag, &value()?)?,
            "--max-memory" => config.max_memory = Some(bytes(flag, &value()?)?),
            "--send-buffer" => config.send_buffer = bytes(flag, &value()?)?,
            "--history-bytes" => config.history_bytes = bytes(flag, &value()?)?,
            "--compression-min" => config.compression_min = bytes(flag, &value()?)?,
            "--compression" => {
                config.compression = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => {
                        return Err(UsageError(format!(
                            "--compression {other:?}: use off or on"
                        )));
                    }
                }
            }
            "--slow-client" => {
                let v = value()?;
                config.slow_client = SlowClientPolicy::parse(&v).ok_or_else(|| {
                    UsageError(format!(
                        "--slow-client {v:?}: use close, drop-newest or drop-oldest"
                    ))
                })?;
            }
            "--max-connections" => config.max_connections = Some(number(flag, &value()?)?),
            "--handshake-timeout" => config.handshake_timeout = seconds(flag, &value()?)?,
            "--ping-interval" => config.ping_interval = seconds(flag, &value()?)?,
            "--idle-timeout" => config.idle_timeout = seconds(flag, &value()?)?,
            "--history-ttl" => config.history_ttl = seconds(flag, &value()?)?,
            "--history" => config.history = number(flag, &value()?)?,
            "--stats-interval" => {
                let every = seconds(flag, &value()?)?;
                config.stats_interval = if every.is_zero() { None } else { Some(every) };
            }
            "--max-rate" => {
                let v = value()?;
                let (per_second, burst) = match v.split_once('/') {
                    Some((r, b)) => (r, Some(b)),
                    None => (v.as_str(), None),
                };
                let per_second = decimal(per_second)
                    .map(|(whole, nanos)| whole as f64 + f64::from(nanos) / 1e9)
                    .filter(|r| *r > 0.0)
                    .ok_or_else(|| {
                        UsageError(format!("--max-rate {v:?}: use N or N/BURST, N > 0"))
                    })?;
                let burst = match burst {
                    Some(b) => decimal(b)
                        .map(|(whole, nanos)| whole as f64 + f64::from(nanos) / 1e9)
                        .filter(|b| *b >= 1.0)
                        .ok_or_else(|| {
                            UsageError(format!("--max-rate {v:?}: BURST must be at least 1"))
                        })?,
                    None => per_second.max(1.0),
                };
                rate = Some((per_second, burst));
            }
            "--over-rate" => {
                over_rate = match value()?.as_str() {
                    "drop" => OverRate::Drop,
                    "close" => OverRate::Close,
                    other => {
                        return Err(UsageError(format!(
                            "--over-rate {other:?}: use drop or close"
                        )));
                    }
                }
            }
            "--allow-origin" => {
                let v = value()?;
                config.origins = if v.trim() == "*" {
                    OriginPolicy::Any
                } else {
                    let list: Vec<String> = v
                        .split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_string())
                        .filter(|o| !o.is_empty())
                        .collect();
                    if list.iter().any(|o| !o.contains("://")) {
                        return Err(UsageError(format!(
                            "--allow-origin {v:?}: origins look like https://host[:port], or use *"
                        )));
                    }
                    OriginPolicy::List(list)
                };
            }
            other => {
                return Err(UsageError(format!("unknown option {other:?} (see --help)")));
            }
        }
    }
    // A CA for a link that does not use TLS is a mistake worth saying: the operator believes
    // the link is verified.
    if config.redis_ca.is_some() && !config.redis.as_ref().is_some_and(|url| url.tls) {
        return Err(UsageError(
            "--redis-ca needs a rediss:// URL in --redis or $WSCHAT_REDIS".to_string(),
        ));
    }
    if let Some((per_second, burst)) = rate {
        config.rate_limit = Some(RateLimit {
            per_second,
            burst,
            over: over_rate,
        });
    }
    config.validate().map_err(|e| UsageError(e.to_string()))?;
    Ok(Command::Run(Box::new(config), level))
}

/// A byte count with an optional K/M/G suffix, as a `usize`. A count this build cannot
/// address (4 GiB and more on a 32-bit target, e.g. `--max-outbound-total 8G` on armv7) is
/// refused in one line, never wrapped.
pub fn bytes(flag: &str, text: &str) -> Result<usize, UsageError> {
    let count = byte_count(flag, text)?;
    usize::try_from(count).map_err(|_| too_large(flag, text))
}

/// A byte count with an optional K/M/G suffix, in 64 bits on every target.
fn byte_count(flag: &str, text: &str) -> Result<u64, UsageError> {
    let bad = || {
        UsageError(format!(
            "{flag} {text:?}: use a byte count such as 65536, 64K or 16M"
        ))
    };
    let text = text.trim();
    let (digits, multiplier) = match text.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&text[..text.len() - 1], 1u64 << 10),
        Some('M') => (&text[..text.len() - 1], 1 << 20),
        Some('G') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(multiplier).ok_or_else(bad)
}

/// A count past this build's `usize`, said as such rather than as a malformed number.
fn too_large(flag: &str, text: &str) -> UsageError {
    UsageError(format!(
        "{flag} {text:?}: more than this {}-bit build can hold (at most {})",
        usize::BITS,
        usize::MAX
    ))
}

fn number(flag: &str, text: &str) -> Result<usize, UsageError> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| UsageError(format!("{flag} {text:?} is not a whole number")))?;
    usize::try_from(n).map_err(|_| too_large(flag, text))
}

/// Seconds, fractions allowed (`0.5`), below 10^9.
fn seconds(flag: &str, text: &str) -> Result<Duration, UsageError> {
    decimal(text.trim())
        .filter(|&(whole, _)| whole < 1_000_000_000)
        .map(|(whole, nanos)| Duration::new(whole, nanos))
        .ok_or_else(|| UsageError(format!("{flag} {text:?} is not a number of seconds")))
}

/// A plain decimal number (`12`, `0.5`, `.25`, `3.`) as its whole part and the first nine
/// digits of its fraction in billionths (later digits are cut off); None for anything else
/// (signs, exponents, `inf`). Parsed with integers: the binary then carries none of std's
/// float parsing (about 18 KB with its tables; docs/targets.md, Size).
fn decimal(text: &str) -> Option<(u64, u32)> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = whole.bytes().chain(fraction.bytes());
    if whole.len() + fraction.len() == 0 || !digits.clone().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let nanos = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0, |n, b| n * 10 + u32::from(b - b'0'));
    Some((whole, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, UsageError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args, Environment::default())? {
            Command::Run(config, _) => Ok(*config),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_line_speaks_systemd_unless_told_not_to() {
        assert!(run(&[]).unwrap().systemd);
        assert!(!run(&["--no-systemd"]).unwrap().systemd);
    }

    #[test]
    fn defaults_match_the_tutorial() {
        let config = run(&[]).unwrap();
        assert_eq!(config.port, 6969);
        assert_eq!(config.bind.to_string(), "0.0.0.0");
        assert!(!config.echo);
        assert!(!config.compression, "compression is off unless asked for");
        assert_eq!(config.compression_min, 1024);
    }

    #[test]
    fn compression_flags() {
        let config = run(&["--compression", "on", "--compression-min=4K"]).unwrap();
        assert!(config.compression);
        assert_eq!(config.compression_min, 4096);
        assert!(!run(&["--compression=off"]).unwrap().compression);
        assert!(run(&["--compression", "yes"]).is_err());
        assert!(run(&["--compression"]).is_err());
    }

    #[test]
    fn flags_set_their_fields() {
        let config = run(&[
            "--port",
            "0",
            "--echo",
            "--bind=127.0.0.1",
            "--max-message-size",
            "16M",
            "--max-outbound",
            "32M",
            "--slow-client",
            "drop-oldest",
            "--max-rate",
            "10/20",
            "--over-rate",
            "close",
            "--history",
            "50",
            "--stats-interval",
            "0",
            "--allow-origin",
            "https://a.example, http://b.example:8080/",
        ])
        .unwrap();
        assert_eq!(config.port, 0);
        assert!(config.echo);
        assert_eq!(config.max_message_size, 16 << 20);
        assert_eq!(config.slow_client, SlowClientPolicy::DropOldest);
        let rate = config.rate_limit.unwrap();
        assert_eq!(
            (rate.per_second, rate.burst, rate.over),
            (10.0, 20.0, OverRate::Close)
        );
        assert_eq!(config.history, 50);
        assert_eq!(config.stats_interval, None);
        assert_eq!(
            config.origins,
            OriginPolicy::List(vec![
                "https://a.example".into(),
                "http://b.example:8080".into()
            ])
        );
    }

    #[test]
    fn port_comes_from_the_environment_unless_a_flag_says_otherwise() {
        let env = Environment {
            port: Some("7000"),
            ..Environment::default()
        };
        let parsed = parse(&[], env).unwrap();
        assert!(matches!(parsed, Command::Run(c, _) if c.port == 7000));
        let parsed = parse(&["--port".into(), "7001".into()], env).unwrap();
        assert!(matches!(parsed, Command::Run(c, _) if c.port == 7001));
        let bad = Environment {
            port: Some("http"),
            ..Environment::default()
        };
        assert!(parse(&[], bad).is_err());
    }

    #[test]
    fn the_memory_ceiling_comes_from_the_flag_or_the_environment() {
        let env = Environment {
            max_memory: Some("64M"),
            ..Environment::default()
        };
        let parsed = parse(&[], env).unwrap();
        assert!(matches!(parsed, Command::Run(c, _) if c.max_memory == Some(64 << 20)));
        assert_eq!(
            run(&["--max-memory", "1G"]).unwrap().max_memory,
            Some(1 << 30)
        );
        assert_eq!(run(&[]).unwrap().max_memory, None);
        assert!(run(&["--max-memory", "lots"]).is_err());
    }

    #[test]
    fn the_send_buffer_is_a_size_and_zero_means_the_kernels() {
        assert_eq!(
            run(&[]).unwrap().send_buffer,
            crate::config::DEFAULT_SEND_BUFFER
        );
        assert_eq!(run(&["--send-buffer", "64K"]).unwrap().send_buffer, 65536);
        assert_eq!(run(&["--send-buffer", "0"]).unwrap().send_buffer, 0);
        assert!(run(&["--send-buffer", "2G"]).is_err());
        assert!(run(&["--send-buffer", "big"]).is_err());
    }

    #[test]
    fn redis_comes_from_the_flag_or_the_environment() {
        let env = Environment {
            redis: Some("redis://127.0.0.1:6390"),
            ..Environment::default()
        };
        let parsed = parse(&[], env).unwrap();
        assert!(matches!(parsed, Command::Run(c, _) if c.redis.is_some()));
        assert!(run(&["--redis", "http://nope"]).is_err());
        assert!(
            run(&["--redis", "redis://127.0.0.1:7000/2", "--redis-sharded"])
                .unwrap()
                .redis_sharded
        );
    }

    #[cfg(feature = "tls")]
    #[test]
    fn redis_ca_goes_with_a_rediss_url() {
        let config = run(&[
            "--redis",
            "rediss://127.0.0.1:6380",
            "--redis-ca",
            "/etc/wschat/redis-ca.pem",
        ])
        .unwrap();
        assert!(config.redis.unwrap().tls);
        assert_eq!(
            config.redis_ca,
            Some(PathBuf::from("/etc/wschat/redis-ca.pem"))
        );
        let env = Environment {
            redis: Some("rediss://cache.example"),
            ..Environment::default()
        };
        let args = ["--redis-ca=/ca.pem".to_string()];
        assert!(matches!(parse(&args, env), Ok(Command::Run(c, _)) if c.redis_ca.is_some()));
        for args in [
            &["--redis-ca", "/ca.pem"][..],
            &["--redis", "redis://127.0.0.1", "--redis-ca", "/ca.pem"],
        ] {
            let error = run(args).unwrap_err();
            assert!(error.0.contains("rediss://"), "{error}");
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_tls_rediss_and_redis_ca_are_refused_in_one_line() {
        for args in [
            &["--redis", "rediss://127.0.0.1"][..],
            &["--redis-ca", "/ca.pem"],
        ] {
            let error = run(args).unwrap_err();
            assert!(error.0.contains("has no TLS"), "{error}");
            assert!(!error.0.contains('\n'), "{error}");
        }
    }

    #[test]
    fn mistakes_are_one_line_errors() {
        for args in [
            &["--port", "70000"][..],
            &["--bogus"],
            &["--port"],
            &["--max-outbound", "12Q"],
            &["--slow-client", "maybe"],
            &["--max-rate", "0"],
            &["--log-level", "loud"],
            &["--allow-origin", "example.com"],
            &["--ping-interval", "80"],
        ] {
            let error = run(args).unwrap_err();
            assert!(!error.0.contains('\n'), "{error}");
        }
    }

    #[test]
    fn decimals_parse_with_integers() {
        assert_eq!(decimal("12"), Some((12, 0)));
        assert_eq!(decimal("0.5"), Some((0, 500_000_000)));
        assert_eq!(decimal(".25"), Some((0, 250_000_000)));
        assert_eq!(decimal("3."), Some((3, 0)));
        assert_eq!(decimal("1.0000000019"), Some((1, 1)));
        for bad in [
            "",
            ".",
            "-1",
            "+1",
            "1e3",
            "inf",
            "NaN",
            "1.2.3",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(decimal(bad), None, "{bad}");
        }
        assert_eq!(seconds("x", "0.5"), Ok(Duration::from_millis(500)));
        assert!(seconds("x", "1000000000").is_err());
    }

    #[test]
    fn byte_suffixes() {
        assert_eq!(bytes("x", "64K"), Ok(65536));
        assert_eq!(bytes("x", "1m"), Ok(1 << 20));
        assert_eq!(bytes("x", "7"), Ok(7));
        assert!(bytes("x", "K").is_err());
    }

    #[test]
    fn sizes_parse_in_64_bits_on_every_target() {
        assert_eq!(byte_count("x", "8G"), Ok(8 << 30));
        assert_eq!(byte_count("x", "4294967296"), Ok(1 << 32));
        // 2^34 G is 2^64 bytes: past u64 too, refused rather than wrapped to 0.
        assert!(byte_count("x", "17179869184G").is_err());
    }

    #[test]
    fn sizes_past_the_address_space_are_refused_not_wrapped() {
        // On a 64-bit target 8G is honoured; on a 32-bit one (armv7) it does not fit a usize
        // and must be refused in one line that says why, not wrapped to a small budget.
        let parsed = run(&["--max-outbound-total", "8G"]);
        let history = run(&["--history", "4294967296"]);
        if cfg!(target_pointer_width = "64") {
            assert_eq!(parsed.unwrap().max_outbound_total as u64, 8 << 30);
            assert_eq!(history.unwrap().history as u64, 1 << 32);
        } else {
            for error in [parsed.unwrap_err(), history.unwrap_err()] {
                assert!(error.0.contains("-bit build can hold"), "{error}");
                assert!(!error.0.contains('\n'), "{error}");
            }
        }
        // What a 32-bit build can hold is honoured there too.
        let config = run(&["--max-outbound-total", "3G"]).unwrap();
        assert_eq!(config.max_outbound_total as u64, 3 << 30);
    }

    #[test]
    fn reuse_port_is_off_unless_asked() {
        assert!(!run(&[]).unwrap().reuse_port);
        assert!(run(&["--reuse-port"]).unwrap().reuse_port);
    }
}
