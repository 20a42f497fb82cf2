//! Feeding other programs (chained plugins asked for VERSION, nft): their
//! input is written into a pipe before they start, so a program that exits
//! without reading it can never make this process die of SIGPIPE (the CLI
//! keeps SIGPIPE's default, see main.rs).

use std::process::Stdio;

use anyhow::{ensure, Context, Result};

/// What fits a pipe without a reader: Linux's default pipe buffer.
const PIPE_BUFFER: usize = 64 * 1024;

/// A child's stdin holding `bytes`.
pub fn stdin_of(bytes: &[u8]) -> Result<Stdio> {
    ensure!(bytes.len() < PIPE_BUFFER, "{} bytes of input do not fit a pipe", bytes.len());
    let (read_end, write_end) = nix::unistd::pipe().context("create a pipe")?;
    nix::unistd::write(&write_end, bytes).context("write to a pipe")?;
    Ok(Stdio::from(read_end))
}
