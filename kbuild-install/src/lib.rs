//! Extract a reusable, self-sufficient Kbuild tree from a configured and built Linux kernel.
//!
//! The tree holds what the kernel's `scripts/package/install-extmod-build` ships (enough to build
//! external modules with `make -C <tree> M=<dir>`), plus what is needed to generate configuration
//! variants with the kernel's own Kconfig: `.config`, `include/config/auto.conf.cmd`, every
//! Kconfig file the architecture parses, a built `scripts/kconfig/conf`, and `System.map`. A
//! manifest (`extmod-kbuild.json`) records what the tree was made from.

pub mod builtin;
pub mod cli;
pub mod config;
pub mod elf;
pub mod error;
pub mod fsutil;
pub mod install;
pub mod kconfig;
pub mod lock;
pub mod manifest;
pub mod paths;
pub mod process;
pub mod sandbox;
pub mod selftest;
pub mod tree;

pub use error::{Error, Result, exit};
pub use install::{Event, Options, install};
pub use manifest::Manifest;
