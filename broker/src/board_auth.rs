//! Signed datagrams from boards (issue #22, `docs/authenticated-datagrams.md`): the broker's side,
//! as a pure verifier. It takes a datagram, where it came from and the auth file's board secrets
//! (a lookup by name), and returns the inner datagram with the board's name, or why it was
//! refused; it also signs the commands the broker sends back to a board. No sockets, no clock:
//! the ingest loop passes `now`.
//!
//! Ingest puts every UDP datagram for which [`BoardAuth::is_signed`] holds through
//! [`BoardAuth::verify`] before `decode_msgpack_input`; the payload is then decoded exactly as an
//! unsigned datagram, and the board name is the identity the auth file's rights are checked
//! against (a signed `serve` or `command_reply` goes to the command thread with it). The command
//! thread signs what it sends a board with [`BoardAuth::seal_command`]; the two threads share one
//! `BoardAuth`. A refusal is counted under its [`Refusal::as_str`] label (`unknown_board`,
//! `bad_mac`, `replayed`, `malformed`).

use std::net::SocketAddr;

use thingsbus_protocol::signed::{self, BoardSecret, Direction, Fresh, Refusal, ReplayTracker};
use thingsbus_protocol::Timestamp;

/// A datagram that a board signed, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FromBoard<'a> {
    /// The board's name, as in the auth file's `[boards.NAME]`.
    pub(crate) board: &'a str,
    /// The datagram the board signed: MessagePack as an unsigned board sends it.
    pub(crate) payload: &'a [u8],
    /// Where it came from (a serving board's commands go back there).
    pub(crate) from: SocketAddr,
    /// How it stood in the board's replay window (for logs).
    pub(crate) fresh: Fresh,
}

/// Why the broker cannot sign a command to a board.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommandSealError {
    /// The auth file has no secret for it.
    #[error("no secret for board {0:?}")]
    UnknownBoard(String),
    /// Nothing signed was accepted from it since the broker started: its boot is not known.
    #[error("board {0:?} has sent nothing signed since the broker started")]
    NotHeard(String),
    /// The payload does not fit.
    #[error(transparent)]
    Seal(#[from] signed::SealError),
}

/// The broker's replay state for every board, and the checks around it.
#[derive(Debug)]
pub(crate) struct BoardAuth {
    replays: ReplayTracker,
}

impl BoardAuth {
    /// For at most `capacity` boards at once (see [`ReplayTracker`]).
    pub(crate) fn new(capacity: usize) -> Self {
        BoardAuth {
            replays: ReplayTracker::new(capacity),
        }
    }

    /// Whether a UDP datagram is a signed one (never true for a 0.2.x datagram).
    pub(crate) fn is_signed(datagram: &[u8]) -> bool {
        signed::is_signed(datagram)
    }

    /// Checks a signed datagram from a board: well formed, going to the broker, a board the
    /// auth file knows, the right tag, and new. Only a datagram with the right tag moves the
    /// board's replay state.
    ///
    /// # Errors
    /// The [`Refusal`]: `malformed`, `unknown_board`, `bad_mac` or `replayed`.
    pub(crate) fn verify<'a, F>(
        &mut self,
        datagram: &'a [u8],
        from: SocketAddr,
        lookup: F,
    ) -> Result<FromBoard<'a>, Refusal>
    where
        F: Fn(&str) -> Option<BoardSecret>,
    {
        let sealed = signed::open(datagram, Direction::ToBroker, lookup)?;
        let fresh = self
            .replays
            .check(sealed.name, sealed.boot, sealed.counter)?;
        Ok(FromBoard {
            board: sealed.name,
            payload: sealed.payload,
            from,
            fresh,
        })
    }

    /// Signs `payload` (a MessagePack command) for `board`: with the board's current boot, so
    /// that a command recorded in an earlier boot is refused by the board, and a counter that
    /// rises with every command and never falls below the clock in seconds (so it keeps rising
    /// across broker restarts).
    ///
    /// # Errors
    /// An unknown board, a board not heard from since the start, or a payload that cannot be
    /// signed.
    pub(crate) fn seal_command<F>(
        &mut self,
        board: &str,
        payload: &[u8],
        now: Timestamp,
        lookup: F,
    ) -> Result<Vec<u8>, CommandSealError>
    where
        F: Fn(&str) -> Option<BoardSecret>,
    {
        let secret = lookup(board).ok_or_else(|| CommandSealError::UnknownBoard(board.into()))?;
        // Whole seconds since 1970 fit in u32 until 2106; the cast saturates.
        let floor = now.as_secs().max(0.0) as u32;
        let (boot, counter) = self
            .replays
            .next_to_board(board, floor)
            .ok_or_else(|| CommandSealError::NotHeard(board.into()))?;
        Ok(signed::seal_to_vec(
            Direction::ToBoard,
            board,
            boot,
            counter,
            payload,
            &secret,
        )?)
    }

    /// Forgets a board's replay state: for a board whose secret changed when the auth file is
    /// reloaded (a re-flashed board starts again at a low boot), or that left the file.
    pub(crate) fn forget(&mut self, board: &str) -> bool {
        self.replays.forget(board)
    }

    /// Boards whose replay state is kept now.
    pub(crate) fn boards(&self) -> usize {
        self.replays.len()
    }
}

#[cfg(test)]
mod tests {
    use thingsbus_protocol::signed::{CommandWindow, Malformed, Replay};

    use super::*;

    fn secret() -> BoardSecret {
        BoardSecret::from_bytes([7; 32])
    }

    fn boards(name: &str) -> Option<BoardSecret> {
        (name == "porch").then(secret)
    }

    fn from() -> SocketAddr {
        ([192, 0, 2, 10], 4210).into()
    }

    const UPDATE: &[u8] = b"\x94\xa5porch\xc0\x81\xa2on\xc3\xc0";

    fn signed(name: &str, boot: u32, counter: u32, secret: &BoardSecret) -> Vec<u8> {
        signed::seal_to_vec(Direction::ToBroker, name, boot, counter, UPDATE, secret)
            .expect("valid")
    }

    fn now() -> Timestamp {
        Timestamp::from_secs(1_765_000_000.25).expect("finite")
    }

    #[test]
    fn a_fresh_datagram_yields_its_update_and_board() {
        let mut auth = BoardAuth::new(16);
        let d = signed("porch", 3, 1, &secret());
        assert!(BoardAuth::is_signed(&d));
        let got = auth.verify(&d, from(), boards).expect("accepted");
        assert_eq!(
            got,
            FromBoard {
                board: "porch",
                payload: UPDATE,
                from: from(),
                fresh: Fresh::First,
            }
        );
        let d = signed("porch", 3, 2, &secret());
        assert_eq!(
            auth.verify(&d, from(), boards).map(|f| f.fresh),
            Ok(Fresh::Next)
        );
    }

    #[test]
    fn a_replayed_datagram_is_refused_from_any_address() {
        let mut auth = BoardAuth::new(16);
        let d = signed("porch", 3, 1, &secret());
        assert!(auth.verify(&d, from(), boards).is_ok());
        let elsewhere: SocketAddr = ([198, 51, 100, 1], 9).into();
        let refused = auth.verify(&d, elsewhere, boards).unwrap_err();
        assert_eq!(refused, Refusal::Replayed(Replay::Repeated));
        assert_eq!(refused.as_str(), "replayed");
    }

    #[test]
    fn an_old_boot_is_refused_after_a_reboot() {
        let mut auth = BoardAuth::new(16);
        let before = signed("porch", 3, 900, &secret());
        assert!(auth.verify(&before, from(), boards).is_ok());
        let after = signed("porch", 4, 0, &secret());
        assert_eq!(
            auth.verify(&after, from(), boards).map(|f| f.fresh),
            Ok(Fresh::NewBoot)
        );
        let late = signed("porch", 3, 901, &secret());
        assert_eq!(
            auth.verify(&late, from(), boards).unwrap_err(),
            Refusal::Replayed(Replay::OldBoot)
        );
    }

    #[test]
    fn a_counter_far_below_the_newest_is_refused() {
        let mut auth = BoardAuth::new(16);
        assert!(auth
            .verify(&signed("porch", 1, 500, &secret()), from(), boards)
            .is_ok());
        assert_eq!(
            auth.verify(&signed("porch", 1, 10, &secret()), from(), boards)
                .unwrap_err(),
            Refusal::Replayed(Replay::TooOld)
        );
    }

    #[test]
    fn an_unknown_board_is_refused_and_not_tracked() {
        let mut auth = BoardAuth::new(16);
        let d = signed("shed", 1, 1, &secret());
        let refused = auth.verify(&d, from(), boards).unwrap_err();
        assert_eq!(refused, Refusal::UnknownBoard);
        assert_eq!(refused.as_str(), "unknown_board");
        assert_eq!(auth.boards(), 0);
    }

    #[test]
    fn a_bad_mac_is_refused_and_moves_no_state() {
        let mut auth = BoardAuth::new(16);
        // Someone without the secret, trying to claim a high boot to lock the board out.
        let forged = signed("porch", u32::MAX, 0, &BoardSecret::from_bytes([8; 32]));
        let refused = auth.verify(&forged, from(), boards).unwrap_err();
        assert_eq!(refused, Refusal::BadMac);
        assert_eq!(refused.as_str(), "bad_mac");
        assert_eq!(auth.boards(), 0);
        // The real board is taken.
        assert!(auth
            .verify(&signed("porch", 1, 1, &secret()), from(), boards)
            .is_ok());
    }

    #[test]
    fn a_forgotten_board_starts_again_at_any_boot() {
        let mut auth = BoardAuth::new(16);
        assert!(auth
            .verify(&signed("porch", 40, 1, &secret()), from(), boards)
            .is_ok());
        let erased = signed("porch", 1, 0, &secret());
        assert_eq!(
            auth.verify(&erased, from(), boards).unwrap_err(),
            Refusal::Replayed(Replay::OldBoot)
        );
        assert!(auth.forget("porch"));
        assert_eq!(
            auth.verify(&erased, from(), boards).map(|f| f.fresh),
            Ok(Fresh::First)
        );
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let mut auth = BoardAuth::new(16);
        let d = signed("porch", 1, 1, &secret());
        for (bytes, want) in [
            (&d[..20], Malformed::Truncated),
            (&[0xC1, 0x09][..], Malformed::UnknownKind(9)),
            (UPDATE, Malformed::NotSigned),
        ] {
            let refused = auth.verify(bytes, from(), boards).unwrap_err();
            assert_eq!(refused, Refusal::Malformed(want));
            assert_eq!(refused.as_str(), "malformed");
        }
        // A command the broker signed, sent back to it.
        let reflected = signed::seal_to_vec(Direction::ToBoard, "porch", 1, 2, UPDATE, &secret())
            .expect("valid");
        assert_eq!(
            auth.verify(&reflected, from(), boards).unwrap_err(),
            Refusal::Malformed(Malformed::WrongDirection)
        );
    }

    #[test]
    fn commands_to_a_board_open_there_once() {
        let mut auth = BoardAuth::new(16);
        let command = b"\x81\xa4type\xa7command";
        assert_eq!(
            auth.seal_command("porch", command, now(), boards),
            Err(CommandSealError::NotHeard("porch".into()))
        );
        assert_eq!(
            auth.seal_command("shed", command, now(), boards),
            Err(CommandSealError::UnknownBoard("shed".into()))
        );
        assert!(auth
            .verify(&signed("porch", 12, 1, &secret()), from(), boards)
            .is_ok());
        let first = auth
            .seal_command("porch", command, now(), boards)
            .expect("signed");
        let second = auth
            .seal_command("porch", command, now(), boards)
            .expect("signed");
        // What the board does with them.
        let mut board = CommandWindow::new(12);
        for (d, want) in [
            (&first, Ok(())),
            (&second, Ok(())),
            (&first, Err(Replay::Repeated)),
        ] {
            let s = signed::open(d, Direction::ToBoard, boards).expect("opens");
            assert_eq!(s.payload, command);
            assert_eq!(board.check(s.boot, s.counter), want);
        }
        let s = signed::parse(&first).expect("parses");
        assert_eq!((s.boot, s.counter), (12, 1_765_000_000));
        // After the board restarts, commands of its old boot are refused there.
        let mut rebooted = CommandWindow::new(13);
        assert_eq!(rebooted.check(s.boot, s.counter), Err(Replay::WrongBoot));
    }
}
