//! Thing names: dot-separated namespaces such as `shop.shopbot.spacemon`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest part allowed: one lower-case letter followed by up to 63 more characters.
pub const MAX_PART_LEN: usize = 64;

/// Why a string is not a valid namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    /// A part is empty (`a..b`, `.a`, `a.`).
    #[error("empty namespace part in {ns:?}: parts are separated by single dots")]
    EmptyPart {
        /// The whole namespace as given.
        ns: String,
    },
    /// A part breaks the character rules.
    #[error("invalid namespace part {part:?} in {ns:?}: must match [a-z][a-z0-9_-]{{0,63}}")]
    InvalidPart {
        /// The offending part.
        part: String,
        /// The whole namespace as given.
        ns: String,
    },
}

/// A validated namespace. The root namespace is the empty string and has no parts.
///
/// Cloning is cheap (a reference count).
///
/// ```
/// use thingsbus_protocol::Namespace;
/// let ns: Namespace = "shop.shopbot.spacemon".parse()?;
/// assert_eq!(ns.parts().collect::<Vec<_>>(), ["shop", "shopbot", "spacemon"]);
/// assert_eq!(ns.parent().unwrap().as_str(), "shop.shopbot");
/// assert!("shop.Bot".parse::<Namespace>().is_err());
/// # Ok::<(), thingsbus_protocol::NamespaceError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(Arc<str>);

pub(crate) fn part_is_valid(part: &[u8]) -> bool {
    match part.split_first() {
        Some((first, rest)) => {
            first.is_ascii_lowercase()
                && rest.len() < MAX_PART_LEN
                && rest.iter().all(|&b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                })
        }
        None => false,
    }
}

/// Checks `s` against the namespace rules without allocating.
///
/// # Errors
/// Names the offending part.
pub fn validate(s: &str) -> Result<(), NamespaceError> {
    if s.is_empty() {
        return Ok(());
    }
    for part in s.split('.') {
        if part.is_empty() {
            return Err(NamespaceError::EmptyPart { ns: s.to_owned() });
        }
        if !part_is_valid(part.as_bytes()) {
            return Err(NamespaceError::InvalidPart {
                part: part.to_owned(),
                ns: s.to_owned(),
            });
        }
    }
    Ok(())
}

impl Namespace {
    /// The root namespace `""`.
    pub fn root() -> Self {
        Namespace(Arc::from(""))
    }

    /// Validates and wraps `s`.
    ///
    /// # Errors
    /// [`NamespaceError`] naming the offending part.
    pub fn new(s: &str) -> Result<Self, NamespaceError> {
        validate(s)?;
        Ok(Namespace(Arc::from(s)))
    }

    /// Wraps a string this crate has already validated.
    pub(crate) fn from_validated(s: &str) -> Self {
        debug_assert!(validate(s).is_ok(), "{s:?} was not validated");
        Namespace(Arc::from(s))
    }

    /// The namespace as written on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the root namespace `""`.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The dot-separated parts; none for the root.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split('.').filter(|p| !p.is_empty())
    }

    /// The enclosing namespace, or `None` for the root.
    pub fn parent(&self) -> Option<Namespace> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('.') {
            Some(i) => Namespace(Arc::from(&self.0[..i])),
            None => Namespace::root(),
        })
    }

    /// `self.child` for a validated relative namespace `child` (which may have several parts).
    ///
    /// # Errors
    /// [`NamespaceError`] when `child` is not a valid namespace.
    pub fn join(&self, child: &str) -> Result<Namespace, NamespaceError> {
        validate(child)?;
        Ok(match (self.is_root(), child.is_empty()) {
            (_, true) => self.clone(),
            (true, false) => Namespace(Arc::from(child)),
            (false, false) => Namespace(Arc::from(format!("{}.{}", self.0, child))),
        })
    }

    /// True when `self` is `other` or lies below it (`a.b` is within `a`; `ab` is not).
    pub fn is_within(&self, other: &Namespace) -> bool {
        is_within_str(&self.0, &other.0)
    }
}

/// [`Namespace::is_within`] on plain strings that are already known to be valid.
pub fn is_within_str(ns: &str, subtree: &str) -> bool {
    subtree.is_empty()
        || (ns.starts_with(subtree)
            && (ns.len() == subtree.len() || ns.as_bytes()[subtree.len()] == b'.'))
}

impl FromStr for Namespace {
    type Err = NamespaceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Namespace::new(s)
    }
}

impl TryFrom<&str> for Namespace {
    type Error = NamespaceError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Namespace::new(s)
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Namespace {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({:?})", &*self.0)
    }
}

impl serde::Serialize for Namespace {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Namespace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Namespace::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_names() {
        let long_ok = format!("a{}", "b".repeat(63));
        let too_long = format!("a{}", "b".repeat(64));
        for ok in [
            "",
            "a",
            "shop.shopbot.spacemon",
            "a0.b_c.d-e",
            "x-1_2",
            long_ok.as_str(),
        ] {
            assert!(Namespace::new(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "A",
            "a.B",
            "a.",
            ".a",
            "a..b",
            ".",
            "0a",
            "_a",
            "-a",
            "a b",
            "a/b",
            "ä",
            too_long.as_str(),
        ] {
            assert!(Namespace::new(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn error_names_the_part() {
        let err = Namespace::new("shop.Foo").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid namespace part "Foo" in "shop.Foo": must match [a-z][a-z0-9_-]{0,63}"#
        );
    }

    #[test]
    fn tree_relations() {
        let ns = Namespace::new("a.b.c").unwrap();
        assert_eq!(ns.parent().unwrap().as_str(), "a.b");
        assert_eq!(ns.parent().unwrap().parent().unwrap().as_str(), "a");
        assert!(ns
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .is_root());
        assert!(Namespace::root().parent().is_none());
        assert!(ns.is_within(&Namespace::new("a").unwrap()));
        assert!(ns.is_within(&Namespace::root()));
        assert!(ns.is_within(&ns));
        assert!(!Namespace::new("ab")
            .unwrap()
            .is_within(&Namespace::new("a").unwrap()));
        assert_eq!(Namespace::root().join("x.y").unwrap().as_str(), "x.y");
        assert_eq!(ns.join("d").unwrap().as_str(), "a.b.c.d");
        assert!(ns.join("D").is_err());
    }
}
