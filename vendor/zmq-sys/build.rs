//! Builds libzmq 4.3.4 (the sources of the `zeromq-src` crate) with CURVE, against the static
//! libsodium that `libsodium-sys-stable` built (it is a dependency, so Cargo hands us its
//! `cargo:include` and `cargo:lib` as `DEP_SODIUM_INCLUDE` and `DEP_SODIUM_LIB`).

use std::env;
use std::path::PathBuf;

fn dep(name: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed={name}");
    match env::var_os(name) {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "{name} is not set: libsodium-sys-stable did not say where it put libsodium \
             (it does when it builds its bundled release, the default)"
        ),
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let lib = dep("DEP_SODIUM_LIB");
    let include = dep("DEP_SODIUM_INCLUDE");
    // libzmq's sources draw compiler warnings, which Cargo shows for a path crate like this one
    // (and hides for crates from a registry): libzmq's to fix, and only noise in a user's build.
    let flags = env::var("CXXFLAGS").unwrap_or_default();
    env::set_var("CXXFLAGS", format!("{flags} -w"));
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
}
