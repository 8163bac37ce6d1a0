//! `orchctl completions`: shell completion scripts (clap_complete).

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::Cli;
use crate::exit::Failure;

const AFTER_HELP: &str = "\
Examples:
  orchctl completions bash > ~/.local/share/bash-completion/completions/orchctl
  orchctl completions zsh > \"${fpath[1]}/_orchctl\"
  orchctl completions fish > ~/.config/fish/completions/orchctl.fish";

/// Print the completion script of a shell on stdout.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: CompletionsArgs) -> Result<(), Failure> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "orchctl", &mut std::io::stdout());
    Ok(())
}
