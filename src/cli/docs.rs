//! Shell completions and man pages, generated from the command line's own
//! clap definition (and the reference config), so they cannot drift from
//! what the binary accepts: `fieldmq completions SHELL` prints a script;
//! `fieldmq manual --out DIR` writes fieldmq.1 (one section per subcommand)
//! and fieldmq.toml.5 for the package.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Command;

use crate::cli::say;

/// The reference config, annotated key by key: the body of fieldmq.toml(5).
const REFERENCE: &str = include_str!("../../config/fieldmq.example.toml");

/// `fieldmq completions`'s arguments.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    shell: clap_complete::Shell,
}

/// `fieldmq manual`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ManualArgs {
    /// Directory to write fieldmq.1 and fieldmq.toml.5 into.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

/// Prints the completion script for `args.shell` of `command`.
pub fn completions(mut command: Command, args: &CompletionsArgs) -> ExitCode {
    clap_complete::generate(args.shell, &mut command, "fieldmq", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// Writes the man pages of `command` into `args.out`.
pub fn manual(command: Command, args: &ManualArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let write = |name: &str, text: Vec<u8>| -> anyhow::Result<()> {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("fieldmq.1", command_page(command)?)?;
    write("fieldmq.toml.5", config_page())?;
    say!(
        "wrote {}",
        Path::new(&args.out).join("fieldmq.{1,toml.5}").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// fieldmq(1): clap_mangen's page of the whole command, then a section per
/// subcommand with its usage and every option.
fn command_page(command: Command) -> anyhow::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .context("cannot render fieldmq(1)")?;
    let mut text = String::from_utf8_lossy(&page).into_owned();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        text.push_str(&format!(".SH \"FIELDMQ {}\"\n", name.to_uppercase()));
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            text.push_str(&format!(".PP\n{}\n", roff_text(&about.to_string())));
        }
        let usage = sub
            .clone()
            .bin_name(format!("fieldmq {name}"))
            .render_usage();
        let usage = usage.to_string();
        let usage = usage.trim_start_matches("Usage: ");
        text.push_str(&format!(".PP\n\\fB{}\\fR\n", roff_text(usage)));
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let mut names = Vec::new();
            if let Some(short) = arg.get_short() {
                names.push(format!("\\-{short}"));
            }
            if let Some(long) = arg.get_long() {
                names.push(format!("\\-\\-{}", long.replace('-', "\\-")));
            }
            if names.is_empty() {
                names.push(format!("<{}>", arg.get_id()));
            }
            let value = arg
                .get_value_names()
                .map(|v| format!(" \\fI{}\\fR", v.join(" ")))
                .unwrap_or_default();
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            text.push_str(&format!(
                ".TP\n\\fB{}\\fR{value}\n{}\n",
                names.join(", "),
                roff_text(&help)
            ));
        }
    }
    text.push_str(".SH \"SEE ALSO\"\n\\fBfieldmq.toml\\fR(5)\n");
    Ok(text.into_bytes())
}

/// fieldmq.toml(5): the reference config, section by section, as it is
/// shipped in /usr/share/doc/fieldmq/examples.
fn config_page() -> Vec<u8> {
    let mut text = String::from(
        ".TH FIELDMQ.TOML 5 \"\" \"fieldmq\" \"File Formats\"\n\
         .SH NAME\n\
         fieldmq.toml \\- configuration of the fieldmq gateway\n\
         .SH DESCRIPTION\n\
         fieldmq reads one TOML file (\\fB/etc/fieldmq/fieldmq.toml\\fR for the service). \
         Every key is shown below as in the annotated reference config, with its default \
         and what it does. \\fBfieldmq check \\-\\-config\\fR \\fIFILE\\fR validates a file and \
         names the file, line and key of every problem; a SIGHUP reloads it.\n",
    );
    let mut in_block = false;
    let lines: Vec<&str> = REFERENCE.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        // A ruler line starts a section, titled by the comment after it.
        if line.starts_with("# ----") {
            if in_block {
                text.push_str(".fi\n");
            }
            let title = lines
                .get(i + 1)
                .map(|l| l.trim_start_matches('#').trim())
                .unwrap_or_default();
            // Up to its first full stop or colon; the whole line stays in the text.
            let title = title.split([':', '.']).next().unwrap_or(title).trim();
            text.push_str(&format!(
                ".SH \"{}\"\n.nf\n",
                roff_text(title).to_uppercase()
            ));
            in_block = true;
            i += 1;
            continue;
        }
        if !in_block {
            text.push_str(".SH PREAMBLE\n.nf\n");
            in_block = true;
        }
        text.push_str(&roff_line(line));
        text.push('\n');
        i += 1;
    }
    if in_block {
        text.push_str(".fi\n");
    }
    text.push_str(".SH \"SEE ALSO\"\n\\fBfieldmq\\fR(1)\n");
    text.into_bytes()
}

/// Text safe in a roff paragraph: backslashes escaped, no line starting
/// with a control character.
fn roff_text(text: &str) -> String {
    text.lines().map(roff_line).collect::<Vec<_>>().join("\n")
}

fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_control_characters_at_line_starts_and_backslashes_are_escaped() {
        assert_eq!(roff_line(".nf"), "\\&.nf");
        assert_eq!(roff_line("'quoted"), "\\&'quoted");
        assert_eq!(roff_line("a\\b"), "a\\eb");
        assert_eq!(roff_text("x\n.y"), "x\n\\&.y");
    }
}
