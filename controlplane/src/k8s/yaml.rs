//! A read-only walk over one parsed YAML document that always knows where it is.
//!
//! Objects are built by hand from [`serde_yaml_ng::Value`] rather than by `serde` derive, because
//! a refusal must name the exact field (`spec.rules[0].from[0].source.ipBlocks[1]`), which a
//! derived deserializer fed from a `Value` cannot do, and because the security kinds must refuse
//! unknown fields (a misspelt `principal:` would otherwise silently widen a policy) while the core
//! kinds must ignore the many fields we do not model.
//!
//! A `null` value counts as absent everywhere, as it does for the Kubernetes API server.

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml_ng::{Mapping, Value};

use super::error::{FieldError, Problem};

/// A place in a document, e.g. `spec.rules[0].from[0].source.ipBlocks[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// The document itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// The path as text; empty for the document itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The member `name` of this mapping. Names that are not plain identifiers (label keys such
    /// as `istio.io/dry-run`) are written in brackets so the path stays unambiguous.
    pub(crate) fn field(&self, name: &str) -> Self {
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let mut path = self.0.clone();
        if plain {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(name);
        } else {
            path.push_str(&format!("[{name:?}]"));
        }
        Self(path)
    }

    /// The element `index` of this sequence.
    pub(crate) fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// An error at this place.
    pub(crate) fn error(&self, problem: Problem) -> FieldError {
        FieldError {
            path: self.clone(),
            problem,
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(document)")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// One value of the document and its place.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    value: &'a Value,
    path: FieldPath,
}

/// The YAML type of a value, for "expected X, found Y" messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// What a `null` mapping reads as.
static EMPTY_MAPPING: std::sync::LazyLock<Mapping> = std::sync::LazyLock::new(Mapping::new);

impl<'a> Cursor<'a> {
    pub(crate) fn new(value: &'a Value, path: FieldPath) -> Self {
        Self { value, path }
    }

    pub(crate) fn path(&self) -> &FieldPath {
        &self.path
    }

    fn wrong_type(&self, expected: &'static str) -> FieldError {
        self.path.error(Problem::WrongType {
            expected,
            found: type_name(self.value),
        })
    }

    /// The value as a mapping; `null` reads as an empty one.
    pub(crate) fn mapping(&self) -> Result<Fields<'a>, FieldError> {
        match self.value {
            Value::Mapping(map) => Ok(Fields {
                map,
                path: self.path.clone(),
            }),
            Value::Null => Ok(Fields {
                map: &EMPTY_MAPPING,
                path: self.path.clone(),
            }),
            _ => Err(self.wrong_type("a mapping")),
        }
    }

    /// The value as a string (YAML numbers and booleans are not strings, as for the API server).
    pub(crate) fn str(&self) -> Result<&'a str, FieldError> {
        match self.value {
            Value::String(text) => Ok(text),
            _ => Err(self.wrong_type("a string")),
        }
    }

    /// A string that must not be empty.
    pub(crate) fn non_empty_str(&self) -> Result<&'a str, FieldError> {
        let text = self.str()?;
        if text.is_empty() {
            return Err(self.path.error(Problem::Empty));
        }
        Ok(text)
    }

    pub(crate) fn bool(&self) -> Result<bool, FieldError> {
        match self.value {
            Value::Bool(flag) => Ok(*flag),
            _ => Err(self.wrong_type("a boolean")),
        }
    }

    /// A port number (integer 0-65535).
    pub(crate) fn port(&self) -> Result<u16, FieldError> {
        match self.value {
            Value::Number(number) => number
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| self.path.error(Problem::NotPort(number.to_string()))),
            _ => Err(self.wrong_type("an integer")),
        }
    }

    /// Whether the value is a string (for fields that take a number or a name).
    pub(crate) fn is_str(&self) -> bool {
        self.value.is_string()
    }

    /// The elements of a list, each with its place.
    pub(crate) fn list(&self) -> Result<Vec<Cursor<'a>>, FieldError> {
        match self.value {
            Value::Sequence(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(index, item)| Cursor::new(item, self.path.index(index)))
                .collect()),
            _ => Err(self.wrong_type("a list")),
        }
    }

    /// A list of non-empty strings.
    pub(crate) fn strings(&self) -> Result<Vec<String>, FieldError> {
        self.list()?
            .iter()
            .map(|item| item.non_empty_str().map(str::to_owned))
            .collect()
    }

    /// A mapping of string keys to string values (labels, annotations, selectors).
    pub(crate) fn string_map(&self) -> Result<BTreeMap<String, String>, FieldError> {
        let mut out = BTreeMap::new();
        for (key, value) in self.mapping()?.entries()? {
            if key.is_empty() {
                return Err(value.path.error(Problem::Empty));
            }
            out.insert(key, value.str()?.to_owned());
        }
        Ok(out)
    }
}

/// A mapping and its place.
#[derive(Debug, Clone)]
pub(crate) struct Fields<'a> {
    map: &'a Mapping,
    path: FieldPath,
}

impl<'a> Fields<'a> {
    /// An empty mapping at `path`, for an optional section that is absent.
    pub(crate) fn empty(path: FieldPath) -> Self {
        Self {
            map: &EMPTY_MAPPING,
            path,
        }
    }

    pub(crate) fn path(&self) -> &FieldPath {
        &self.path
    }

    /// The member `key`, unless absent or `null`.
    pub(crate) fn get(&self, key: &str) -> Option<Cursor<'a>> {
        self.map
            .get(key)
            .filter(|value| !value.is_null())
            .map(|value| Cursor::new(value, self.path.field(key)))
    }

    /// Whether `key` is present (and not `null`).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Refuses any key not in `known`: used by the kinds whose unknown fields could change what
    /// an object means.
    pub(crate) fn deny_unknown(&self, known: &[&str]) -> Result<(), FieldError> {
        for (key, value) in self.entries()? {
            if !known.contains(&key.as_str()) {
                return Err(value.path.error(Problem::UnknownField));
            }
        }
        Ok(())
    }

    /// Every entry as (key text, value). Integer keys (`portLevelMtls: {9090: ...}`) are given as
    /// their decimal text; other non-string keys are refused.
    pub(crate) fn entries(&self) -> Result<Vec<(String, Cursor<'a>)>, FieldError> {
        self.map
            .iter()
            .map(|(key, value)| {
                let text = match key {
                    Value::String(text) => text.clone(),
                    Value::Number(number) if number.is_u64() => number.to_string(),
                    other => {
                        return Err(self.path.error(Problem::WrongType {
                            expected: "string keys",
                            found: type_name(other),
                        }));
                    }
                };
                let cursor = Cursor::new(value, self.path.field(&text));
                Ok((text, cursor))
            })
            .collect()
    }

    /// Applies `read` to the member `key` if present.
    pub(crate) fn with<T>(
        &self,
        key: &str,
        read: impl FnOnce(&Cursor<'a>) -> Result<T, FieldError>,
    ) -> Result<Option<T>, FieldError> {
        self.get(key).map(|cursor| read(&cursor)).transpose()
    }

    /// Applies `read` to the member `key`, which must be present.
    pub(crate) fn require<T>(
        &self,
        key: &str,
        read: impl FnOnce(&Cursor<'a>) -> Result<T, FieldError>,
    ) -> Result<T, FieldError> {
        self.with(key, read)?
            .ok_or_else(|| self.path.field(key).error(Problem::Missing))
    }

    /// An optional string member.
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<String>, FieldError> {
        self.with(key, |c| c.str().map(str::to_owned))
    }

    /// An optional member that must be a non-empty string when present.
    pub(crate) fn opt_name(&self, key: &str) -> Result<Option<String>, FieldError> {
        self.with(key, |c| c.non_empty_str().map(str::to_owned))
    }

    /// An optional boolean member, `false` when absent.
    pub(crate) fn flag(&self, key: &str) -> Result<bool, FieldError> {
        Ok(self.with(key, Cursor::bool)?.unwrap_or(false))
    }

    /// An optional list of non-empty strings, empty when absent.
    pub(crate) fn strings(&self, key: &str) -> Result<Vec<String>, FieldError> {
        Ok(self.with(key, Cursor::strings)?.unwrap_or_default())
    }

    /// An optional string map, empty when absent.
    pub(crate) fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, FieldError> {
        Ok(self.with(key, Cursor::string_map)?.unwrap_or_default())
    }

    /// An optional list, each element read by `read`; `None` when absent, so callers can tell
    /// an explicit empty list from a missing one.
    pub(crate) fn opt_list<T>(
        &self,
        key: &str,
        read: impl Fn(&Cursor<'a>) -> Result<T, FieldError>,
    ) -> Result<Option<Vec<T>>, FieldError> {
        self.with(key, |c| c.list()?.iter().map(&read).collect())
    }

    /// An optional list, empty when absent.
    pub(crate) fn list<T>(
        &self,
        key: &str,
        read: impl Fn(&Cursor<'a>) -> Result<T, FieldError>,
    ) -> Result<Vec<T>, FieldError> {
        Ok(self.opt_list(key, read)?.unwrap_or_default())
    }
}
