//! Counters the tools log: declared once, as a table of names and help texts, by [`counters!`];
//! the struct, the table, the snapshot and the info line all come from that one declaration.
//!
//! ```
//! thingsbus_adaptors_generic::counters! {
//!     /// What a small bridge did.
//!     pub struct Counts {
//!         forwarded: "messages sent on",
//!         dropped: "messages that could not be sent",
//!     }
//! }
//! let c = Counts::default();
//! c.forwarded.add(2);
//! assert_eq!(Counts::TABLE[0].name, "forwarded");
//! assert_eq!(c.values(), [2, 0]);
//! c.log("bridge report"); // info: `bridge report forwarded=2 dropped=0`
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter: a number that only goes up, shared by whoever counts (relaxed atomics).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Counts one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Counts `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter's entry in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// The name, as logged (`name=value`).
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
}

/// `name=value` pairs of a table and its values, joined by `sep`: `not_json=1,filtered=3`.
pub fn render(table: &[Info], values: &[u64], sep: &str) -> String {
    table
        .iter()
        .zip(values)
        .map(|(i, v)| format!("{}={v}", i.name))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Declares a struct of [`Counter`]s from `name: "help"` lines, with
/// - `TABLE`: every counter's [`Info`], in the order declared;
/// - `values()`: the counts, in the same order;
/// - `log(what)`: one info line, `what` as its message and every counter as a field.
#[macro_export]
macro_rules! counters {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($field:ident : $help:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $(#[doc = $help] pub $field: $crate::counters::Counter,)+
        }

        // The methods are as visible as the struct the caller declared.
        #[allow(unreachable_pub)]
        impl $name {
            /// Every counter's name and help, in the order declared.
            pub const TABLE: &'static [$crate::counters::Info] = &[
                $($crate::counters::Info { name: stringify!($field), help: $help },)+
            ];

            /// The counts, in the order of `TABLE`.
            pub fn values(&self) -> Vec<u64> {
                vec![$(self.$field.get()),+]
            }

            /// One info line: `what`, then `name=count` for every counter.
            pub fn log(&self, what: &str) {
                ::tracing::info!($($field = self.$field.get(),)+ "{}", what);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::counters! {
        /// Two counters for the tests.
        struct Two {
            first: "the first",
            second: "the second",
        }
    }

    #[test]
    fn the_table_values_and_rendering_follow_the_declaration() {
        let c = Two::default();
        c.first.inc();
        c.second.add(5);
        c.first.inc();
        assert_eq!(
            Two::TABLE,
            [
                Info {
                    name: "first",
                    help: "the first"
                },
                Info {
                    name: "second",
                    help: "the second"
                }
            ]
        );
        assert_eq!(c.values(), [2, 5]);
        assert_eq!(render(Two::TABLE, &c.values(), ","), "first=2,second=5");
        c.log("test report");
    }
}
