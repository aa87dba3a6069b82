//! Who may do what: the `--auth-file`, a TOML file naming each client key and board with its
//! rights, and what peers without a key may do. Reloaded on SIGHUP; a file that does not parse
//! keeps the rights in force.
//!
//! ```toml
//! [anonymous]                 # peers without a key (and datagrams without a MAC)
//! read = true                 # may connect to the directory and snapshot ports
//! publish = []                # when the [anonymous] table is absent: no rights at all
//!
//! [keys.kitchen-pi]
//! public = "<40-character Z85 public key>"
//! read = true
//! publish = ["kitchen"]       # a namespace covers itself and everything below it; "*" = all
//! serve = ["kitchen"]
//! command = []
//!
//! [boards.garden-esp]         # a board signing its datagrams (docs/authenticated-datagrams.md)
//! secret = "<64 hex digits>"
//! publish = ["garden"]
//! ```
//!
//! Every right left out is not given.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use thingsbus_protocol::namespace::{is_within_str, Namespace};
use thingsbus_protocol::signed::BoardSecret;

use crate::error::Error;

/// Namespaces a right covers: each covers itself and everything below it; `"*"` covers all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Patterns {
    all: bool,
    prefixes: Vec<Namespace>,
}

impl Patterns {
    const NONE: Patterns = Patterns {
        all: false,
        prefixes: Vec::new(),
    };

    fn parse(list: &[String], what: &str) -> Result<Patterns, String> {
        let mut p = Patterns::default();
        for s in list {
            if s == "*" {
                p.all = true;
            } else {
                let ns = Namespace::new(s).map_err(|e| {
                    format!("{what}: {s:?} is not a namespace ({e}); write e.g. \"kitchen\", or \"*\" for all")
                })?;
                p.prefixes.push(ns);
            }
        }
        Ok(p)
    }

    /// Whether `ns` lies within one of the patterns.
    pub(crate) fn covers(&self, ns: &str) -> bool {
        self.all || self.prefixes.iter().any(|p| is_within_str(ns, p.as_str()))
    }

    /// Whether the right covers nothing at all.
    pub(crate) fn is_empty(&self) -> bool {
        !self.all && self.prefixes.is_empty()
    }
}

/// What one peer may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rights {
    /// Connect to the directory and snapshot ports.
    pub(crate) read: bool,
    /// Namespaces it may publish.
    pub(crate) publish: Patterns,
    /// Namespaces it may serve (receive commands for).
    pub(crate) serve: Patterns,
    /// Namespaces it may send commands to.
    pub(crate) command: Patterns,
}

/// A board: its secret and its rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Board {
    pub(crate) secret: BoardSecret,
    pub(crate) rights: Rights,
}

/// Who sent something, as far as the broker could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who<'a> {
    /// No key, no MAC.
    Anonymous,
    /// A CURVE client key, by its name in the file.
    Key(&'a str),
    /// A board that signed its datagram, by its name in the file.
    Board(&'a str),
}

impl Who<'_> {
    /// The name refusals are counted under.
    pub(crate) fn label(&self) -> &str {
        match self {
            Who::Anonymous => ANONYMOUS,
            Who::Key(name) | Who::Board(name) => name,
        }
    }
}

/// The label of peers without a key in counts and logs.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// The key name of the broker's own HTTP side (a key made for each run): it reads everything
/// and may command everything, because the HTTP side checks its own tokens and addresses
/// first. No name in an auth file can take it (names there cannot start with `(`).
pub(crate) const INTERNAL: &str = "(http side)";

static INTERNAL_RIGHTS: Rights = Rights {
    read: true,
    publish: Patterns::NONE,
    serve: Patterns::NONE,
    command: Patterns {
        all: true,
        prefixes: Vec::new(),
    },
};

/// An auth file, checked and ready to answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Auth {
    /// `None` when the file has no `[anonymous]` table: no rights at all.
    anonymous: Option<Rights>,
    keys: HashMap<String, Rights>,
    by_public: HashMap<[u8; 32], String>,
    boards: HashMap<String, Board>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRights {
    #[serde(default)]
    read: bool,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    serve: Vec<String>,
    #[serde(default)]
    command: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    public: String,
    #[serde(default)]
    read: bool,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    serve: Vec<String>,
    #[serde(default)]
    command: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBoard {
    secret: String,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    serve: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    anonymous: Option<FileRights>,
    #[serde(default)]
    keys: BTreeMap<String, FileKey>,
    #[serde(default)]
    boards: BTreeMap<String, FileBoard>,
}

fn rights(
    read: bool,
    publish: &[String],
    serve: &[String],
    command: &[String],
    whose: &str,
) -> Result<Rights, String> {
    Ok(Rights {
        read,
        publish: Patterns::parse(publish, &format!("{whose}.publish"))?,
        serve: Patterns::parse(serve, &format!("{whose}.serve"))?,
        command: Patterns::parse(command, &format!("{whose}.command"))?,
    })
}

/// A 40-character Z85 public key as its 32 bytes.
pub(crate) fn z85_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 40 {
        return Err(format!(
            "a key is 40 Z85 characters (as `thingsbus keygen` prints it), this one has {}",
            text.len()
        ));
    }
    let bytes = zmq::z85_decode(text).map_err(|_| "not a Z85 key".to_owned())?;
    bytes
        .try_into()
        .map_err(|_| "not a Z85 key of 32 bytes".to_owned())
}

fn hex_secret(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(
            "a board secret is 64 hex digits (32 random bytes, e.g. `openssl rand -hex 32`)"
                .to_owned(),
        );
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| "not hex digits".to_owned())?;
    }
    Ok(out)
}

impl Auth {
    /// Checks the text of an auth file. The error names the table and field at fault.
    pub(crate) fn parse(text: &str) -> Result<Auth, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let anonymous = file
            .anonymous
            .map(|r| rights(r.read, &r.publish, &r.serve, &r.command, "anonymous"))
            .transpose()?;
        let mut keys = HashMap::new();
        let mut by_public = HashMap::new();
        for (name, k) in file.keys {
            let whose = format!("keys.{name}");
            if name.starts_with('(') {
                return Err(format!(
                    "{whose}: a key's name cannot start with '(' (the broker's own names do)"
                ));
            }
            let public = z85_key(&k.public).map_err(|e| format!("{whose}.public: {e}"))?;
            keys.insert(
                name.clone(),
                rights(k.read, &k.publish, &k.serve, &k.command, &whose)?,
            );
            if let Some(other) = by_public.insert(public, name.clone()) {
                return Err(format!(
                    "{whose}.public: the same key as keys.{other}; a key has one name"
                ));
            }
        }
        let mut boards = HashMap::new();
        for (name, b) in file.boards {
            let whose = format!("boards.{name}");
            let secret = hex_secret(&b.secret).map_err(|e| format!("{whose}.secret: {e}"))?;
            let rights = rights(false, &b.publish, &b.serve, &[], &whose)?;
            boards.insert(
                name,
                Board {
                    secret: BoardSecret::from_bytes(secret),
                    rights,
                },
            );
        }
        Ok(Auth {
            anonymous,
            keys,
            by_public,
            boards,
        })
    }

    /// Reads and checks the file at `path`.
    ///
    /// # Errors
    /// [`Error::AuthFile`] naming the file and what is wrong in it.
    pub(crate) fn load(path: &Path) -> Result<Auth, Error> {
        let fail = |reason: String| Error::AuthFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        Auth::parse(&text).map_err(fail)
    }

    /// The rights of `who`; `None` when it has none at all.
    pub(crate) fn rights(&self, who: Who<'_>) -> Option<&Rights> {
        match who {
            Who::Anonymous => self.anonymous.as_ref(),
            Who::Key(INTERNAL) => Some(&INTERNAL_RIGHTS),
            Who::Key(name) => self.keys.get(name),
            Who::Board(name) => self.boards.get(name).map(|b| &b.rights),
        }
    }

    /// The name of the client key `public` (32 bytes); `None` for a key not in the file.
    pub(crate) fn key_name(&self, public: &[u8]) -> Option<&str> {
        let public: &[u8; 32] = public.try_into().ok()?;
        self.by_public.get(public).map(String::as_str)
    }

    /// A board, by name.
    pub(crate) fn board(&self, name: &str) -> Option<&Board> {
        self.boards.get(name)
    }

    /// Whether `who` may publish `ns`.
    pub(crate) fn may_publish(&self, who: Who<'_>, ns: &str) -> bool {
        self.rights(who).is_some_and(|r| r.publish.covers(ns))
    }
}

/// The auth file in force, shared by the threads that check it, and where to read it again.
#[derive(Debug)]
pub struct AuthCell {
    path: PathBuf,
    current: RwLock<Arc<Auth>>,
    generation: AtomicU64,
}

impl AuthCell {
    /// Reads `path` for the first time.
    ///
    /// # Errors
    /// [`Error::AuthFile`] when it cannot be read or does not parse.
    pub(crate) fn open(path: &Path) -> Result<AuthCell, Error> {
        let auth = Auth::load(path)?;
        Ok(AuthCell {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(auth)),
            generation: AtomicU64::new(0),
        })
    }

    /// The rights in force now.
    pub(crate) fn current(&self) -> Arc<Auth> {
        match self.current.read() {
            Ok(a) => Arc::clone(&a),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Bumped on every successful reload: a thread holding an `Arc<Auth>` compares it with the
    /// one it read to know when to read [`AuthCell::current`] again.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the file again. On error the rights in force stay.
    ///
    /// # Errors
    /// [`Error::AuthFile`] naming what is wrong; nothing changed.
    pub(crate) fn reload(&self) -> Result<(), Error> {
        let auth = Arc::new(Auth::load(&self.path)?);
        match self.current.write() {
            Ok(mut a) => *a = auth,
            Err(poisoned) => *poisoned.into_inner() = auth,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// A thread's view of the rights: reads the cell again only when it was reloaded.
pub(crate) struct AuthView {
    cell: Arc<AuthCell>,
    seen: u64,
    auth: Arc<Auth>,
}

impl AuthView {
    pub(crate) fn new(cell: Arc<AuthCell>) -> AuthView {
        let seen = cell.generation();
        let auth = cell.current();
        AuthView { cell, seen, auth }
    }

    /// The rights in force (one atomic load when nothing changed).
    pub(crate) fn get(&mut self) -> &Auth {
        let now = self.cell.generation();
        if now != self.seen {
            self.seen = now;
            self.auth = self.cell.current();
        }
        &self.auth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        zmq::z85_encode(&[byte; 32]).unwrap()
    }

    fn example() -> String {
        let (kitchen, ops) = (key(1), key(2));
        format!(
            r#"
[anonymous]
read = true
publish = []
[keys.kitchen-pi]
public = "{kitchen}"
read = true
publish = ["kitchen"]
serve = ["kitchen"]
command = []
[keys.ops]
public = "{ops}"
publish = ["*"]
command = ["kitchen.door"]
[boards.garden-esp]
secret = "{}"
publish = ["garden"]
"#,
            "ab".repeat(32)
        )
    }

    #[test]
    fn the_issue_s_example_gives_what_it_says() {
        let a = Auth::parse(&example()).unwrap();
        let anon = a.rights(Who::Anonymous).unwrap();
        assert!(anon.read && anon.publish.is_empty());
        assert!(!a.may_publish(Who::Anonymous, "kitchen"));
        let name = a.key_name(&[1; 32]).unwrap();
        assert_eq!(name, "kitchen-pi");
        assert!(a.may_publish(Who::Key(name), "kitchen"));
        assert!(a.may_publish(Who::Key(name), "kitchen.fridge.temp"));
        assert!(
            !a.may_publish(Who::Key(name), "kitchenette"),
            "a prefix is a whole part"
        );
        assert!(!a.may_publish(Who::Key(name), "garden.rain"));
        let k = a.rights(Who::Key(name)).unwrap();
        assert!(k.serve.covers("kitchen.door") && k.command.is_empty());
        assert!(
            a.may_publish(Who::Key("ops"), "anything.at.all"),
            "* covers all"
        );
        let ops = a.rights(Who::Key("ops")).unwrap();
        assert!(!ops.read, "a right left out is not given");
        assert!(ops.command.covers("kitchen.door.lock") && !ops.command.covers("kitchen"));
        assert!(a.may_publish(Who::Board("garden-esp"), "garden.rain"));
        assert!(a.board("garden-esp").unwrap().secret == BoardSecret::from_bytes([0xab; 32]));
        assert!(!a.may_publish(Who::Key("nobody"), "kitchen"));
        assert!(a.key_name(&[0u8; 32]).is_none() && a.key_name(b"short").is_none());
    }

    #[test]
    fn without_an_anonymous_table_anonymous_peers_have_no_rights() {
        let a = Auth::parse("").unwrap();
        assert!(a.rights(Who::Anonymous).is_none());
        assert!(!a.may_publish(Who::Anonymous, "x"));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("[anonymous]\nwrite = true", "unknown field `write`"),
            ("[anonymous]\npublish = [\"a..b\"]", "anonymous.publish"),
            ("[keys.a]\npublish = []", "missing field `public`"),
            (
                "[keys.a]\npublic = \"short\"",
                "keys.a.public: a key is 40 Z85",
            ),
            ("[keys.a]\npublic = \"xyz\"\nreed = true", "unknown field"),
            (
                "[boards.b]\nsecret = \"00\"",
                "boards.b.secret: a board secret is 64 hex",
            ),
            (
                "[boards.b]\nsecret = \"00\"\nread = true",
                "unknown field `read`",
            ),
            ("[nonsense]", "unknown field `nonsense`"),
        ];
        for (text, wanted) in cases {
            let e = Auth::parse(text).unwrap_err();
            assert!(e.contains(wanted), "{text:?}: {e}");
        }
        let k = key(1);
        let twice = format!("[keys.a]\npublic = \"{k}\"\n[keys.b]\npublic = \"{k}\"\n");
        let e = Auth::parse(&twice).unwrap_err();
        assert!(e.contains("the same key as keys.a"), "{e}");
    }

    #[test]
    fn a_reload_that_fails_keeps_the_rights_in_force() {
        let dir = std::env::temp_dir().join(format!("thingsbus-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.toml");
        std::fs::write(&path, "[anonymous]\npublish = [\"a\"]\n").unwrap();
        let cell = Arc::new(AuthCell::open(&path).unwrap());
        let mut view = AuthView::new(Arc::clone(&cell));
        assert!(view.get().may_publish(Who::Anonymous, "a.x"));
        std::fs::write(&path, "[anonymous]\npublish = [\"b\"]\n").unwrap();
        cell.reload().unwrap();
        assert!(view.get().may_publish(Who::Anonymous, "b.x"));
        assert!(!view.get().may_publish(Who::Anonymous, "a.x"));
        std::fs::write(&path, "[anonymous\n").unwrap();
        let e = cell.reload().unwrap_err().to_string();
        assert!(e.contains("auth.toml"), "{e}");
        assert!(
            view.get().may_publish(Who::Anonymous, "b.x"),
            "the old rights stay"
        );
        assert_eq!(cell.generation(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
