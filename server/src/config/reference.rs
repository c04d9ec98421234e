//! The settings reference: README.md's settings table, generated from the `ringcached` command
//! line (which [`super::settings`] declares), so the documentation cannot drift from the code.

use clap::CommandFactory;

use super::Cli;

/// One row of the table: a flag of `ringcached`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `--flag VALUE`.
    pub flag: String,
    /// The environment variable, if it has one.
    pub env: Option<String>,
    /// The TOML key (settings only).
    pub key: Option<String>,
    /// What the help says after `[default: `, if anything.
    pub default: Option<String>,
    /// The help without its default.
    pub meaning: String,
}

/// The rows, in `--help` order.
pub fn rows() -> Vec<Row> {
    let mut command = Cli::command();
    command.build();
    command
        .get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .map(|arg| {
            let long = arg.get_long().unwrap_or_default();
            let takes = arg.get_num_args().unwrap_or_default();
            let value = arg
                .get_value_names()
                .and_then(|names| names.first())
                .filter(|_| takes.takes_values())
                .map(|name| match takes.min_values() {
                    0 => format!("[={name}]"),
                    _ => format!(" {name}"),
                })
                .unwrap_or_default();
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|help| help.to_string())
                .unwrap_or_default();
            let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
            let (meaning, default) = match help.rsplit_once(" [default: ") {
                Some((meaning, default)) if default.ends_with(']') => (
                    meaning.to_owned(),
                    Some(default.trim_end_matches(']').to_owned()),
                ),
                _ => (help.clone(), None),
            };
            let id = arg.get_id().as_str();
            Row {
                flag: format!("--{long}{value}"),
                env: arg.get_env().map(|env| env.to_string_lossy().into_owned()),
                key: super::settings::NAMES.contains(&id).then(|| id.to_owned()),
                default,
                meaning,
            }
        })
        .collect()
}

/// The settings whose help describes the default rather than giving its value (a default
/// computed from other settings, or none). Every other setting's `[default: …]` is a value, in
/// backticks in the table, and a test checks that it is the default the code applies.
pub const DESCRIBED_DEFAULTS: &[&str] = &[
    "advertise_addr",
    "seeds",
    "max_message_bytes",
    "ready_settle",
    "suspicion_max_timeout",
    "workers",
    "zone",
    "data_dir",
    "snapshot_interval",
    "snapshot_max_age",
    "gossip_keyring",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "cluster_ca",
    "cluster_cert",
    "cluster_key",
    "users_file",
];

/// A default as the table shows it: a value in backticks, a note after it in parentheses, a
/// description as it is.
fn shown_default(row: &Row) -> String {
    let Some(default) = &row.default else {
        return "–".to_owned();
    };
    let (value, note) = match default.split_once(" (") {
        Some((value, note)) => (value, format!(" ({note}")),
        None => (default.as_str(), String::new()),
    };
    let described = row
        .key
        .as_deref()
        .is_none_or(|key| DESCRIBED_DEFAULTS.contains(&key));
    if !described {
        format!("`{value}`{note}")
    } else {
        default.clone()
    }
}

/// The Markdown table of README.md's Configuration section.
pub fn markdown_table() -> String {
    let escape = |text: &str| text.replace('|', "\\|");
    let mut table = String::from("| Flag | Environment | Default | Meaning |\n|---|---|---|---|\n");
    for row in rows() {
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            escape(&row.flag),
            row.env
                .as_deref()
                .map_or_else(|| "–".to_owned(), |env| format!("`{env}`")),
            escape(&shown_default(&row)),
            escape(&row.meaning),
        ));
    }
    table
}

/// The markers around the generated table in README.md.
pub const BEGIN: &str = "<!-- settings table: generated from `ringcached --help`; RINGCACHE_REGENERATE=1 cargo test -p ringcache-server --lib config::reference rewrites it -->";
/// The marker after the table.
pub const END: &str = "<!-- end of settings table -->";

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Settings;

    /// The command line of `row`'s flag given `value`, if the flag accepts it.
    fn parsed(row: &Row, value: &str) -> Option<Cli> {
        let flag = row.flag.split([' ', '[']).next().unwrap_or_default();
        Cli::try_parse_from(["ringcached", &format!("{flag}={value}")]).ok()
    }

    #[test]
    fn the_readme_settings_table_is_the_generated_one() {
        ringcache_test_support::generated_section(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
            BEGIN,
            END,
            &markdown_table(),
            "RINGCACHE_REGENERATE=1 cargo test -p ringcache-server --lib config::reference",
        );
    }

    #[test]
    fn every_setting_has_its_variable_its_key_help_and_a_default() {
        let rows = rows();
        let settings: Vec<&Row> = rows.iter().filter(|row| row.key.is_some()).collect();
        assert_eq!(settings.len(), crate::config::settings::NAMES.len());
        for row in settings {
            let key = row.key.as_deref().unwrap_or_default();
            assert_eq!(
                row.env.as_deref(),
                Some(format!("RINGCACHE_{}", key.to_uppercase()).as_str()),
                "{key}: the variable is RINGCACHE_ and the key in capitals"
            );
            assert!(
                row.flag
                    .starts_with(&format!("--{} ", key.replace('_', "-")))
                    || row
                        .flag
                        .starts_with(&format!("--{}[=", key.replace('_', "-"))),
                "{key}: the flag is the key with - for _, got {}",
                row.flag
            );
            assert!(row.meaning.len() > 10, "{key}: the help says what it does");
            assert!(
                row.default.is_some(),
                "{key}: the help ends with [default: ...]"
            );
        }
    }

    /// Defaults written as values in the help are the defaults the code applies. The others are
    /// descriptions (a default computed from other settings, or none), listed here so that a
    /// mistyped value is not taken for one.
    #[test]
    fn a_default_written_as_a_value_is_the_default_applied() {
        let defaults = Settings::default()
            .resolve()
            .expect("the defaults are valid");
        let mut literal = Vec::new();
        for row in rows().iter().filter(|row| row.key.is_some()) {
            let key = row.key.clone().unwrap_or_default();
            let default = row.default.clone().unwrap_or_default();
            let value = default.split(" (").next().unwrap_or_default();
            if DESCRIBED_DEFAULTS.contains(&key.as_str()) {
                continue;
            }
            let cli = parsed(row, value).unwrap_or_else(|| {
                panic!(
                    "{key}: the default {default:?} is not a value of the flag; add {key} to \
                     DESCRIBED_DEFAULTS if it is a description"
                )
            });
            let given = cli.settings.resolve().expect("the default is valid");
            assert_eq!(
                given, defaults,
                "{key}: the help says [default: {value}], the code applies another default"
            );
            literal.push(key);
        }
        assert!(literal.len() > 50, "most defaults are values: {literal:?}");
    }

    #[test]
    fn flags_that_are_not_settings_have_no_key() {
        let rows = rows();
        for flag in [
            "--config FILE",
            "--dev-cluster N",
            "--gen-user NAME",
            "--gen-gossip-key",
        ] {
            let row = rows
                .iter()
                .find(|row| row.flag == flag)
                .unwrap_or_else(|| panic!("{flag} is a row"));
            assert_eq!(row.key, None, "{flag}");
        }
    }
}
