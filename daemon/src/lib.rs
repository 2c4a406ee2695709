//! clinic-relay: the library behind the `clinic-relay` daemon.
//!
//! The binary is a thin CLI over this crate, so that every behaviour can be
//! driven from tests without spawning a process. See `docs/architecture.md`.
#![forbid(unsafe_code)]
// Bad input must become a typed error, never a panic: these lints hold that
// line in product code (tests may unwrap freely).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::todo,
        clippy::unimplemented
    )
)]
#![deny(clippy::await_holding_lock)]

pub mod admission;
pub mod api;
pub mod audit;
pub mod bounds;
pub mod care;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod console;
pub mod keys;
pub mod kpi;
pub mod logging;
pub mod model;
pub mod pms;
pub mod process;
pub mod queue;
pub mod service;
pub mod sync;
pub mod tls;
pub mod vault;
pub mod webhook;
pub mod whatsapp;
