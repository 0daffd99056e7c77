//! Bearer tokens for the HTTP API: `--token-file`, one token per line, each optionally scoped
//! to stores (`TOKEN orders*` allows the stores whose names start with `orders`).
//!
//! Tokens are secrets: no message, log line or `Debug` output of this module shows one; a bad
//! line of the file is named by its number.

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};

/// The tokens of a token file and the stores each may push to and read.
pub(crate) struct Tokens {
    entries: Vec<TokenEntry>,
}

/// One line of the token file.
struct TokenEntry {
    token: String,
    /// Which stores it reaches; empty means every store.
    scopes: Vec<Scope>,
}

/// One scope of a token: a store name, or a prefix of names (written `prefix*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Exactly this store.
    Store(String),
    /// Every store whose name starts with this.
    Prefix(String),
}

impl Scope {
    fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Store(text.to_owned()),
        }
    }

    fn allows(&self, store: &str) -> bool {
        match self {
            Self::Store(name) => name == store,
            Self::Prefix(prefix) => store.starts_with(prefix.as_str()),
        }
    }
}

/// What a request's `Authorization` header was found to be.
#[derive(Debug)]
pub(crate) enum Caller<'a> {
    /// No token file: every request is let in.
    Anyone,
    /// A known token, with its scopes (empty: every store).
    Token(&'a [Scope]),
}

impl Caller<'_> {
    /// Whether this caller may push to and read `store`.
    pub(crate) fn allows(&self, store: &str) -> bool {
        match self {
            Self::Anyone => true,
            Self::Token(scopes) => scopes.is_empty() || scopes.iter().any(|s| s.allows(store)),
        }
    }
}

/// Why a request was not authenticated (a 401).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unauthenticated {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`.
    NotBearer,
    /// A bearer token that is not in the file.
    Unknown,
}

impl fmt::Display for Unauthenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "no Authorization header: send Authorization: Bearer <token>",
            Self::NotBearer => "the Authorization header is not of the form Bearer <token>",
            Self::Unknown => "the bearer token is not one of the server's tokens",
        })
    }
}

impl Tokens {
    /// Reads a token file.
    ///
    /// # Errors
    /// When the file cannot be read, holds no token, or a line has a token that is not
    /// visible ASCII or an empty scope (named by line number, never by its token).
    pub(crate) fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("--token-file {}", path.display()))
    }

    /// Parses a token file's text: `TOKEN [SCOPE ...]` per line, `#` comments and blank
    /// lines ignored.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let Some(token) = words.next() else { continue };
            let number = index + 1;
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("line {number}: a token is visible ASCII characters only");
            }
            let scopes: Vec<Scope> = words.map(Scope::parse).collect();
            if scopes.iter().any(|s| *s == Scope::Store(String::new())) {
                bail!("line {number}: an empty scope");
            }
            if entries.iter().any(|e: &TokenEntry| e.token == token) {
                bail!("line {number}: this token is already on an earlier line");
            }
            entries.push(TokenEntry {
                token: token.to_owned(),
                scopes,
            });
        }
        if entries.is_empty() {
            bail!("no token in the file (one per line: TOKEN [store-prefix*])");
        }
        Ok(Self { entries })
    }

    /// Who sent a request with this `Authorization` header value.
    pub(crate) fn caller(&self, header: Option<&[u8]>) -> Result<Caller<'_>, Unauthenticated> {
        let header = header.ok_or(Unauthenticated::Missing)?;
        let given = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or(Unauthenticated::NotBearer)?;
        let given = given.trim_ascii();
        // Every entry is compared, each in time independent of where they differ, so the time
        // of a refusal does not tell how much of a token was right.
        let mut found = None;
        for entry in &self.entries {
            if constant_time_eq(entry.token.as_bytes(), given) {
                found = Some(entry.scopes.as_slice());
            }
        }
        found.map(Caller::Token).ok_or(Unauthenticated::Unknown)
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} tokens, values hidden)", self.entries.len())
    }
}

/// Equality of two byte strings in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_scoped_by_store_or_prefix() {
        let tokens = Tokens::parse("# ops\nall-stores\nscoped orders* audit\n\n").unwrap();
        let all = tokens.caller(Some(b"Bearer all-stores")).unwrap();
        assert!(all.allows("anything"));
        let scoped = tokens.caller(Some(b"Bearer scoped")).unwrap();
        assert!(scoped.allows("orders"));
        assert!(scoped.allows("orders/eu"));
        assert!(scoped.allows("audit"));
        assert!(!scoped.allows("audit2"));
        assert!(!scoped.allows("order"));
        assert_eq!(tokens.caller(None).unwrap_err(), Unauthenticated::Missing);
        assert_eq!(
            tokens.caller(Some(b"Basic abc")).unwrap_err(),
            Unauthenticated::NotBearer
        );
        assert_eq!(
            tokens.caller(Some(b"Bearer scope")).unwrap_err(),
            Unauthenticated::Unknown
        );
    }

    #[test]
    fn a_bad_token_file_is_named_by_line_never_by_token() {
        let err = Tokens::parse("secret-one\nsecret-one\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(Tokens::parse("# nothing\n").is_err());
        let debug = format!("{:?}", Tokens::parse("secret-two").unwrap());
        assert!(!debug.contains("secret"), "{debug}");
    }
}
