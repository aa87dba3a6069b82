//! Who may do what on the HTTP side: bearer tokens (`--http-token-file`), the names a request's
//! `Host` may carry (`--http-allowed-hosts`, against DNS rebinding), and the role a request gets.
//! Pure rules, unit-tested here; `mod.rs` applies them to requests.

use std::net::IpAddr;

use ring::digest::{digest, SHA256};
use subtle::{Choice, ConstantTimeEq};

/// The cookie that `POST /login` sets, for the page (a browser's `EventSource` cannot send an
/// `Authorization` header).
pub(super) const COOKIE: &str = "thingsbus_token";

/// Shortest token accepted: anything shorter is guessable.
const MIN_TOKEN: usize = 16;
/// Longest token accepted.
const MAX_TOKEN: usize = 512;

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read everything: the page, JSON, events, metrics.
    Read,
    /// Read, and send commands to things.
    Command,
}

/// The tokens of a token file, kept as SHA-256 digests: a request's token is compared with each
/// of them in constant time, so neither its content nor which one matched shows in the timing.
#[derive(Debug)]
pub struct Tokens {
    entries: Vec<([u8; 32], Role)>,
}

fn sha256(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, text.as_bytes()).as_ref());
    out
}

/// True for the characters of an RFC 6750 token, which are also safe in a cookie.
fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=')
}

impl Tokens {
    /// Reads a token file.
    pub(super) fn load(path: &std::path::Path) -> Result<Tokens, String> {
        Tokens::load_for(path, "--http-token-file")
    }

    /// Reads a token file given with `flag`, which the errors name.
    ///
    /// # Errors
    /// The file cannot be read, or a line is not `TOKEN read` / `TOKEN command`.
    pub fn load_for(path: &std::path::Path, flag: &str) -> Result<Tokens, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("{flag} {}: {e}", path.display()))
    }

    /// Parses `TOKEN read` / `TOKEN command` lines; `#` starts a comment, blank lines are skipped.
    ///
    /// # Errors
    /// A line that is not `TOKEN read` / `TOKEN command`, a short token, or no token at all.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.split_once('#').map_or(line, |(before, _)| before);
            let mut words = line.split_whitespace();
            let Some(token) = words.next() else { continue };
            let role = match (words.next(), words.next()) {
                (Some("read"), None) => Role::Read,
                (Some("command"), None) => Role::Command,
                (None, _) => {
                    return Err(format!(
                        "line {n}: a token without a role: write `TOKEN read` or `TOKEN command`"
                    ))
                }
                (Some(other), None) => {
                    return Err(format!(
                        "line {n}: unknown role {other:?}: it is `read` or `command`"
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "line {n}: more than `TOKEN ROLE` on the line (a token has no spaces)"
                    ))
                }
            };
            if !token.chars().all(token_char) {
                return Err(format!(
                    "line {n}: a token may hold only letters, digits and - . _ ~ + / ="
                ));
            }
            if !(MIN_TOKEN..=MAX_TOKEN).contains(&token.len()) {
                return Err(format!(
                    "line {n}: a token has {MIN_TOKEN} to {MAX_TOKEN} characters (this one {}); \
                     `openssl rand -hex 32` makes a good one",
                    token.len()
                ));
            }
            let d = sha256(token);
            if entries.iter().any(|(e, _)| *e == d) {
                return Err(format!("line {n}: the same token twice"));
            }
            entries.push((d, role));
        }
        if entries.is_empty() {
            return Err("no token in it: every request would be refused".into());
        }
        Ok(Tokens { entries })
    }

    /// The role of `presented`, if it is one of the tokens.
    pub fn check(&self, presented: &str) -> Option<Role> {
        let d = sha256(presented);
        let mut any = Choice::from(0);
        let mut command = Choice::from(0);
        for (e, role) in &self.entries {
            let eq = e.ct_eq(&d);
            any |= eq;
            if *role == Role::Command {
                command |= eq;
            }
        }
        match (bool::from(any), bool::from(command)) {
            (false, _) => None,
            (true, false) => Some(Role::Read),
            (true, true) => Some(Role::Command),
        }
    }
}

/// The token of a request: `Authorization: Bearer TOKEN`, else the cookie [`COOKIE`].
pub fn presented<'a>(
    authorization: Option<&'a str>,
    cookies: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    if let Some(a) = authorization {
        let (scheme, token) = a.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    cookies
        .flat_map(|header| header.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// The names a request's `Host` may carry. DNS rebinding makes a browser send requests for the
/// attacker's name to this server; refusing names it does not know defeats it.
#[derive(Debug, Clone)]
pub(super) struct Hosts {
    /// `*` was given: any name.
    any: bool,
    /// Names given (lower case, no trailing dot); `*.example.org` covers the names below it.
    names: Vec<String>,
    /// The address the server listens on: any IP literal when it is unspecified (0.0.0.0).
    listen: IpAddr,
}

impl Hosts {
    /// `localhost`, loopback and the listening addresses, plus `names` (`*` for any name).
    pub(super) fn new(listen: IpAddr, names: &[String]) -> Hosts {
        Hosts {
            any: names.iter().any(|n| n.trim() == "*"),
            names: names
                .iter()
                .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect(),
            listen,
        }
    }

    /// True when a request with this `Host` header may be answered.
    pub(super) fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let name = strip_port(host.trim())
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            // A rebound name never arrives as an address: an address is someone who typed it.
            return ip.is_loopback() || self.listen.is_unspecified() || ip == self.listen;
        }
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(parent) => name
                .strip_suffix(parent)
                .is_some_and(|below| below.ends_with('.') && below.len() > 1),
            None => *n == name,
        })
    }
}

/// `host:port`, `[v6]:port`, `host` or `[v6]` without the port.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef-read";
    const B: &str = "0123456789abcdef-command";

    #[test]
    fn token_lines_give_roles_and_comments_are_skipped() {
        let t = Tokens::parse(&format!(
            "# tokens\n\n{A} read\n  {B}   command  # the kitchen tablet\n"
        ))
        .unwrap();
        assert_eq!(t.check(A), Some(Role::Read));
        assert_eq!(t.check(B), Some(Role::Command));
        assert_eq!(t.check("0123456789abcdef-other"), None);
        assert_eq!(t.check(""), None);
        assert_eq!(t.check(&A[..A.len() - 1]), None);
    }

    #[test]
    fn bad_token_files_say_which_line_and_why() {
        for (text, says) in [
            (format!("{A}\n"), "line 1: a token without a role"),
            (format!("{A} write\n"), "unknown role \"write\""),
            (format!("{A} read x\n"), "more than"),
            ("short read\n".to_owned(), "16 to 512 characters"),
            (format!("{A};x read\n"), "only letters"),
            (
                format!("{A} read\n{A} command\n"),
                "line 2: the same token twice",
            ),
            ("# nothing\n".to_owned(), "no token in it"),
        ] {
            let e = Tokens::parse(&text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_token_comes_from_the_header_else_the_cookie() {
        let c = ["a=1; thingsbus_token=tok; b=2"];
        assert_eq!(presented(Some("Bearer abc"), c.into_iter()), Some("abc"));
        assert_eq!(presented(Some("bearer  abc "), c.into_iter()), Some("abc"));
        assert_eq!(presented(Some("Basic abc"), c.into_iter()), None);
        assert_eq!(presented(None, c.into_iter()), Some("tok"));
        assert_eq!(presented(None, ["x=thingsbus_token"].into_iter()), None);
        assert_eq!(presented(None, std::iter::empty()), None);
    }

    #[test]
    fn hosts_allowed_by_default_are_loopback_and_the_listening_address() {
        let lo = Hosts::new("127.0.0.1".parse().unwrap(), &[]);
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "app.localhost:1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(lo.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.5",
            "localhost.evil.example",
            "",
        ] {
            assert!(!lo.allows(refused), "{refused}");
        }
        let lan = Hosts::new("192.168.1.5".parse().unwrap(), &[]);
        assert!(lan.allows("192.168.1.5:8080"));
        assert!(!lan.allows("192.168.1.6"));
        // Listening everywhere: every address is one of ours; names still are not.
        let all = Hosts::new("0.0.0.0".parse().unwrap(), &[]);
        assert!(all.allows("10.1.2.3:80"));
        assert!(!all.allows("evil.example"));
    }

    #[test]
    fn hosts_given_are_allowed_with_wildcards_and_star() {
        let h = Hosts::new(
            "0.0.0.0".parse().unwrap(),
            &["Broker.Home.".into(), "*.example.org".into()],
        );
        assert!(h.allows("broker.home:8080"));
        assert!(h.allows("a.example.org"));
        assert!(h.allows("a.b.example.org:443"));
        assert!(!h.allows("example.org"));
        assert!(!h.allows("badexample.org"));
        assert!(!h.allows("broker.home.evil"));
        assert!(Hosts::new("127.0.0.1".parse().unwrap(), &["*".into()]).allows("any.thing"));
    }
}
