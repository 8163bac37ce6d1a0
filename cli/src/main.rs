//! `orchctl`, the OrchQueue command-line client, built on the `orchctl`
//! client library. One module per command under `cmd/`; all printing in
//! `output`; every exit code decided in `exit`.

mod cmd;
mod exit;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::exit::{EXIT_CODES_HELP, Exit};

const ABOUT: &str = "\
Submit LLM generation tasks to orchestratord, stream their tokens, and
inspect or cancel them; manage sessions, scopes and (with an admin key)
pools.";

const EXAMPLES: &str = "\
Examples:
  orchctl submit --prompt 'Write a haiku about queues' --max-tokens 32 --follow
  id=$(orchctl submit --prompt 'long job' --priority batch)
  orchctl status \"$id\"; orchctl stream \"$id\"; orchctl cancel \"$id\"
  orchctl --scope my-run ls --state running
  orchctl --scope my-run scope purge
  orchctl pools; orchctl pool health default
  orchctl pool reload default --model-ref gguf:/models/qwen2.5-0.5b-q4.gguf
  ORCH_URL=http://gpu-box:8080 ORCH_API_KEY=... orchctl --json submit -p hi -f";

#[derive(Debug, Parser)]
#[command(
    name = "orchctl",
    version,
    about = ABOUT,
    after_help = format!("{EXAMPLES}\n\n{EXIT_CODES_HELP}"),
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    global: cmd::Global,

    #[command(subcommand)]
    command: cmd::Command,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = cmd::Ctx::new(&cli.global);
    let hints = ctx.context(&cli.command);
    match cli.command.run(&ctx).await {
        Ok(()) => Exit::Ok.into(),
        Err(failure) => {
            let exit = Exit::of(&failure);
            if exit != Exit::Ok {
                output::report(&failure, ctx.out.json, &hints);
            }
            exit.into()
        }
    }
}
