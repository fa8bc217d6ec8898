//! The command line: `switchyard serve` and `switchyard demo`, each taking every
//! [`Config`] option as a flag, and the YAML file (`--config`) merged under the flags
//! given on the command line.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use super::{Config, ConfigError};

/// `switchyard`: an OpenAI-compatible gateway in front of vLLM / SGLang engines.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in front of the given workers.
    Serve(Box<Config>),
    /// Run the gateway with 3 embedded simulated engines (no GPU needed).
    #[cfg(feature = "demo")]
    Demo(Box<Config>),
}

impl Config {
    /// Parses the process arguments: returns whether the subcommand is `demo`, and its
    /// config with the YAML file (if any) applied under the flags given on the command
    /// line. `--help`, `--version` and malformed flags print and exit, as clap does.
    pub fn from_args() -> Result<(bool, Config), ConfigError> {
        Self::from_arg_list(std::env::args_os())
    }

    /// As [`from_args`](Self::from_args), for a given argument list.
    pub fn from_arg_list<I, T>(args: I) -> Result<(bool, Config), ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Cli::command()
            .try_get_matches_from(args)
            .unwrap_or_else(|e| e.exit());
        let cli = Cli::from_arg_matches(&matches).map_err(|e| ConfigError::Args(e.to_string()))?;
        let (demo, sub) = match matches.subcommand() {
            Some((name, sub)) => (name == "demo", sub),
            None => return Err(ConfigError::Args("a subcommand is required".into())),
        };
        let cfg = match cli.command {
            Command::Serve(c) => *c,
            #[cfg(feature = "demo")]
            Command::Demo(c) => *c,
        };
        let merged = match &cfg.config {
            Some(path) => Self::merge_file(path, &cfg, sub)?,
            None => cfg,
        };
        Ok((demo, merged))
    }

    /// This config with the model-selection settings (`models:` and `intent_routing:`)
    /// read again from its `--config` file; validated. Other options keep their values:
    /// they take effect only at start.
    pub fn reload_selection(&self) -> Result<Config, ConfigError> {
        let Some(path) = &self.config else {
            return Err(ConfigError::Args(
                "the gateway was started without --config: there is no file to reload".into(),
            ));
        };
        let (file, file_error) = read_file(path)?;
        let fresh: Config = serde_path_to_error::deserialize(file)
            .map_err(|e| file_error(format!("option `{}`: {}", e.path(), e.inner())))?;
        let mut cfg = self.clone();
        cfg.models = fresh.models;
        cfg.intent_routing = fresh.intent_routing;
        cfg.use_cases = fresh.use_cases;
        cfg.use_case_routing = fresh.use_case_routing;
        cfg.model_settings()?;
        cfg.validate_selection()?;
        cfg.validate_use_cases()?;
        Ok(cfg)
    }

    /// Loads `path` and applies the command-line flags on top of it.
    fn merge_file(path: &Path, cli: &Config, matches: &ArgMatches) -> Result<Config, ConfigError> {
        let (mut file, file_error) = read_file(path)?;
        let map = file.as_object_mut().expect("read_file returns a mapping");
        let cli_values = serde_json::to_value(cli).map_err(|e| file_error(e.to_string()))?;
        for id in matches.ids() {
            let id = id.as_str();
            if matches.value_source(id) == Some(ValueSource::CommandLine)
                && let Some(v) = cli_values.get(id)
            {
                map.insert(id.to_string(), v.clone());
            }
        }
        let mut cfg: Config = serde_path_to_error::deserialize(file)
            .map_err(|e| file_error(format!("option `{}`: {}", e.path(), e.inner())))?;
        cfg.config = Some(path.to_path_buf());
        Ok(cfg)
    }
}

/// The YAML file at `path` as a JSON mapping, and how to report an error in it.
fn read_file(
    path: &Path,
) -> Result<(serde_json::Value, impl Fn(String) -> ConfigError + '_), ConfigError> {
    let file_error = move |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let mut file: serde_json::Value =
        yaml_serde::from_str(&text).map_err(|e| file_error(e.to_string()))?;
    if file.is_null() {
        file = serde_json::json!({});
    }
    if !file.is_object() {
        return Err(file_error(
            "expected a mapping of option names to values".into(),
        ));
    }
    Ok((file, file_error))
}
