//! Layered configuration: the struct's defaults, then the TOML file, then `HRU_*`
//! environment variables, then command-line flags, then `validate()`. Every error names the
//! source and the key, and says what to do.

use serde::de::DeserializeOwned;

/// A configuration error: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {}{message}", key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The file, variable or flag the value came from.
    pub source_name: String,
    /// The key at fault, when one is.
    pub key: Option<String>,
    /// What is wrong, and what to do.
    pub message: String,
}

impl ConfigError {
    /// An error of `key` in `source_name`.
    pub fn key(source_name: impl Into<String>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source_name: source_name.into(),
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

/// A service's settings: deserialized from the layered table, then validated.
pub trait Settings: DeserializeOwned {
    /// Environment variables that override a key: (variable, dotted key).
    const ENV: &'static [(&'static str, &'static str)];

    /// Check the loaded settings; the error names the key (its source is filled in by [`load`]).
    fn validate(&self) -> Result<(), ConfigError>;
}

/// A scalar given as text (environment, flag): an integer, float or boolean when it reads as
/// one, else a string.
fn scalar(text: &str) -> toml::Value {
    if let Ok(i) = text.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = text.parse::<f64>()
        && text.contains('.')
    {
        return toml::Value::Float(f);
    }
    match text {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(text.to_owned()),
    }
}

/// Set `dotted` (e.g. `tls.ca`) in `table` to `value`, creating tables on the way.
fn set(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let mut keys = dotted.split('.').peekable();
    let mut at = table;
    while let Some(key) = keys.next() {
        if keys.peek().is_none() {
            at.insert(key.to_owned(), value);
            return;
        }
        let entry = at
            .entry(key.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else { return };
        at = next;
    }
}

/// Load settings from the TOML `text` (named `source_name`), then the environment (`env`
/// looks a variable up), then `flags` as (dotted key, value), then validate.
pub fn load<T: Settings>(
    text: &str,
    source_name: &str,
    env: impl Fn(&str) -> Option<String>,
    flags: &[(&str, String)],
) -> Result<T, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
        source_name: source_name.to_owned(),
        key: None,
        message: format!(
            "{}{}",
            e.message(),
            e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default()
        ),
    })?;
    // Where each overridden key's value came from, for errors.
    let mut origins: Vec<(String, String)> = Vec::new();
    for (variable, key) in T::ENV {
        if let Some(value) = env(variable) {
            set(&mut table, key, scalar(&value));
            origins.push(((*key).to_owned(), format!("environment variable {variable}")));
        }
    }
    for (key, value) in flags {
        set(&mut table, key, scalar(value));
        origins.push(((*key).to_owned(), format!("flag --{}", key.replace(['.', '_'], "-"))));
    }
    let origin_of = |key: &Option<String>| {
        key.as_ref()
            .and_then(|k| origins.iter().rev().find(|(o, _)| o == k))
            .map_or_else(|| source_name.to_owned(), |(_, from)| from.clone())
    };
    let settings = T::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError {
        source_name: source_name.to_owned(),
        key: None,
        message: e.message().to_owned(),
    })?;
    settings.validate().map_err(|e| ConfigError {
        source_name: origin_of(&e.key),
        ..e
    })?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        url: String,
        #[serde(default = "five")]
        heartbeat_s: u64,
        #[serde(default)]
        tls: Option<Tls>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Tls {
        ca: String,
    }

    fn five() -> u64 {
        5
    }

    impl Settings for Demo {
        const ENV: &'static [(&'static str, &'static str)] = &[("HRU_URL", "url"), ("HRU_TLS_CA", "tls.ca")];
        fn validate(&self) -> Result<(), ConfigError> {
            if self.heartbeat_s == 0 {
                return Err(ConfigError::key("", "heartbeat_s", "must be at least 1"));
            }
            Ok(())
        }
    }

    #[test]
    fn later_layers_win_and_defaults_fill_the_rest() {
        let env = |v: &str| (v == "HRU_URL").then(|| "nats://env:4222".to_owned());
        let d: Demo = load("url = \"nats://file:4222\"", "demo.toml", env, &[]).unwrap();
        assert_eq!((d.url.as_str(), d.heartbeat_s), ("nats://env:4222", 5));
        let flags = [("url", "nats://flag:4222".to_owned()), ("tls.ca", "ca.pem".to_owned())];
        let d: Demo = load("url = \"x\"", "demo.toml", env, &flags).unwrap();
        assert_eq!(d.url, "nats://flag:4222");
        assert_eq!(d.tls.unwrap().ca, "ca.pem");
    }

    #[test]
    fn errors_name_the_source_and_the_key() {
        let e = load::<Demo>("url = \"x\"\nheartbeat_s = 0", "demo.toml", |_| None, &[]).unwrap_err();
        assert_eq!(e.to_string(), "demo.toml: key `heartbeat_s`: must be at least 1");
        let e = load::<Demo>("url = \"x\"", "demo.toml", |_| None, &[("heartbeat_s", "0".into())]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flag --heartbeat-s: key `heartbeat_s`: must be at least 1"
        );
        let e = load::<Demo>("url = \"x\"\nbogus = 1", "demo.toml", |_| None, &[]).unwrap_err();
        assert!(e.to_string().starts_with("demo.toml: unknown field `bogus`"), "{e}");
        let e = load::<Demo>("url = ", "demo.toml", |_| None, &[]).unwrap_err();
        assert!(e.to_string().starts_with("demo.toml: "), "{e}");
    }
}
