//! `skiff image`: import, list, remove and pull the node agent's OCI images.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser, Clone)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand, Clone)]
enum ImageCommand {
    /// Import docker-archive or OCI-layout tarballs (plain, gzip or zstd).
    Import {
        /// The agent's data directory (default: like `skiff server`).
        #[arg(long, env = "SKIFF_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Image tarballs to import.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(args: ImageArgs) -> Result<()> {
    match args.command {
        ImageCommand::Import { .. } => bail!("image import is not available yet"),
    }
}
