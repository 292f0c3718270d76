//! The `--redis` URL: `redis[s]://[[user]:password@]host[:port][/db]`, parsed once at start-up.
//! `rediss://` asks for TLS (see `tls.rs`); the build without the `tls` feature refuses it.
//! Its `Display` hides the password, so the URL can be logged.

use std::fmt;

/// Redis's own default port, used when the URL names none.
const DEFAULT_PORT: u16 = 6379;

/// Parsed `redis[s]://[[user]:password@]host[:port][/db]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// `rediss://`: both connections speak TLS, and the host name is the name the server's
    /// certificate must carry.
    pub(crate) tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// ACL user name (`AUTH user password`), only with a password.
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// Database index for `SELECT` (irrelevant for pub/sub, harmless).
    pub(crate) db: Option<u32>,
}

/// Why a Redis URL was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisUrlError {
    MissingScheme,
    UnsupportedScheme(String),
    /// `rediss://` in a build without the `tls` feature.
    NoTlsInThisBuild,
    EmptyHost,
    BadHost(String),
    BadPort(String),
    BadDb(String),
    BadUserInfo,
    BadPercentEncoding,
    UnsupportedQuery,
}

impl fmt::Display for RedisUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingScheme => write!(f, "redis URL must start with redis:// or rediss://"),
            Self::UnsupportedScheme(scheme) => {
                write!(
                    f,
                    "unsupported redis URL scheme {scheme:?} (use redis:// or rediss://)"
                )
            }
            Self::NoTlsInThisBuild => write!(
                f,
                "rediss:// needs TLS, and this build of wschat has no TLS (it was built without the \"tls\" feature)"
            ),
            Self::EmptyHost => write!(f, "redis URL has no host"),
            Self::BadHost(host) => {
                write!(
                    f,
                    "invalid host {host:?} in redis URL (IPv6 needs [brackets])"
                )
            }
            Self::BadPort(port) => write!(f, "invalid port {port:?} in redis URL (1-65535)"),
            Self::BadDb(db) => write!(
                f,
                "invalid database {db:?} in redis URL (expected /<number>)"
            ),
            Self::BadUserInfo => {
                write!(
                    f,
                    "invalid credentials in redis URL (expected :password@ or user:password@)"
                )
            }
            Self::BadPercentEncoding => write!(f, "invalid %-escape in redis URL credentials"),
            Self::UnsupportedQuery => {
                write!(f, "redis URL query strings/fragments are not supported")
            }
        }
    }
}

impl std::error::Error for RedisUrlError {}

impl RedisUrl {
    /// Parses `redis[s]://[[user]:password@]host[:port][/db]`. Port defaults to 6379 for
    /// both schemes (managed services that use another port name it). Credentials may be
    /// %-encoded.
    pub fn parse(text: &str) -> Result<RedisUrl, RedisUrlError> {
        let text = text.trim();
        let (scheme, rest) = text.split_once("://").ok_or(RedisUrlError::MissingScheme)?;
        let tls = if scheme.eq_ignore_ascii_case("redis") {
            false
        } else if scheme.eq_ignore_ascii_case("rediss") {
            if !cfg!(feature = "tls") {
                return Err(RedisUrlError::NoTlsInThisBuild);
            }
            true
        } else {
            return Err(RedisUrlError::UnsupportedScheme(scheme.to_string()));
        };
        if rest.contains(['?', '#']) {
            return Err(RedisUrlError::UnsupportedQuery);
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
        let db = if path.is_empty() {
            None
        } else {
            Some(
                path.parse::<u32>()
                    .map_err(|_| RedisUrlError::BadDb(path.to_string()))?,
            )
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (mut username, mut password) = (None, None);
        if let Some(userinfo) = userinfo {
            let (user, secret) = userinfo.split_once(':').ok_or(RedisUrlError::BadUserInfo)?;
            let (user, secret) = (percent_decode(user)?, percent_decode(secret)?);
            if secret.is_empty() {
                if !user.is_empty() {
                    return Err(RedisUrlError::BadUserInfo);
                }
            } else {
                password = Some(secret);
                username = (!user.is_empty()).then_some(user);
            }
        }
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| RedisUrlError::BadHost(hostport.to_string()))?;
            let port = match after {
                "" => None,
                colon_port => Some(
                    colon_port
                        .strip_prefix(':')
                        .ok_or_else(|| RedisUrlError::BadHost(hostport.to_string()))?,
                ),
            };
            (host, port)
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => {
                    if port.contains(':') {
                        return Err(RedisUrlError::BadHost(hostport.to_string()));
                    }
                    (host, Some(port))
                }
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(RedisUrlError::EmptyHost);
        }
        if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
            return Err(RedisUrlError::BadHost(host.to_string()));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(number) if number != 0 => number,
                _ => return Err(RedisUrlError::BadPort(port.to_string())),
            },
        };
        Ok(RedisUrl {
            tls,
            host: host.to_string(),
            port,
            username,
            password,
            db,
        })
    }
}

fn percent_decode(text: &str) -> Result<String, RedisUrlError> {
    if !text.contains('%') {
        return Ok(text.to_string());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(RedisUrlError::BadPercentEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| RedisUrlError::BadPercentEncoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| RedisUrlError::BadPercentEncoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| RedisUrlError::BadPercentEncoding)
}

/// Display redacts the password, so the URL can be logged.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", if self.tls { "rediss" } else { "redis" })?;
        if self.password.is_some() {
            write!(f, "{}:***@", self.username.as_deref().unwrap_or(""))?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        if let Some(db) = self.db {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_defaults() {
        let url = RedisUrl::parse("redis://localhost").unwrap();
        assert_eq!(url.host, "localhost");
        assert_eq!(url.port, 6379);
        assert_eq!((url.username, url.password, url.db), (None, None, None));
        let url = RedisUrl::parse("redis://127.0.0.1:7000/").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.db),
            ("127.0.0.1", 7000, None)
        );
    }

    #[test]
    fn url_password_and_db() {
        let url = RedisUrl::parse("redis://:s3cr%40t@redis.example:6380/2").unwrap();
        assert_eq!(url.password.as_deref(), Some("s3cr@t"));
        assert_eq!(url.username, None);
        assert_eq!(
            (url.host.as_str(), url.port, url.db),
            ("redis.example", 6380, Some(2))
        );
        assert_eq!(url.to_string(), "redis://:***@redis.example:6380/2");
        assert!(!format!("{url:?}").contains("s3cr"));
        let url = RedisUrl::parse("REDIS://alice:pw:with:colons@h/15").unwrap();
        assert_eq!(url.username.as_deref(), Some("alice"));
        assert_eq!(url.password.as_deref(), Some("pw:with:colons"));
        assert_eq!(url.db, Some(15));
        let url = RedisUrl::parse("redis://:p@ss@h").unwrap(); // last '@' splits
        assert_eq!(
            (url.password.as_deref(), url.host.as_str()),
            (Some("p@ss"), "h")
        );
        let url = RedisUrl::parse("redis://:@h").unwrap();
        assert_eq!(url.password, None);
    }

    #[test]
    fn url_plain_is_not_tls() {
        assert!(!RedisUrl::parse("redis://h").unwrap().tls);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn url_rediss_asks_for_tls_on_the_same_default_port() {
        let url = RedisUrl::parse("rediss://:pw@cache.example").unwrap();
        assert!(url.tls);
        assert_eq!((url.host.as_str(), url.port), ("cache.example", 6379));
        assert_eq!(url.to_string(), "rediss://:***@cache.example:6379");
        let url = RedisUrl::parse("REDISS://127.0.0.1:6380/3").unwrap();
        assert!(url.tls);
        assert_eq!((url.port, url.db), (6380, Some(3)));
        assert_eq!(url.to_string(), "rediss://127.0.0.1:6380/3");
        let url = RedisUrl::parse("rediss://[::1]:7000").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.tls), ("::1", 7000, true));
        assert_eq!(
            RedisUrl::parse("rediss://"),
            Err(RedisUrlError::EmptyHost),
            "the rest of the URL is checked as for redis://"
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn url_rediss_is_refused_without_tls() {
        let error = RedisUrl::parse("rediss://cache.example").unwrap_err();
        assert_eq!(error, RedisUrlError::NoTlsInThisBuild);
        assert!(error.to_string().contains("has no TLS"));
    }

    #[test]
    fn url_ipv6() {
        let url = RedisUrl::parse("redis://[::1]:6390").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 6390));
        assert_eq!(url.to_string(), "redis://[::1]:6390");
        let url = RedisUrl::parse("redis://[::1]").unwrap();
        assert_eq!(url.port, 6379);
    }

    #[test]
    fn url_bad_inputs() {
        use RedisUrlError::*;
        let cases: &[(&str, RedisUrlError)] = &[
            ("localhost:6379", MissingScheme),
            ("", MissingScheme),
            ("redis+tls://h", UnsupportedScheme("redis+tls".into())),
            ("http://h", UnsupportedScheme("http".into())),
            ("redis://", EmptyHost),
            ("redis://:6379", EmptyHost),
            ("redis://:pw@", EmptyHost),
            ("redis://h:", BadPort("".into())),
            ("redis://h:0", BadPort("0".into())),
            ("redis://h:65536", BadPort("65536".into())),
            ("redis://h:abc", BadPort("abc".into())),
            ("redis://h/x", BadDb("x".into())),
            ("redis://h/1/2", BadDb("1/2".into())),
            ("redis://h/-1", BadDb("-1".into())),
            ("redis://::1", BadHost("::1".into())),
            ("redis://[::1", BadHost("[::1".into())),
            ("redis://[::1]x", BadHost("[::1]x".into())),
            ("redis://pw@h", BadUserInfo),
            ("redis://user:@h", BadUserInfo),
            ("redis://:%zz@h", BadPercentEncoding),
            ("redis://:%4@h", BadPercentEncoding),
            ("redis://h?db=1", UnsupportedQuery),
        ];
        for (text, want) in cases {
            assert_eq!(RedisUrl::parse(text).as_ref(), Err(want), "{text}");
            assert!(!want.to_string().is_empty());
        }
    }
}
