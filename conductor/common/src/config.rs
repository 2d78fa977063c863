//! Configuration layering for every service, on `figment`: built-in defaults
//! (the typed struct's `#[serde(default)]`), then a TOML file, then the
//! service's own environment variables, then command-line flags, later ones
//! winning.
//!
//! Environment variables are `<PREFIX><SECTION>_<KEY>` (the section is one
//! of the service's top-level tables, the key the rest, lower-cased). Their
//! values enter as strings; numbers and booleans are read from them where
//! the struct wants one (figment's lossy extraction), so `…_REPLICA_ID=1` is
//! the string "1" and `…_PORT=5` the number 5. `<PREFIX>CONFIG` names the
//! file and is not a setting. Errors name the variable, file or flag that
//! set the offending value.
//!
//! Callers: console-svc's and the conductor's `config` modules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use figment::providers::Serialized;
use figment::Figment;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("configuration: {0}")]
    Invalid(String),
}

/// One service's layout: its environment prefix and its sections.
#[derive(Clone, Copy, Debug)]
pub struct Layout<'a> {
    /// e.g. `PORTHOLE_CONDUCTOR_` (with the trailing underscore).
    pub prefix: &'a str,
    /// The top-level tables, e.g. `["api", "database", "console", "power"]`.
    pub sections: &'a [&'a str],
}

impl Layout<'_> {
    /// The variable that names the TOML file: `<PREFIX>CONFIG`.
    pub fn file_var(&self) -> String {
        format!("{}CONFIG", self.prefix)
    }

    /// `(section, key)` for a variable in this prefix; `Ok(None)` for one
    /// outside it (or the file variable), an error for one inside it that
    /// names no section.
    fn split(&self, name: &str) -> Result<Option<(&str, String)>, ConfigError> {
        let Some(rest) = name.strip_prefix(self.prefix) else {
            return Ok(None);
        };
        if name == self.file_var() {
            return Ok(None);
        }
        let rest = rest.to_ascii_lowercase();
        // The longest section that matches, so `foo_bar` wins over `foo`.
        let mut sections: Vec<&str> = self.sections.to_vec();
        sections.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in sections {
            if let Some(key) = rest.strip_prefix(s).and_then(|k| k.strip_prefix('_')) {
                if !key.is_empty() {
                    return Ok(Some((s, key.to_owned())));
                }
            }
        }
        Err(ConfigError::Invalid(format!(
            "environment variable {name}: no such setting (its name after {} must start with one of {} and a key)",
            self.prefix,
            self.sections
                .iter()
                .map(|s| format!("{}_", s.to_ascii_uppercase()))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// The `(section, key, value)` overrides a binary's flags make, built from
/// its parsed command line (only the flags given).
#[derive(Debug, Default)]
pub struct Overrides(Vec<(&'static str, &'static str, toml::Value)>);

impl Overrides {
    /// `section.key` = `value` as a string, when the flag was given.
    pub fn set(
        &mut self,
        section: &'static str,
        key: &'static str,
        value: Option<impl ToString>,
    ) -> &mut Self {
        if let Some(v) = value {
            self.0
                .push((section, key, toml::Value::String(v.to_string())));
        }
        self
    }

    /// `section.key` = the path, when the flag was given.
    pub fn path(
        &mut self,
        section: &'static str,
        key: &'static str,
        value: Option<&Path>,
    ) -> &mut Self {
        self.set(section, key, value.map(|p| p.display().to_string()))
    }

    /// `section.key` = `value`, when the switch is on.
    pub fn switch(
        &mut self,
        section: &'static str,
        key: &'static str,
        on: bool,
        value: &str,
    ) -> &mut Self {
        self.set(section, key, on.then_some(value))
    }

    /// What `load` takes as its `overrides`.
    pub fn into_vec(self) -> Vec<(&'static str, &'static str, toml::Value)> {
        self.0
    }
}

/// A service's typed configuration: its layout and the checks its types
/// cannot make; loading is the same for every service.
pub trait Layered: DeserializeOwned {
    /// Its environment prefix and sections.
    const LAYOUT: Layout<'static>;

    /// What the types alone cannot say (pairs, ranges, one-of), after loading.
    fn validate(&self) -> Result<(), ConfigError>;

    /// Defaults, then `file`, then the layout's variables from `env`, then
    /// `overrides` (`section.key = value` pairs from flags), then
    /// [`validate`](Self::validate); see [`load`] for how values coerce.
    fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, &str, toml::Value)],
    ) -> Result<Self, ConfigError> {
        let config: Self = load(&Self::LAYOUT, file, env, overrides)?;
        config.validate()?;
        Ok(config)
    }
}

/// `setting` (e.g. `service.log_format`) is `text` or `json`.
pub fn check_log_format(setting: &str, value: &str) -> Result<(), ConfigError> {
    match value {
        "text" | "json" => Ok(()),
        other => Err(ConfigError::Invalid(format!(
            "{setting} must be \"text\" or \"json\", not {other:?}"
        ))),
    }
}

/// Load `T` from defaults < `file` < the layout's variables in `env` <
/// `overrides` (`(section, key, value)` from flags).
pub fn load<T: DeserializeOwned>(
    layout: &Layout<'_>,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(&str, &str, toml::Value)],
) -> Result<T, ConfigError> {
    // Where each `section.key` was last set, for error messages.
    let mut origin: HashMap<String, String> = HashMap::new();
    let mut figment = Figment::new();
    if let Some(path) = file {
        let table = read_table(path)?;
        for (section, v) in &table {
            if let toml::Value::Table(t) = v {
                for key in t.keys() {
                    origin.insert(
                        format!("{section}.{key}"),
                        format!("config file {}", path.display()),
                    );
                }
            }
            origin
                .entry(section.clone())
                .or_insert(format!("config file {}", path.display()));
        }
        figment = figment.merge(Serialized::defaults(table));
    }
    let mut vars: Vec<(String, String)> = env.into_iter().collect();
    vars.sort();
    let mut from_env = toml::Table::new();
    for (name, value) in vars {
        let Some((section, key)) = layout.split(&name)? else {
            continue;
        };
        origin.insert(
            format!("{section}.{key}"),
            format!("environment variable {name}"),
        );
        set(&mut from_env, section, &key, toml::Value::String(value));
    }
    figment = figment.merge(Serialized::defaults(from_env));
    let mut from_flags = toml::Table::new();
    for (section, key, value) in overrides {
        origin.insert(
            format!("{section}.{key}"),
            format!("flag for {section}.{key}"),
        );
        set(&mut from_flags, section, key, value.clone());
    }
    figment = figment.merge(Serialized::defaults(from_flags));
    figment
        .extract_lossy()
        .map_err(|e| ConfigError::Invalid(describe(&e, &origin)))
}

/// One line per problem: what is wrong and where it was set.
fn describe(e: &figment::Error, origin: &HashMap<String, String>) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            let kind = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    path.push(field.clone());
                    format!("unknown setting `{field}` (known: {})", expected.join(", "))
                }
                other => other.to_string(),
            };
            let key = path.join(".");
            let section_key = path.iter().take(2).cloned().collect::<Vec<_>>().join(".");
            match origin.get(&section_key).or_else(|| origin.get(&key)) {
                Some(from) => format!("{from}: {key}: {kind}"),
                None if key.is_empty() => kind,
                None => format!("{key}: {kind}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[test]
    fn log_format_is_text_or_json() {
        check_log_format("service.log_format", "text").unwrap();
        check_log_format("service.log_format", "json").unwrap();
        let err = check_log_format("service.log_format", "xml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration: service.log_format must be \"text\" or \"json\", not \"xml\""
        );
    }

    #[test]
    fn overrides_hold_only_the_flags_given() {
        let mut o = Overrides::default();
        o.set("service", "listen", Some("127.0.0.1:1"))
            .set("service", "url", None::<String>)
            .path("database", "path", Some(Path::new("/d/db")))
            .switch("service", "log_format", true, "json")
            .switch("service", "other", false, "json");
        let s = |v: &str| toml::Value::String(v.into());
        assert_eq!(
            o.into_vec(),
            vec![
                ("service", "listen", s("127.0.0.1:1")),
                ("database", "path", s("/d/db")),
                ("service", "log_format", s("json")),
            ]
        );
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Conf {
        service: Service,
        service_extra: Extra,
    }

    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Service {
        replica_id: String,
        port: u16,
        verbose: bool,
        #[serde(with = "humantime_serde")]
        ttl: Duration,
        name: Option<String>,
    }

    impl Default for Service {
        fn default() -> Self {
            Self {
                replica_id: "host".into(),
                port: 1,
                verbose: false,
                ttl: Duration::from_secs(3),
                name: None,
            }
        }
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Extra {
        key: String,
    }

    const LAYOUT: Layout = Layout {
        prefix: "PORTHOLE_TESTSVC_",
        sections: &["service", "service_extra"],
    };

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_then_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[service]\nport = 7\nttl = \"9s\"\nname = \"file\"\n",
        )
        .unwrap();
        let c: Conf = load(&LAYOUT, None, vec![], &[]).unwrap();
        assert_eq!((c.service.port, c.service.replica_id.as_str()), (1, "host"));
        let c: Conf = load(&LAYOUT, Some(&file), vec![], &[]).unwrap();
        assert_eq!((c.service.port, c.service.ttl), (7, Duration::from_secs(9)));
        let e = env(&[
            ("PORTHOLE_TESTSVC_SERVICE_PORT", "8"),
            ("PORTHOLE_TESTSVC_SERVICE_NAME", "env"),
            ("PORTHOLE_TESTSVC_CONFIG", "/ignored/here.toml"),
            ("PORTHOLE_OTHER_SERVICE_PORT", "not a number"),
            ("UNRELATED", "x"),
        ]);
        let c: Conf = load(&LAYOUT, Some(&file), e.clone(), &[]).unwrap();
        assert_eq!(
            (c.service.port, c.service.name.as_deref()),
            (8, Some("env"))
        );
        assert_eq!(c.service.ttl, Duration::from_secs(9));
        let flags = [("service", "port", toml::Value::Integer(9))];
        let c: Conf = load(&LAYOUT, Some(&file), e, &flags).unwrap();
        assert_eq!(c.service.port, 9);
    }

    #[test]
    fn env_values_are_strings_that_serde_coerces() {
        let e = env(&[
            ("PORTHOLE_TESTSVC_SERVICE_REPLICA_ID", "1"),
            ("PORTHOLE_TESTSVC_SERVICE_VERBOSE", "true"),
            ("PORTHOLE_TESTSVC_SERVICE_TTL", "2s"),
            ("PORTHOLE_TESTSVC_SERVICE_EXTRA_KEY", "42"),
        ]);
        let c: Conf = load(&LAYOUT, None, e, &[]).unwrap();
        assert_eq!(c.service.replica_id, "1");
        assert!(c.service.verbose);
        assert_eq!(c.service.ttl, Duration::from_secs(2));
        // The longer section wins: service_extra.key, not service.extra_key.
        assert_eq!(c.service_extra.key, "42");
    }

    #[test]
    fn errors_name_the_variable_the_file_or_the_flag() {
        let err = load::<Conf>(
            &LAYOUT,
            None,
            env(&[("PORTHOLE_TESTSVC_SERVICE_BOGUS", "1")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("environment variable PORTHOLE_TESTSVC_SERVICE_BOGUS")
                && err.contains("unknown setting `bogus`"),
            "{err}"
        );
        let err = load::<Conf>(&LAYOUT, None, env(&[("PORTHOLE_TESTSVC_NOPE_X", "1")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PORTHOLE_TESTSVC_NOPE_X") && err.contains("SERVICE_"),
            "{err}"
        );
        let err = load::<Conf>(
            &LAYOUT,
            None,
            env(&[("PORTHOLE_TESTSVC_SERVICE_PORT", "seventy")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("environment variable PORTHOLE_TESTSVC_SERVICE_PORT: service.port"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[service]\nport = \"x\"\n").unwrap();
        let err = load::<Conf>(&LAYOUT, Some(&file), vec![], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config file") && err.contains("service.port"),
            "{err}"
        );
        let flags = [("service", "ttl", toml::Value::String("soon".into()))];
        let err = load::<Conf>(&LAYOUT, None, vec![], &flags)
            .unwrap_err()
            .to_string();
        assert!(err.contains("flag for service.ttl"), "{err}");
        let err =
            load::<Conf>(&LAYOUT, Some(&dir.path().join("missing.toml")), vec![], &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }
}
