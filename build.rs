//! Link options for the release binary of the stable glibc build (`cargo build --release` on
//! x86_64 Linux), for issue 12's 1.6 MB budget. Run by Cargo before it compiles wschat; it only
//! prints `cargo:` lines. Nothing here changes the code rustc generates, only what the linker
//! keeps and how it writes relocations, and only for the binary (`rustc-link-arg-bins`): tests,
//! benches and every build script link as before. Measured with Rust 1.95.0 (rust-lld) at
//! 968ebc3, stripped default (TLS) build, each on top of the previous one (docs/targets.md, Size):
//!
//! - `-z pack-relative-relocs` (RELR): the 2 000-odd relative relocations of a position-
//!   independent executable packed into a bitmap, 57 528 bytes of `.rela.dyn` into under 1 KB;
//!   ASLR is kept. -47 192 B. glibc 2.36 or later loads it (the linker adds a need for
//!   GLIBC_ABI_DT_RELR), so it is only passed when the glibc this build script runs on, which is
//!   the one the binary is built for, is that new.
//! - A linker script that discards `.eh_frame`, `.eh_frame_hdr` and `.gcc_except_table`: the
//!   unwinding tables, which a `panic = "abort"` binary never uses (nothing unwinds; a panic
//!   prints its message and aborts as before). The prebuilt std carries them whatever
//!   `-C force-unwind-tables` says, and that flag would break the panic=unwind test builds.
//!   -170 576 B. Cost: `gdb` and `perf --call-graph dwarf` cannot walk the stack of a core dump
//!   or profile of this binary, and `RUST_BACKTRACE=1` prints no frames.
//! - `--icf=all` (rust-lld's identical code folding): functions with the same machine code kept
//!   once (generic copies, derived impls). -14 336 B. Rust makes no promise that two functions
//!   have distinct addresses, and wschat compares none.
//!
//! When: the release profile, building for x86_64-unknown-linux-gnu on such a host with the
//! linker rustc picks itself (rust-lld since Rust 1.90). Another linker (`RUSTC_LINKER`, or
//! `-C linker` in the flags), a cross build, musl (scripts/build-static has its own means) or
//! `WSCHAT_STOCK_LINK=1` gets none of them.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WSCHAT_STOCK_LINK");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("WSCHAT_STOCK_LINK") == "1"
        || var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("HOST") != var("TARGET")
        || !var("RUSTC_LINKER").is_empty()
        || var("CARGO_ENCODED_RUSTFLAGS").contains("linker")
        || !rustc_links_with_lld()
    {
        return;
    }

    if glibc_has_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");

    // INSERT keeps the linker's own layout for everything else; /DISCARD/ drops the sections.
    let script = PathBuf::from(var("OUT_DIR")).join("no-unwind-tables.ld");
    let text = "SECTIONS { /DISCARD/ : { *(.eh_frame) *(.eh_frame_hdr) \
                *(.gcc_except_table .gcc_except_table.*) } } INSERT AFTER .text;\n";
    if std::fs::write(&script, text).is_ok() {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
}

/// True if rustc is 1.90 or later: from then on it links x86_64-unknown-linux-gnu with its
/// own rust-lld, which knows `--icf` (GNU ld does not).
fn rustc_links_with_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}

/// True if the glibc this runs on is 2.36 or later, the first to load DT_RELR.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_has_relr() -> bool {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
    // SAFETY: glibc returns a pointer to a static NUL-terminated string such as "2.36".
    let version = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
    let mut parts = version
        .to_str()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (2, 36)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_has_relr() -> bool {
    false
}
