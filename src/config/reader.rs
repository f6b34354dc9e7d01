//! A key-path-aware reader over a parsed YAML tree.
//!
//! serde's derive stops at the first problem; an operator fixing a config file wants every
//! problem at once, each naming where it is. So the schema is read by hand through this
//! reader, which records each problem with its key path and keeps going.

use std::fmt;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

/// One problem in a config file, located by key path (`routes[1].upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl ConfigErrors {
    /// `FILE: N problem(s):` and one indented line per problem, as `-t` and a refused reload
    /// print them.
    pub fn report(&self, file: &std::path::Path) -> String {
        let mut out = format!("{}: {} problem(s):", file.display(), self.0.len());
        for issue in &self.0 {
            out.push_str("\n  ");
            out.push_str(&issue.to_string());
        }
        out
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Joins a key onto a path: `server` + `listen` = `server.listen`.
pub fn key_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Joins a list index onto a path: `routes` + 1 = `routes[1]`.
pub fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Collects issues while the schema is read.
#[derive(Default)]
pub struct Reader {
    issues: Vec<ConfigIssue>,
}

impl Reader {
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.issues))
        }
    }

    pub fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.issues)
    }

    /// Reads a mapping and reports every key not in `known`.
    pub fn table<'v>(&mut self, path: &str, value: &'v Value, known: &[&str]) -> Option<Table<'v>> {
        let Value::Mapping(map) = value else {
            self.error(path, format!("expected a mapping, found {}", kind(value)));
            return None;
        };
        for key in map.keys() {
            match key.as_str() {
                Some(k) if known.contains(&k) => {}
                Some(k) => self.error(&key_path(path, k), "unknown key"),
                None => self.error(path, format!("keys must be strings, found {}", kind(key))),
            }
        }
        Some(Table { map })
    }

    /// Reads a mapping whose keys are user-chosen names (like `upstreams`).
    pub fn named_table<'v>(&mut self, path: &str, value: &'v Value) -> Vec<(String, &'v Value)> {
        let Value::Mapping(map) = value else {
            self.error(path, format!("expected a mapping, found {}", kind(value)));
            return Vec::new();
        };
        let mut out = Vec::with_capacity(map.len());
        for (key, v) in map {
            match key.as_str() {
                Some(k) => out.push((k.to_string(), v)),
                None => self.error(path, format!("keys must be strings, found {}", kind(key))),
            }
        }
        out
    }

    pub fn list<'v>(&mut self, path: &str, value: &'v Value) -> &'v [Value] {
        match value {
            Value::Sequence(seq) => seq,
            _ => {
                self.error(path, format!("expected a list, found {}", kind(value)));
                &[]
            }
        }
    }

    pub fn string(&mut self, path: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.error(path, format!("expected a string, found {}", kind(value)));
                None
            }
        }
    }

    /// One of a few names, each standing for a value; absent or invalid gives `default`.
    /// `noun` names the kind of thing in the message: `unknown policy "x" (a, b or c)`.
    pub fn choice<T: Copy>(
        &mut self,
        path: &str,
        value: Option<&Value>,
        noun: &str,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(value) = value else { return default };
        let Some(text) = self.string(path, value) else {
            return default;
        };
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return *v;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let list = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        };
        self.error(path, format!("unknown {noun} \"{text}\" ({list})"));
        default
    }

    pub fn boolean(&mut self, path: &str, value: &Value) -> Option<bool> {
        match value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.error(
                    path,
                    format!("expected true or false, found {}", kind(value)),
                );
                None
            }
        }
    }

    /// A whole number within `min..=max`.
    pub fn integer(&mut self, path: &str, value: &Value, min: u64, max: u64) -> Option<u64> {
        match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.error(path, format!("{n} is out of range ({min} to {max})"));
                None
            }
            None => {
                self.error(
                    path,
                    format!("expected a whole number, found {}", kind(value)),
                );
                None
            }
        }
    }

    /// A positive duration written as a string: "250ms", "2s", "5m", "1h".
    pub fn duration(&mut self, path: &str, value: &Value) -> Option<Duration> {
        let Value::String(text) = value else {
            self.error(
                path,
                format!(
                    "expected a duration string like \"250ms\" or \"2s\", found {}",
                    kind(value)
                ),
            );
            return None;
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() => {
                self.error(path, "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(_) => {
                self.error(
                    path,
                    format!("invalid duration \"{text}\" (use a number and a unit: \"250ms\", \"2s\", \"5m\", \"1h\")"),
                );
                None
            }
        }
    }
}

/// A mapping being read; keys are looked up by name.
pub struct Table<'v> {
    map: &'v Mapping,
}

impl<'v> Table<'v> {
    pub fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
}

/// What a YAML value is, for messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
