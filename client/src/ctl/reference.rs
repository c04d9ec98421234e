//! README.md's table of `ringctl` commands, generated from the command line itself: a command's
//! doc comment is both its `ringctl help COMMAND` text and its README row, so adding a command
//! touches its declaration only (and the test below tells when README.md needs rewriting).

use clap::CommandFactory;

use super::Cli;

/// One command: its usage (`ringctl drain [--restart] NODE`) and what it shows or does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) usage: String,
    pub(crate) about: String,
}

/// Every command, nested ones (`rebalance status`) included, in `--help` order.
pub(crate) fn rows() -> Vec<Row> {
    let mut command = Cli::command();
    command.build();
    let mut rows = Vec::new();
    collect(&command, "ringctl", &mut rows);
    rows
}

fn collect(command: &clap::Command, prefix: &str, rows: &mut Vec<Row>) {
    for sub in command
        .get_subcommands()
        .filter(|sub| sub.get_name() != "help")
    {
        let path = format!("{prefix} {}", sub.get_name());
        if sub.has_subcommands() {
            collect(sub, &path, rows);
            continue;
        }
        let mut usage = path;
        for arg in sub.get_arguments() {
            if matches!(arg.get_id().as_str(), "help" | "version")
                || arg.is_hide_set()
                || arg.is_global_set()
            {
                continue;
            }
            let choices: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|value| !value.is_hide_set())
                .map(|value| value.get_name().to_owned())
                .collect();
            let name = if choices.is_empty() {
                arg.get_value_names()
                    .and_then(|names| names.first())
                    .map_or_else(
                        || arg.get_id().to_string().to_uppercase(),
                        ToString::to_string,
                    )
            } else {
                choices.join("|")
            };
            let takes = arg.get_num_args().unwrap_or_default().takes_values();
            let word = match arg.get_long() {
                Some(long) if takes => format!("--{long} {name}"),
                Some(long) => format!("--{long}"),
                None => name,
            };
            if arg.is_required_set() {
                usage.push_str(&format!(" {word}"));
            } else {
                usage.push_str(&format!(" [{word}]"));
            }
        }
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(ToString::to_string)
            .unwrap_or_default();
        rows.push(Row {
            usage,
            about: about.split_whitespace().collect::<Vec<_>>().join(" "),
        });
    }
}

/// The Markdown table of README.md's ringctl section.
pub(crate) fn markdown_table() -> String {
    let escape = |text: &str| text.replace('|', "\\|");
    let mut table = String::from("| Command | Shows / does |\n|---|---|\n");
    for row in rows() {
        table.push_str(&format!(
            "| `{}` | {} |\n",
            escape(&row.usage),
            escape(&row.about)
        ));
    }
    table
}

/// The marker before the generated table in README.md.
pub(crate) const BEGIN: &str = "<!-- ringctl commands: generated from `ringctl --help`; RINGCACHE_REGENERATE=1 cargo test -p ringcache --features cli --lib ctl::reference rewrites it -->";
/// The marker after it.
pub(crate) const END: &str = "<!-- end of ringctl commands -->";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_command_table_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md is readable");
        let begin = readme
            .find(BEGIN)
            .expect("README.md has the ringctl table's begin marker");
        let end = readme
            .find(END)
            .expect("README.md has the ringctl table's end marker");
        assert!(begin < end, "the ringctl table's markers are out of order");
        let expected = format!(
            "{}{BEGIN}\n{}{}",
            &readme[..begin],
            markdown_table(),
            &readme[end..]
        );
        ringcache_test_support::check_generated(
            &path,
            &expected,
            "README.md's ringctl table differs from the commands' doc comments \
             (client/src/ctl/mod.rs); rewrite it with `RINGCACHE_REGENERATE=1 cargo test -p \
             ringcache --features cli --lib ctl::reference`",
        );
    }

    #[test]
    fn every_command_is_a_row_with_its_arguments() {
        let rows = rows();
        let usage = |start: &str| {
            rows.iter()
                .find(|row| row.usage.starts_with(start))
                .unwrap_or_else(|| panic!("{start} is a row: {rows:#?}"))
                .usage
                .clone()
        };
        assert_eq!(usage("ringctl status"), "ringctl status [--rate] [--check]");
        assert_eq!(usage("ringctl locate"), "ringctl locate KEY");
        assert_eq!(usage("ringctl rebalance"), "ringctl rebalance status");
        assert!(usage("ringctl drain").contains("NODE"));
        assert!(rows.iter().all(|row| row.about.len() > 20), "{rows:#?}");
    }
}
