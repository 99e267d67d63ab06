//! `spiderpool`: with `CNI_COMMAND` set, the CNI IPAM plugin; without, the command-line tool.

use std::io::{Read, Write};
use std::process::ExitCode;

use spiderpool_cni::cni;
use spiderpool_cni::plugin::{self, Answer};

fn main() -> ExitCode {
    match std::env::var("CNI_COMMAND") {
        Ok(command) => cni_main(&command),
        Err(_) => {
            let cli = <spiderpool_cni::cli::Cli as clap::Parser>::parse();
            match spiderpool_cni::cli::run(&cli) {
                Ok(output) => {
                    print!("{output}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The plugin: one command, the network configuration on stdin, the answer on stdout.
fn cni_main(command: &str) -> ExitCode {
    let mut stdin = Vec::new();
    let answer = match std::io::stdin().read_to_end(&mut stdin) {
        Err(err) => Answer::Failure(
            cni::CniError::new(cni::codes::IO_FAILURE, format!("reading stdin failed: {err}"), "")
                .to_json(cni::SpecVersion::LATEST.as_str()),
        ),
        Ok(_) => plugin::run(command, |name| std::env::var(name).ok(), &stdin),
    };
    let mut stdout = std::io::stdout().lock();
    let (output, code) = match answer {
        Answer::Success(output) => (output, ExitCode::SUCCESS),
        Answer::Failure(error) => (Some(error), ExitCode::FAILURE),
    };
    if let Some(output) = output {
        let _ = writeln!(stdout, "{output}");
    }
    code
}
