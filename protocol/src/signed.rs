//! Signed datagrams: how a board that cannot do CURVE (ESP8266, ESP32, Pico W) proves that a UDP
//! datagram is its own and new, and how the broker signs the commands it sends back to a board.
//! The bytes, the rules and a worked example are in `docs/authenticated-datagrams.md`. In short:
//!
//! ```text
//! 0xC1 | kind | n | name (n bytes) | boot (u32 BE) | counter (u32 BE) | payload | tag (32 bytes)
//! ```
//!
//! The payload is the MessagePack datagram the board sends today (the 4-list
//! `[ns, ts, data, documentation_url]`, a `thing_update` map, `serve`, `command_reply`). The tag
//! is HMAC-SHA256, keyed with the board's 32-byte secret, over every byte before it. `0xC1` is the
//! one byte MessagePack never uses, so no 0.2.x datagram starts with it and a 0.2.x broker drops a
//! signed datagram as undecodable.
//!
//! Replay protection: `boot` is a number the board keeps in flash and raises at every power-on,
//! `counter` starts again at every boot and rises with every datagram. The broker keeps, per board,
//! the newest boot and a window of the last [`WINDOW`] counters ([`ReplayTracker`]).
//!
//! Everything here is pure: no sockets, no clock, no panics on any input.
//!
//! ```
//! use thingsbus_protocol::signed::{self, BoardSecret, Direction, ReplayTracker};
//!
//! let secret = BoardSecret::from_hex(
//!     "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
//! )?;
//! let update = b"\x94\xa4shop\xc0\x80\xc0"; // ["shop", nil, {}, nil], as a board sends it
//! let datagram = signed::seal_to_vec(Direction::ToBroker, "kitchen", 7, 1, update, &secret)?;
//!
//! // The broker: find the secret by the name in the datagram, check the tag, then freshness.
//! let opened = signed::open(&datagram, Direction::ToBroker, |name| {
//!     (name == "kitchen").then(|| secret.clone())
//! })?;
//! assert_eq!(opened.payload, update);
//! let mut replays = ReplayTracker::new(ReplayTracker::DEFAULT_CAPACITY);
//! assert!(replays.check(opened.name, opened.boot, opened.counter).is_ok());
//! assert!(replays.check(opened.name, opened.boot, opened.counter).is_err()); // the same again
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use ring::hmac;

use crate::namespace::part_is_valid;

/// The first byte of every signed datagram: the one byte MessagePack never uses ("never used",
/// `0xc1` in the MessagePack spec), so a signed datagram is never taken for a 0.2.x one.
pub const MAGIC: u8 = 0xC1;
/// Bytes in a board's secret (written as 64 hex digits).
pub const SECRET_LEN: usize = 32;
/// Bytes in the tag at the end of every signed datagram (the whole HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// Longest board name, in bytes. A name follows the rule of one namespace part:
/// `[a-z][a-z0-9_-]{0,63}`.
pub const MAX_NAME_LEN: usize = 64;
/// Largest UDP payload over IPv4, and so the largest signed datagram.
pub const MAX_DATAGRAM: usize = 65_507;
/// What signing adds to a payload, besides the name: magic, kind, name length, boot, counter, tag.
pub const OVERHEAD: usize = 3 + 4 + 4 + TAG_LEN;
/// How many counters below the highest one seen are still accepted once each (datagrams that
/// overtook one another on the way).
pub const WINDOW: u32 = 64;

/// Which way a datagram goes; its byte (the second of the datagram) is covered by the tag, so a
/// datagram cannot be reflected back to where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a board to the broker (kind byte `0x01`): updates, `serve`, `command_reply`.
    ToBroker,
    /// From the broker to a board (kind byte `0x02`): commands.
    ToBoard,
}

impl Direction {
    /// The kind byte on the wire.
    pub const fn byte(self) -> u8 {
        match self {
            Direction::ToBroker => 0x01,
            Direction::ToBoard => 0x02,
        }
    }

    fn from_byte(b: u8) -> Option<Direction> {
        match b {
            0x01 => Some(Direction::ToBroker),
            0x02 => Some(Direction::ToBoard),
            _ => None,
        }
    }
}

/// A board's shared secret: 32 random bytes, written as 64 hex digits. The HMAC key is the 32
/// bytes, not the hex text. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct BoardSecret([u8; SECRET_LEN]);

impl fmt::Debug for BoardSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoardSecret(..)")
    }
}

/// Why a text is not a board secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Not 64 characters.
    #[error(
        "a board secret is 64 hex digits (32 bytes), this one has {0} characters: make one with \
         `openssl rand -hex 32`"
    )]
    Length(usize),
    /// A character that is not a hex digit.
    #[error("a board secret is 64 hex digits, {0:?} is not one")]
    NotHex(char),
    /// The system's random number generator failed.
    #[error("the system's random number generator failed")]
    Random,
}

impl BoardSecret {
    /// The secret whose bytes are `bytes`.
    pub const fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        BoardSecret(bytes)
    }

    /// Reads 64 hex digits (either case; white space around them is ignored).
    ///
    /// # Errors
    /// [`SecretError::Length`] or [`SecretError::NotHex`], naming what was wrong.
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        let chars = text.chars().count();
        if chars != 2 * SECRET_LEN {
            return Err(SecretError::Length(chars));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(SecretError::NotHex(c));
        }
        let mut bytes = [0u8; SECRET_LEN];
        let digits = text.as_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            let hi = hex_value(digits[2 * i])?;
            let lo = hex_value(digits[2 * i + 1])?;
            *b = hi << 4 | lo;
        }
        Ok(BoardSecret(bytes))
    }

    /// A new secret from the system's random number generator.
    ///
    /// # Errors
    /// [`SecretError::Random`] when the generator fails.
    pub fn generate() -> Result<Self, SecretError> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; SECRET_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Random)?;
        Ok(BoardSecret(bytes))
    }

    /// The secret as 64 lower-case hex digits, as an auth file holds it.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        let mut s = String::with_capacity(2 * SECRET_LEN);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// The raw bytes (the HMAC key).
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

impl std::str::FromStr for BoardSecret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BoardSecret::from_hex(s)
    }
}

fn hex_value(c: u8) -> Result<u8, SecretError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(SecretError::NotHex(char::from(c))),
    }
}

/// Why a datagram is not a well-formed signed datagram (checked before any secret is looked up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The first byte is not [`MAGIC`] (or the datagram is empty): not a signed datagram at all.
    #[error("not a signed datagram (the first byte is not 0xc1)")]
    NotSigned,
    /// A kind byte this version does not know.
    #[error("unknown kind byte {0:#04x} (0x01: board to broker, 0x02: broker to board)")]
    UnknownKind(u8),
    /// A known kind, but not the direction the reader expects (a reflected datagram).
    #[error("a datagram for the other direction")]
    WrongDirection,
    /// Shorter than its header and tag say.
    #[error("truncated: shorter than its header and tag")]
    Truncated,
    /// The name is empty, longer than 64 bytes, or breaks `[a-z][a-z0-9_-]{{0,63}}`.
    #[error("the board name is not [a-z][a-z0-9_-]{{0,63}}")]
    BadName,
    /// Nothing between the header and the tag.
    #[error("no payload between the header and the tag")]
    EmptyPayload,
    /// Longer than a UDP datagram can be.
    #[error("longer than 65,507 bytes")]
    Oversize,
}

/// Why a replay check refused a datagram whose tag was right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Replay {
    /// This boot and counter were accepted before.
    #[error("the same boot and counter were accepted before")]
    Repeated,
    /// The counter is more than [`WINDOW`] below the highest one of this boot.
    #[error("the counter is more than 64 below the highest one of this boot")]
    TooOld,
    /// A boot lower than the board's newest one.
    #[error("a boot number lower than the board's newest one")]
    OldBoot,
    /// (On a board) a command signed for another boot of this board.
    #[error("signed for another boot of this board")]
    WrongBoot,
}

/// Why a signed datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Not well formed.
    #[error("malformed signed datagram: {0}")]
    Malformed(Malformed),
    /// No secret for the name it carries.
    #[error("unknown board")]
    UnknownBoard,
    /// The tag is not the HMAC of the bytes with the board's secret.
    #[error("bad MAC: the tag does not match the board's secret")]
    BadMac,
    /// Right tag, not new.
    #[error("replayed: {0}")]
    Replayed(Replay),
}

impl Refusal {
    /// A short `snake_case` label for counters and logs: `malformed`, `unknown_board`,
    /// `bad_mac`, `replayed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::UnknownBoard => "unknown_board",
            Refusal::BadMac => "bad_mac",
            Refusal::Replayed(_) => "replayed",
        }
    }
}

impl From<Malformed> for Refusal {
    fn from(m: Malformed) -> Self {
        Refusal::Malformed(m)
    }
}

impl From<Replay> for Refusal {
    fn from(r: Replay) -> Self {
        Refusal::Replayed(r)
    }
}

/// Why [`seal`] cannot sign a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The name breaks the rule.
    #[error("invalid board name {0:?}: must match [a-z][a-z0-9_-]{{0,63}}")]
    BadName(String),
    /// Nothing to sign.
    #[error("nothing to sign: the payload is empty")]
    EmptyPayload,
    /// The signed datagram would not fit in UDP.
    #[error("a signed datagram of {size} bytes is larger than UDP allows (65,507)")]
    TooBig {
        /// The size it would have.
        size: usize,
    },
}

/// A signed datagram, read but not yet verified: use [`Sealed::verify`] (or [`open`]) before
/// trusting any of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// Which way it goes.
    pub direction: Direction,
    /// The board's name (valid by the name rule).
    pub name: &'a str,
    /// The board's boot number.
    pub boot: u32,
    /// The datagram's counter within the boot.
    pub counter: u32,
    /// What was signed: a MessagePack datagram as a 0.2.x board sends it.
    pub payload: &'a [u8],
    signed: &'a [u8],
    tag: &'a [u8],
}

impl Sealed<'_> {
    /// Checks the tag against `secret`, in constant time.
    ///
    /// # Errors
    /// [`Refusal::BadMac`].
    pub fn verify(&self, secret: &BoardSecret) -> Result<(), Refusal> {
        hmac::verify(&secret.key(), self.signed, self.tag).map_err(|_| Refusal::BadMac)
    }
}

/// Whether `datagram` is a signed one (its first byte is [`MAGIC`]); 0.2.x datagrams never are.
pub fn is_signed(datagram: &[u8]) -> bool {
    datagram.first() == Some(&MAGIC)
}

/// Whether `name` may name a board: `[a-z][a-z0-9_-]{0,63}`, the rule of one namespace part.
pub fn is_valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && part_is_valid(name.as_bytes())
}

/// The size of the signed datagram for a name and payload of these lengths.
pub const fn sealed_len(name_len: usize, payload_len: usize) -> usize {
    OVERHEAD + name_len + payload_len
}

/// Reads the header of a signed datagram, without checking its tag.
///
/// # Errors
/// What is malformed about it.
pub fn parse(datagram: &[u8]) -> Result<Sealed<'_>, Malformed> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(Malformed::Oversize);
    }
    let (&magic, rest) = datagram.split_first().ok_or(Malformed::NotSigned)?;
    if magic != MAGIC {
        return Err(Malformed::NotSigned);
    }
    let (&kind, rest) = rest.split_first().ok_or(Malformed::Truncated)?;
    let direction = Direction::from_byte(kind).ok_or(Malformed::UnknownKind(kind))?;
    let (&n, rest) = rest.split_first().ok_or(Malformed::Truncated)?;
    let n = usize::from(n);
    if n == 0 || n > MAX_NAME_LEN {
        return Err(Malformed::BadName);
    }
    if datagram.len() < sealed_len(n, 0) {
        return Err(Malformed::Truncated);
    }
    if datagram.len() == sealed_len(n, 0) {
        return Err(Malformed::EmptyPayload);
    }
    let (name, rest) = rest.split_at(n);
    if !part_is_valid(name) {
        return Err(Malformed::BadName);
    }
    // Valid names are ASCII.
    let name = std::str::from_utf8(name).map_err(|_| Malformed::BadName)?;
    let (boot, rest) = rest.split_at(4);
    let (counter, rest) = rest.split_at(4);
    let (payload, tag) = rest.split_at(rest.len() - TAG_LEN);
    Ok(Sealed {
        direction,
        name,
        boot: u32::from_be_bytes([boot[0], boot[1], boot[2], boot[3]]),
        counter: u32::from_be_bytes([counter[0], counter[1], counter[2], counter[3]]),
        payload,
        signed: &datagram[..datagram.len() - TAG_LEN],
        tag,
    })
}

/// Reads a signed datagram going `direction`, finds the secret of the name it carries with
/// `lookup`, and checks the tag. Freshness is the caller's next step ([`ReplayTracker::check`]
/// on the broker, [`CommandWindow::check`] on a board), after the tag, so that nobody without the
/// secret can move the replay state.
///
/// # Errors
/// [`Refusal::Malformed`], [`Refusal::UnknownBoard`] or [`Refusal::BadMac`].
pub fn open<F>(datagram: &[u8], direction: Direction, lookup: F) -> Result<Sealed<'_>, Refusal>
where
    F: FnOnce(&str) -> Option<BoardSecret>,
{
    let sealed = parse(datagram)?;
    if sealed.direction != direction {
        return Err(Malformed::WrongDirection.into());
    }
    let secret = lookup(sealed.name).ok_or(Refusal::UnknownBoard)?;
    sealed.verify(&secret)?;
    Ok(sealed)
}

/// Appends to `out` the signed datagram carrying `payload` from (or to) the board `name`.
///
/// # Errors
/// A name that breaks the rule, an empty payload, or a result larger than a UDP datagram;
/// `out` is then unchanged.
pub fn seal(
    out: &mut Vec<u8>,
    direction: Direction,
    name: &str,
    boot: u32,
    counter: u32,
    payload: &[u8],
    secret: &BoardSecret,
) -> Result<(), SealError> {
    if !is_valid_name(name) {
        return Err(SealError::BadName(name.to_owned()));
    }
    if payload.is_empty() {
        return Err(SealError::EmptyPayload);
    }
    let size = sealed_len(name.len(), payload.len());
    if size > MAX_DATAGRAM {
        return Err(SealError::TooBig { size });
    }
    let start = out.len();
    out.reserve(size);
    out.push(MAGIC);
    out.push(direction.byte());
    // At most MAX_NAME_LEN, checked above.
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&boot.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(payload);
    let tag = hmac::sign(&secret.key(), &out[start..]);
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

/// [`seal`] into a new vector.
///
/// # Errors
/// As [`seal`].
pub fn seal_to_vec(
    direction: Direction,
    name: &str,
    boot: u32,
    counter: u32,
    payload: &[u8],
    secret: &BoardSecret,
) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::new();
    seal(&mut out, direction, name, boot, counter, payload, secret)?;
    Ok(out)
}

/// How a datagram that passed [`ReplayTracker::check`] stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fresh {
    /// The first from this board since the tracker started (or forgot it): taken on trust.
    First,
    /// A counter higher than any before in this boot (a gap means datagrams were lost).
    Next,
    /// Below the highest counter but within the window and not seen: it was overtaken.
    Reordered,
    /// A higher boot number: the board restarted. Its window starts again.
    NewBoot,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    boot: u32,
    /// The highest counter accepted in `boot`.
    top: u32,
    /// Bit i set: counter `top - i` was accepted.
    seen: u64,
    /// The last counter the broker used in a command to this board.
    sent: Option<u32>,
    /// When it was last accepted, in the tracker's own ticks (for evicting the oldest).
    tick: u64,
}

impl Window {
    fn new(boot: u32, counter: u32, tick: u64) -> Window {
        Window {
            boot,
            top: counter,
            seen: 1,
            sent: None,
            tick,
        }
    }

    fn admit(&mut self, boot: u32, counter: u32) -> Result<Fresh, Replay> {
        match boot.cmp(&self.boot) {
            std::cmp::Ordering::Less => Err(Replay::OldBoot),
            std::cmp::Ordering::Greater => {
                *self = Window::new(boot, counter, self.tick);
                Ok(Fresh::NewBoot)
            }
            std::cmp::Ordering::Equal if counter > self.top => {
                let shift = counter - self.top;
                self.seen = if shift >= 64 { 0 } else { self.seen << shift };
                self.seen |= 1;
                self.top = counter;
                Ok(Fresh::Next)
            }
            std::cmp::Ordering::Equal => {
                let age = self.top - counter;
                if age >= WINDOW {
                    return Err(Replay::TooOld);
                }
                let bit = 1u64 << age;
                if self.seen & bit != 0 {
                    return Err(Replay::Repeated);
                }
                self.seen |= bit;
                Ok(Fresh::Reordered)
            }
        }
    }
}

/// The broker's replay state: per board, its newest boot, the highest counter of that boot and
/// which of the [`WINDOW`] counters below it were seen (a bitmap). At most `capacity` boards;
/// when a new one arrives at the cap, the one accepted longest ago is forgotten (its next
/// datagram is then taken as [`Fresh::First`]). About 100 bytes per board.
///
/// Check only datagrams whose tag was verified: the state must move only for the real board.
#[derive(Debug)]
pub struct ReplayTracker {
    boards: HashMap<Box<str>, Window>,
    /// Tick of the last acceptance → board: the first entry is the board to forget.
    order: BTreeMap<u64, Box<str>>,
    tick: u64,
    capacity: usize,
}

impl ReplayTracker {
    /// A cap far above any deployment's number of boards; the auth file bounds them anyway.
    pub const DEFAULT_CAPACITY: usize = 4_096;

    /// A tracker for at most `capacity` boards (at least one).
    pub fn new(capacity: usize) -> Self {
        ReplayTracker {
            boards: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    /// Accepts `(boot, counter)` from board `name` if it is new, and remembers it.
    ///
    /// The rules: a board not known yet is taken on trust; a higher boot starts a new window; a
    /// lower boot is refused; within the same boot, a counter above the highest is taken, one
    /// less than [`WINDOW`] below it is taken once, anything older is refused.
    ///
    /// # Errors
    /// [`Replay::Repeated`], [`Replay::TooOld`] or [`Replay::OldBoot`]; the state is then
    /// unchanged.
    pub fn check(&mut self, name: &str, boot: u32, counter: u32) -> Result<Fresh, Replay> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(w) = self.boards.get_mut(name) {
            let fresh = w.admit(boot, counter)?;
            let old = std::mem::replace(&mut w.tick, tick);
            if let Some(key) = self.order.remove(&old) {
                self.order.insert(tick, key);
            }
            return Ok(fresh);
        }
        if self.boards.len() >= self.capacity {
            if let Some((_, oldest)) = self.order.pop_first() {
                self.boards.remove(&oldest);
            }
        }
        let key: Box<str> = name.into();
        self.boards
            .insert(key.clone(), Window::new(boot, counter, tick));
        self.order.insert(tick, key);
        Ok(Fresh::First)
    }

    /// The newest boot number accepted from `name`, if the tracker knows the board.
    pub fn boot(&self, name: &str) -> Option<u32> {
        self.boards.get(name).map(|w| w.boot)
    }

    /// The boot and counter for the next command the broker signs to `name`: the board's newest
    /// boot (so a command recorded in an earlier boot is refused by the board) and a counter
    /// above the last one used and at least `floor` (the broker passes its clock in whole
    /// seconds, so counters keep rising across its restarts). `None` when the board is unknown
    /// (nothing accepted from it since the tracker started): its boot is not known.
    pub fn next_to_board(&mut self, name: &str, floor: u32) -> Option<(u32, u32)> {
        let w = self.boards.get_mut(name)?;
        let counter = match w.sent {
            Some(last) => last.saturating_add(1).max(floor),
            None => floor,
        };
        w.sent = Some(counter);
        Some((w.boot, counter))
    }

    /// Forgets `name` (for a board whose secret changed: its next datagram is taken on trust,
    /// whatever boot it carries). Returns whether it was known.
    pub fn forget(&mut self, name: &str) -> bool {
        match self.boards.remove(name) {
            Some(w) => {
                self.order.remove(&w.tick);
                true
            }
            None => false,
        }
    }

    /// Boards known now.
    pub fn len(&self) -> usize {
        self.boards.len()
    }

    /// True when no board is known.
    pub fn is_empty(&self) -> bool {
        self.boards.is_empty()
    }
}

/// A board's check of the commands the broker signs to it: the boot must be the board's own
/// current boot, and each counter higher than the last accepted one. Four bytes of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandWindow {
    boot: u32,
    last: Option<u32>,
}

impl CommandWindow {
    /// For a board in boot `boot`.
    pub const fn new(boot: u32) -> Self {
        CommandWindow { boot, last: None }
    }

    /// Accepts a command signed with `(boot, counter)` if it is for this boot and new.
    ///
    /// # Errors
    /// [`Replay::WrongBoot`] or [`Replay::Repeated`].
    pub fn check(&mut self, boot: u32, counter: u32) -> Result<(), Replay> {
        if boot != self.boot {
            return Err(Replay::WrongBoot);
        }
        if self.last.is_some_and(|l| counter <= l) {
            return Err(Replay::Repeated);
        }
        self.last = Some(counter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> BoardSecret {
        BoardSecret::from_bytes(std::array::from_fn(|i| i as u8))
    }

    const UPDATE: &[u8] = b"\x94\xa4shop\xc0\x80\xc0";

    fn sealed(boot: u32, counter: u32) -> Vec<u8> {
        seal_to_vec(
            Direction::ToBroker,
            "kitchen",
            boot,
            counter,
            UPDATE,
            &secret(),
        )
        .expect("valid")
    }

    fn lookup(name: &str) -> Option<BoardSecret> {
        (name == "kitchen").then(secret)
    }

    #[test]
    fn a_sealed_datagram_opens_with_its_secret() {
        let d = sealed(7, 42);
        assert_eq!(d.len(), sealed_len(7, UPDATE.len()));
        assert!(is_signed(&d));
        let s = open(&d, Direction::ToBroker, lookup).expect("opens");
        assert_eq!(
            (s.direction, s.name, s.boot, s.counter, s.payload),
            (Direction::ToBroker, "kitchen", 7, 42, UPDATE)
        );
    }

    #[test]
    fn layout_is_as_documented() {
        let d = sealed(0x0102_0304, 0x0506_0708);
        assert_eq!(&d[..3], &[0xC1, 0x01, 7]);
        assert_eq!(&d[3..10], b"kitchen");
        assert_eq!(&d[10..18], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&d[18..18 + UPDATE.len()], UPDATE);
        let tag = hmac::sign(&secret().key(), &d[..d.len() - TAG_LEN]);
        assert_eq!(&d[d.len() - TAG_LEN..], tag.as_ref());
    }

    #[test]
    fn no_msgpack_datagram_is_taken_for_a_signed_one() {
        // Every first byte but 0xc1 starts some MessagePack value; 0xc1 starts none.
        for b in 0..=255u8 {
            assert_eq!(is_signed(&[b]), b == 0xC1);
        }
        assert!(!is_signed(b""));
        let d = sealed(1, 1);
        assert_eq!(
            crate::codec::decode_msgpack_input(&d, &crate::Limits::default()).unwrap_err(),
            crate::Rejection::InvalidMsgpack
        );
        assert!(rmp_serde::from_slice::<serde_json::Value>(&d).is_err());
    }

    #[test]
    fn an_unknown_board_is_refused() {
        let d = sealed(1, 1);
        assert_eq!(
            open(&d, Direction::ToBroker, |_| None).unwrap_err(),
            Refusal::UnknownBoard
        );
    }

    #[test]
    fn a_bad_mac_is_refused() {
        let d = sealed(1, 1);
        let other = BoardSecret::from_bytes([9; 32]);
        assert_eq!(
            open(&d, Direction::ToBroker, |_| Some(other)).unwrap_err(),
            Refusal::BadMac
        );
        // Any flipped bit anywhere (header, payload, tag) breaks the tag.
        for i in 3..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x01;
            let refusal = open(&bad, Direction::ToBroker, lookup).unwrap_err();
            assert!(
                matches!(refusal, Refusal::BadMac | Refusal::UnknownBoard)
                    || refusal == Refusal::Malformed(Malformed::BadName),
                "byte {i}: {refusal:?}"
            );
        }
    }

    #[test]
    fn a_datagram_for_the_other_direction_is_refused() {
        let d = seal_to_vec(Direction::ToBoard, "kitchen", 1, 1, UPDATE, &secret()).expect("ok");
        assert_eq!(
            open(&d, Direction::ToBroker, lookup).unwrap_err(),
            Refusal::Malformed(Malformed::WrongDirection)
        );
        // And the kind byte is signed: rewriting it breaks the tag.
        let mut flipped = d.clone();
        flipped[1] = Direction::ToBroker.byte();
        assert_eq!(
            open(&flipped, Direction::ToBroker, lookup).unwrap_err(),
            Refusal::BadMac
        );
        assert!(open(&d, Direction::ToBoard, lookup).is_ok());
    }

    #[test]
    fn truncated_datagrams_are_malformed_at_every_length() {
        let d = sealed(1, 1);
        assert_eq!(parse(&d[..0]).unwrap_err(), Malformed::NotSigned);
        let bare = sealed_len(7, 0);
        for len in 1..d.len() {
            match parse(&d[..len]) {
                Err(e) if len < bare => assert_eq!(e, Malformed::Truncated, "length {len}"),
                Err(e) if len == bare => assert_eq!(e, Malformed::EmptyPayload),
                Err(e) => panic!("length {len}: {e:?}"),
                // Cut past header and tag, it reads as a shorter payload whose "tag" is payload
                // bytes: the MAC fails.
                Ok(s) => {
                    assert!(len > bare, "length {len}");
                    assert_eq!(s.verify(&secret()).unwrap_err(), Refusal::BadMac);
                }
            }
        }
    }

    #[test]
    fn malformed_headers_are_named() {
        assert_eq!(parse(&[0x94]).unwrap_err(), Malformed::NotSigned);
        assert_eq!(parse(&[0xC1]).unwrap_err(), Malformed::Truncated);
        assert_eq!(
            parse(&[0xC1, 0x03, 1]).unwrap_err(),
            Malformed::UnknownKind(3)
        );
        assert_eq!(parse(&[0xC1, 0x01]).unwrap_err(), Malformed::Truncated);
        let mut long = vec![0xC1, 0x01, 0];
        long.resize(200, b'a');
        assert_eq!(parse(&long).unwrap_err(), Malformed::BadName);
        long[2] = 65;
        assert_eq!(parse(&long).unwrap_err(), Malformed::BadName);
        for bad in ["Kitchen", "9lives", "a.b", "a b", "\u{e9}t\u{e9}"] {
            let mut d = vec![0xC1, 0x01, bad.len() as u8];
            d.extend_from_slice(bad.as_bytes());
            d.resize(d.len() + 8 + 1 + TAG_LEN, 0);
            assert_eq!(parse(&d).unwrap_err(), Malformed::BadName, "{bad}");
        }
    }

    #[test]
    fn an_oversize_datagram_is_malformed_and_cannot_be_sealed() {
        let mut d = sealed(1, 1);
        d.resize(MAX_DATAGRAM + 1, 0);
        assert_eq!(parse(&d).unwrap_err(), Malformed::Oversize);
        let payload = vec![0x90; MAX_DATAGRAM];
        assert!(matches!(
            seal_to_vec(Direction::ToBroker, "k", 1, 1, &payload, &secret()),
            Err(SealError::TooBig { .. })
        ));
        // The largest that fits does.
        let payload = vec![0x90; MAX_DATAGRAM - sealed_len(1, 0)];
        let d = seal_to_vec(Direction::ToBroker, "k", 1, 1, &payload, &secret()).expect("fits");
        assert_eq!(d.len(), MAX_DATAGRAM);
        assert!(open(&d, Direction::ToBroker, |_| Some(secret())).is_ok());
    }

    #[test]
    fn sealing_checks_name_and_payload() {
        let s = secret();
        assert_eq!(
            seal_to_vec(Direction::ToBroker, "Kitchen", 1, 1, UPDATE, &s).unwrap_err(),
            SealError::BadName("Kitchen".into())
        );
        assert!(seal_to_vec(Direction::ToBroker, &"a".repeat(65), 1, 1, UPDATE, &s).is_err());
        assert!(seal_to_vec(Direction::ToBroker, &"a".repeat(64), 1, 1, UPDATE, &s).is_ok());
        assert_eq!(
            seal_to_vec(Direction::ToBroker, "k", 1, 1, b"", &s).unwrap_err(),
            SealError::EmptyPayload
        );
        let mut out = vec![1, 2, 3];
        assert!(seal(&mut out, Direction::ToBroker, "", 1, 1, UPDATE, &s).is_err());
        assert_eq!(out, [1, 2, 3], "unchanged on error");
        seal(&mut out, Direction::ToBroker, "k", 1, 1, UPDATE, &s).expect("ok");
        assert!(open(&out[3..], Direction::ToBroker, |_| Some(s.clone())).is_ok());
    }

    #[test]
    fn secrets_read_hex_and_hide_in_debug() {
        let hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        assert_eq!(BoardSecret::from_hex(hex), Ok(secret()));
        assert_eq!(
            BoardSecret::from_hex(&format!("  {}\n", hex.to_uppercase())),
            Ok(secret())
        );
        assert_eq!(secret().to_hex(), hex);
        assert_eq!(BoardSecret::from_hex("abc"), Err(SecretError::Length(3)));
        let bad = format!("{}g", &hex[..63]);
        assert_eq!(BoardSecret::from_hex(&bad), Err(SecretError::NotHex('g')));
        // Multi-byte characters are counted as characters, and never split.
        let odd = format!("{}\u{e9}", &hex[..62]);
        assert!(BoardSecret::from_hex(&odd).is_err());
        assert_eq!(format!("{:?}", secret()), "BoardSecret(..)");
        let a = BoardSecret::generate().expect("random");
        let b = BoardSecret::generate().expect("random");
        assert_ne!(a, b);
        assert_eq!(BoardSecret::from_hex(&a.to_hex()), Ok(a));
    }

    #[test]
    fn the_first_datagram_of_a_board_is_taken_then_not_again() {
        let mut t = ReplayTracker::new(8);
        assert_eq!(t.check("a", 3, 10), Ok(Fresh::First));
        assert_eq!(t.check("a", 3, 10), Err(Replay::Repeated));
        assert_eq!(t.check("a", 3, 11), Ok(Fresh::Next));
        assert_eq!(t.check("a", 3, 11), Err(Replay::Repeated));
    }

    #[test]
    fn a_gap_is_taken_and_the_overtaken_are_taken_once() {
        let mut t = ReplayTracker::new(8);
        assert_eq!(t.check("a", 1, 0), Ok(Fresh::First));
        assert_eq!(t.check("a", 1, 5), Ok(Fresh::Next));
        assert_eq!(t.check("a", 1, 3), Ok(Fresh::Reordered));
        assert_eq!(t.check("a", 1, 3), Err(Replay::Repeated));
        assert_eq!(t.check("a", 1, 4), Ok(Fresh::Reordered));
        assert_eq!(t.check("a", 1, 0), Err(Replay::Repeated));
        assert_eq!(t.check("a", 1, 6), Ok(Fresh::Next));
        assert_eq!(t.check("a", 1, 5), Err(Replay::Repeated));
    }

    #[test]
    fn counters_older_than_the_window_are_too_old() {
        let mut t = ReplayTracker::new(8);
        assert_eq!(t.check("a", 1, 100), Ok(Fresh::First));
        assert_eq!(t.check("a", 1, 100 - WINDOW), Err(Replay::TooOld));
        assert_eq!(t.check("a", 1, 100 - WINDOW + 1), Ok(Fresh::Reordered));
        // A jump beyond the window clears it: everything below is too old or unseen.
        assert_eq!(t.check("a", 1, 1_000), Ok(Fresh::Next));
        assert_eq!(t.check("a", 1, 999), Ok(Fresh::Reordered));
        assert_eq!(t.check("a", 1, 100), Err(Replay::TooOld));
        assert_eq!(t.check("a", 1, u32::MAX), Ok(Fresh::Next));
        assert_eq!(t.check("a", 1, u32::MAX), Err(Replay::Repeated));
        assert_eq!(t.check("a", 1, 0), Err(Replay::TooOld));
    }

    #[test]
    fn a_new_boot_starts_again_and_an_old_boot_is_refused() {
        let mut t = ReplayTracker::new(8);
        assert_eq!(t.check("a", 4, 500), Ok(Fresh::First));
        assert_eq!(t.check("a", 5, 0), Ok(Fresh::NewBoot));
        assert_eq!(t.check("a", 5, 1), Ok(Fresh::Next));
        assert_eq!(t.check("a", 5, 0), Err(Replay::Repeated));
        // Everything recorded in boot 4 is refused now, however high its counter.
        assert_eq!(t.check("a", 4, 501), Err(Replay::OldBoot));
        assert_eq!(t.check("a", 4, u32::MAX), Err(Replay::OldBoot));
        assert_eq!(t.boot("a"), Some(5));
    }

    #[test]
    fn boards_are_tracked_apart() {
        let mut t = ReplayTracker::new(8);
        assert_eq!(t.check("a", 1, 1), Ok(Fresh::First));
        assert_eq!(t.check("b", 1, 1), Ok(Fresh::First));
        assert_eq!(t.check("a", 1, 1), Err(Replay::Repeated));
        assert_eq!(t.check("b", 2, 0), Ok(Fresh::NewBoot));
        assert_eq!(t.check("a", 1, 2), Ok(Fresh::Next));
    }

    #[test]
    fn at_the_cap_the_board_accepted_longest_ago_is_forgotten() {
        let mut t = ReplayTracker::new(3);
        assert_eq!(t.check("a", 1, 1), Ok(Fresh::First));
        assert_eq!(t.check("b", 1, 1), Ok(Fresh::First));
        assert_eq!(t.check("c", 1, 1), Ok(Fresh::First));
        // a is the most recent now; b the oldest.
        assert_eq!(t.check("a", 1, 2), Ok(Fresh::Next));
        // A refused datagram does not count as activity.
        assert_eq!(t.check("b", 1, 1), Err(Replay::Repeated));
        assert_eq!(t.check("d", 1, 1), Ok(Fresh::First));
        assert_eq!(t.len(), 3);
        assert_eq!(t.boot("b"), None, "b was forgotten");
        assert_eq!(t.check("a", 1, 2), Err(Replay::Repeated), "a kept");
        assert_eq!(t.check("c", 1, 1), Err(Replay::Repeated), "c kept");
        // The forgotten board is taken on trust again.
        assert_eq!(t.check("b", 1, 1), Ok(Fresh::First));
        assert_eq!(t.len(), 3);
        assert_eq!(t.boot("c"), None, "c was the oldest then");
        assert_eq!(t.order.len(), t.boards.len());
    }

    #[test]
    fn a_forgotten_board_is_taken_on_trust_again() {
        let mut t = ReplayTracker::new(8);
        assert_eq!(t.check("a", 9, 1), Ok(Fresh::First));
        assert_eq!(t.check("b", 1, 1), Ok(Fresh::First));
        assert!(t.forget("a"));
        assert!(!t.forget("a"));
        assert_eq!((t.len(), t.order.len()), (1, 1));
        // An erased board, back at boot 1.
        assert_eq!(t.check("a", 1, 0), Ok(Fresh::First));
        assert_eq!(t.check("a", 9, 2), Ok(Fresh::NewBoot));
    }

    #[test]
    fn commands_to_a_board_carry_its_boot_and_rising_counters() {
        let mut t = ReplayTracker::new(8);
        assert_eq!(t.next_to_board("a", 100), None, "unknown board");
        assert_eq!(t.check("a", 9, 1), Ok(Fresh::First));
        assert_eq!(t.next_to_board("a", 100), Some((9, 100)));
        assert_eq!(t.next_to_board("a", 100), Some((9, 101)));
        assert_eq!(t.next_to_board("a", 50), Some((9, 102)), "never lower");
        assert_eq!(
            t.next_to_board("a", 200),
            Some((9, 200)),
            "follows the clock"
        );
        assert_eq!(t.check("a", 10, 0), Ok(Fresh::NewBoot));
        assert_eq!(t.next_to_board("a", 200), Some((10, 200)), "the new boot");
    }

    #[test]
    fn a_board_takes_commands_of_its_own_boot_once() {
        let mut w = CommandWindow::new(9);
        assert_eq!(w.check(8, 100), Err(Replay::WrongBoot));
        assert_eq!(w.check(9, 100), Ok(()));
        assert_eq!(w.check(9, 100), Err(Replay::Repeated));
        assert_eq!(w.check(9, 99), Err(Replay::Repeated));
        assert_eq!(w.check(9, 105), Ok(()));
        assert_eq!(w.check(10, 106), Err(Replay::WrongBoot));
    }

    #[test]
    fn refusals_have_counter_labels() {
        assert_eq!(Refusal::UnknownBoard.as_str(), "unknown_board");
        assert_eq!(Refusal::BadMac.as_str(), "bad_mac");
        assert_eq!(Refusal::Replayed(Replay::TooOld).as_str(), "replayed");
        assert_eq!(
            Refusal::Malformed(Malformed::Truncated).as_str(),
            "malformed"
        );
    }
}
