//! CURVE keys (with the `zmq` feature): [`PublicKey`], [`SecretKey`] and [`KeyPair`] in their
//! usual written form, Z85 (40 characters for 32 bytes, as `zmq_curve_keypair`, pyzmq and
//! `curve_keygen` write them), and the secret-key file a broker or a client reads.
//!
//! ```
//! use thingsbus_protocol::keys::{KeyPair, PublicKey};
//! let pair = KeyPair::generate()?;
//! let written = pair.public.to_string();
//! assert_eq!(written.len(), 40);
//! assert_eq!(written.parse::<PublicKey>()?, pair.public);
//! # Ok::<(), thingsbus_protocol::keys::KeyError>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Z85's alphabet (ZeroMQ RFC 32): the digit of value `i` is `ALPHABET[i]`.
const ALPHABET: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Length of a key written in Z85.
pub const Z85_LEN: usize = 40;

/// What was wrong with a key or a key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 40 characters.
    #[error("a CURVE key in Z85 is 40 characters, this one has {0}")]
    Length(usize),
    /// A character outside Z85's alphabet.
    #[error(
        "{ch:?} at position {pos} is not a Z85 character (0-9 a-z A-Z .-:+=^!/*?&<>()[]{{}}@%$#)"
    )]
    Character {
        /// The character.
        ch: char,
        /// Its position, from 1.
        pos: usize,
    },
    /// Five characters whose value does not fit 32 bits.
    #[error("characters {pos} to {} are not a valid Z85 group (their value exceeds 32 bits)", pos + 4)]
    Overflow {
        /// Position of the group's first character, from 1.
        pos: usize,
    },
    /// A key file that could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// "reading the key file", ...
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A key file without exactly one key in it.
    #[error("the key file {} must hold one 40-character Z85 secret key (lines starting with # are comments); {problem}", path.display())]
    FileContent {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        problem: String,
    },
    /// libzmq refused (a build without CURVE, see [`crate::transport::require_curve`]).
    #[error("{what}: {source}")]
    Zmq {
        /// What was being done.
        what: &'static str,
        /// What libzmq said.
        #[source]
        source: zmq::Error,
    },
}

fn decode(text: &str) -> Result<[u8; 32], KeyError> {
    let chars = text.chars().count();
    if chars != Z85_LEN || text.len() != Z85_LEN {
        return Err(KeyError::Length(chars));
    }
    let mut out = [0u8; 32];
    for (group, (chunk, bytes)) in text.as_bytes().chunks(5).zip(out.chunks_mut(4)).enumerate() {
        let mut value: u64 = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let digit = ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or(KeyError::Character {
                    ch: char::from(c),
                    pos: group * 5 + i + 1,
                })?;
            value = value * 85 + digit as u64;
        }
        let value = u32::try_from(value).map_err(|_| KeyError::Overflow { pos: group * 5 + 1 })?;
        bytes.copy_from_slice(&value.to_be_bytes());
    }
    Ok(out)
}

fn encode(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(Z85_LEN);
    for chunk in bytes.chunks(4) {
        let mut value = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let mut digits = [0u8; 5];
        for d in digits.iter_mut().rev() {
            *d = ALPHABET[(value % 85) as usize];
            value /= 85;
        }
        out.extend(digits.iter().map(|&d| char::from(d)));
    }
    out
}

/// A CURVE public key: shown and parsed in Z85.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key of these 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the 40-character Z85 form.
    ///
    /// # Errors
    /// [`KeyError::Length`], [`KeyError::Character`] or [`KeyError::Overflow`].
    pub fn from_z85(text: &str) -> Result<Self, KeyError> {
        decode(text).map(PublicKey)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        PublicKey::from_z85(s)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A CURVE secret key. Its `Debug` does not show it; [`SecretKey::to_z85`] does, on purpose.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// The key of these 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(bytes)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the 40-character Z85 form.
    ///
    /// # Errors
    /// [`KeyError::Length`], [`KeyError::Character`] or [`KeyError::Overflow`].
    pub fn from_z85(text: &str) -> Result<Self, KeyError> {
        decode(text).map(SecretKey)
    }

    /// The 40-character Z85 form, as a key file holds it.
    pub fn to_z85(&self) -> String {
        encode(&self.0)
    }

    /// The secret key in the text of a key file: one 40-character Z85 key on a line of its own;
    /// blank lines, lines starting with `#` and spaces around the key are ignored.
    ///
    /// # Errors
    /// [`KeyError::FileContent`] naming `path` (used only in the message).
    pub fn parse_file(text: &str, path: &Path) -> Result<Self, KeyError> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let problem = |problem: String| KeyError::FileContent {
            path: path.to_owned(),
            problem,
        };
        let line = lines
            .next()
            .ok_or_else(|| problem("it holds none".into()))?;
        if lines.next().is_some() {
            return Err(problem(
                "it holds more than one line besides comments".into(),
            ));
        }
        SecretKey::from_z85(line).map_err(|e| problem(e.to_string()))
    }

    /// Reads a key file (see [`SecretKey::parse_file`]); logs a warning when others than its
    /// owner may read it.
    ///
    /// # Errors
    /// [`KeyError::File`] when it cannot be read, [`KeyError::FileContent`] when it holds no key.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::File {
            what: "reading the key file",
            path: path.to_owned(),
            source,
        })?;
        if let Some(mode) = loose_mode(path) {
            tracing::warn!(
                "the key file {} can be read by others than its owner (mode {mode:o}): chmod 600 it",
                path.display()
            );
        }
        SecretKey::parse_file(&text, path)
    }

    /// Writes the key to a new file `path` that only its owner may read (mode 0600), as
    /// [`SecretKey::read_file`] reads it. An existing file is replaced only with `force`.
    ///
    /// # Errors
    /// [`KeyError::File`]: for example the file exists and `force` is false.
    pub fn write_file(&self, path: &Path, force: bool) -> Result<(), KeyError> {
        use std::io::Write;
        let err = |what| {
            move |source| KeyError::File {
                what,
                path: path.to_owned(),
                source,
            }
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .map_err(err("creating the key file (use --force to replace it)"))?;
        #[cfg(unix)]
        {
            // An existing file keeps its mode when opened: make it the owner's only.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(err("setting the mode of the key file"))?;
        }
        writeln!(file, "{}", self.to_z85()).map_err(err("writing the key file"))?;
        file.sync_all().map_err(err("writing the key file"))
    }
}

/// The file's mode when group or others have any right to it.
#[cfg(unix)]
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_: &Path) -> Option<u32> {
    None
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A CURVE key pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPair {
    /// The public half, given to peers.
    pub public: PublicKey,
    /// The secret half.
    pub secret: SecretKey,
}

impl KeyPair {
    /// A new random key pair (libzmq's `zmq_curve_keypair`, from libsodium).
    ///
    /// # Errors
    /// [`KeyError::Zmq`] from a libzmq without CURVE.
    pub fn generate() -> Result<Self, KeyError> {
        let pair = zmq::CurveKeyPair::new().map_err(|source| KeyError::Zmq {
            what: "generating a CURVE key pair",
            source,
        })?;
        Ok(KeyPair {
            public: PublicKey(pair.public_key),
            secret: SecretKey(pair.secret_key),
        })
    }

    /// The pair of `secret`: its public key derived (`zmq_curve_public`).
    ///
    /// # Errors
    /// [`KeyError::Zmq`] from a libzmq without CURVE.
    pub fn from_secret(secret: SecretKey) -> Result<Self, KeyError> {
        let public =
            thingsbus_zmq_extra::curve_public(&secret.0).map_err(|source| KeyError::Zmq {
                what: "deriving the CURVE public key",
                source,
            })?;
        Ok(KeyPair {
            public: PublicKey(public),
            secret,
        })
    }

    /// The pair whose secret key is in the key file `path` ([`SecretKey::read_file`]).
    ///
    /// # Errors
    /// As [`SecretKey::read_file`] and [`KeyPair::from_secret`].
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        KeyPair::from_secret(SecretKey::read_file(path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ZeroMQ RFC 32's example: these 8 bytes are "HelloWorld".
    #[test]
    fn z85_agrees_with_the_rfc_example() {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&[0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]);
        let text = encode(&bytes);
        assert!(text.starts_with("HelloWorld"), "{text}");
        assert_eq!(decode(&text).expect("decodes"), bytes);
    }

    #[test]
    fn z85_agrees_with_libzmq_both_ways() {
        for _ in 0..50 {
            let pair = zmq::CurveKeyPair::new().expect("keypair");
            let ours = encode(&pair.public_key);
            assert_eq!(ours, zmq::z85_encode(&pair.public_key).expect("encodes"));
            assert_eq!(
                zmq::z85_decode(&ours).expect("decodes"),
                decode(&ours).expect("decodes")
            );
        }
        assert_eq!(encode(&[0xff; 32]), "%nSc0".repeat(8));
        assert_eq!(decode(&"%nSc0".repeat(8)).expect("decodes"), [0xff; 32]);
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        let good = encode(&[7; 32]);
        assert!(matches!(
            PublicKey::from_z85(&good[1..]),
            Err(KeyError::Length(39))
        ));
        assert!(matches!(
            PublicKey::from_z85(&format!("{good}x")),
            Err(KeyError::Length(41))
        ));
        assert!(matches!(PublicKey::from_z85(""), Err(KeyError::Length(0))));
        let quote = format!("{}\"{}", &good[..9], &good[10..]);
        let e = PublicKey::from_z85(&quote).expect_err("refused");
        assert!(
            matches!(e, KeyError::Character { ch: '"', pos: 10 }),
            "{e:?}"
        );
        assert!(e.to_string().contains("position 10"), "{e}");
        // 40 bytes but 39 characters.
        let wide = format!("{}é", &good[..38]);
        assert!(matches!(
            PublicKey::from_z85(&wide),
            Err(KeyError::Length(39))
        ));
        // "#####" is 85^5 - 1, beyond 32 bits.
        let big = format!("{}#####", &good[..35]);
        assert!(matches!(
            PublicKey::from_z85(&big),
            Err(KeyError::Overflow { pos: 36 })
        ));
    }

    #[test]
    fn keys_show_and_parse_in_z85_and_secrets_hide_in_debug() {
        let pair = KeyPair::generate().expect("keypair");
        assert_eq!(
            pair.public
                .to_string()
                .parse::<PublicKey>()
                .expect("parses"),
            pair.public
        );
        assert_eq!(
            SecretKey::from_z85(&pair.secret.to_z85()).expect("parses"),
            pair.secret
        );
        assert!(!format!("{pair:?}").contains(&pair.secret.to_z85()));
        assert!(format!("{pair:?}").contains(&pair.public.to_string()));
    }

    #[test]
    fn the_public_key_is_derived_from_the_secret() {
        let pair = KeyPair::generate().expect("keypair");
        assert_eq!(
            KeyPair::from_secret(pair.secret.clone()).expect("derives"),
            pair
        );
    }

    #[test]
    fn key_files_hold_one_key_with_comments_allowed() {
        let p = Path::new("k");
        let key = SecretKey::from_bytes([9; 32]);
        let z = key.to_z85();
        for text in [
            z.clone(),
            format!("{z}\n"),
            format!("# broker key\n\n  {z}  \r\n# end\n"),
        ] {
            assert_eq!(SecretKey::parse_file(&text, p).expect("parses"), key);
        }
        for (text, says) in [
            ("", "it holds none"),
            ("# only a comment\n", "it holds none"),
            (&*format!("{z}\n{z}\n"), "more than one line"),
            (
                &*format!("{}\n", &z[..20]),
                "40 characters, this one has 20",
            ),
        ] {
            let e = SecretKey::parse_file(text, p).expect_err("refused");
            assert!(e.to_string().contains(says), "{e}");
            assert!(e.to_string().contains("the key file k"), "{e}");
        }
    }

    #[test]
    fn key_files_are_written_for_the_owner_only_and_not_replaced_without_force() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("thingsbus-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("secret");
        let _ = std::fs::remove_file(&path);
        let pair = KeyPair::generate().expect("keypair");
        pair.secret.write_file(&path, false).expect("writes");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(loose_mode(&path), None);
        assert_eq!(KeyPair::read_file(&path).expect("reads"), pair);
        let other = KeyPair::generate().expect("keypair");
        let e = other.secret.write_file(&path, false).expect_err("exists");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(KeyPair::read_file(&path).expect("reads"), pair);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(loose_mode(&path), Some(0o644));
        other.secret.write_file(&path, true).expect("forced");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(KeyPair::read_file(&path).expect("reads"), other);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
