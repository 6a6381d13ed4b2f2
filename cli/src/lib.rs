//! `kubectl migrate`: a kubectl plugin that starts kvmotion migrations,
//! follows their progress, lists, describes and cancels them.
//!
//! What is printed is built by pure functions in [`format`] (time passed
//! in); [`cmd`] does the reading and writing.

pub mod args;
pub mod client;
pub mod cmd;
pub mod error;
pub mod exit;
pub mod format;
pub mod output;
