//! Reads the parsed TOML document into the serde mirror (`file.rs`) without stopping at the
//! first mistake: every value of the wrong type, required key missing and unknown key is found,
//! with its TOML path and byte span, and the rest of the file is still read.
//!
//! A serde `Deserializer` over toml's spanned document (`toml::de::DeValue`) knows, at each
//! value, its path and span and what type is asked for. A value of the wrong type is recorded
//! and a stand-in (`Placeholder`: `false`, `0`, `""`, empty, a table of stand-ins) is given
//! instead; an optional value of the wrong type is read as absent (`None`, on a second reading,
//! since the `Option` visitor has already been told `Some`). Unknown keys reach
//! `deserialize_ignored_any` from the derived struct visitors.
//! A required key only shows as a `missing_field` error of the derived visitor of its struct,
//! which cannot carry on after it: the struct learns that field is required, the document is
//! read again, and from then on every table of that struct without it gets a stand-in and an
//! error. An error raised by a value's own `Deserialize` (an enum's unknown variant, a custom
//! parser) is likewise recorded and the value replaced by a stand-in on the next reading. Each
//! reading adds a required field or replaced paths, so the readings are few: one, one more when
//! an optional value has the wrong type, one per distinct required field missing somewhere, one
//! per value whose own `Deserialize` failed.
//!
//! Nothing in `file.rs` has to cooperate: any field of a serde type (scalars, `Option`, `Vec`,
//! maps, derived structs, unit-variant enums, types with their own `Deserialize` such as
//! `IpNet`) gets this for free. Not supported there: `#[serde(flatten)]` (its keys would not be
//! checked), `toml::Spanned` fields (positions come from the path anyway) and enums carrying
//! data (only strings name a variant).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use toml::de::DeValue;
use toml::Spanned;

/// A mistake found while reading the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// TOML path (`route[2].strip_prefix`); empty for the document.
    pub path: String,
    /// Byte span of the value, of the unknown key, or of the table missing a key.
    pub span: Range<usize>,
    pub message: String,
}

/// Reads `T` from `root`. Returns the value when one could be built (with stand-ins wherever a
/// mistake was found, so that the caller can still check the rest) and every mistake found.
/// `None` only when a stand-in could not be built (a type this reader cannot stand in for);
/// the mistakes are then never empty.
pub fn read<T: DeserializeOwned>(root: &Spanned<DeValue<'_>>) -> (Option<T>, Vec<Found>) {
    let mut learned = BTreeSet::new();
    let mut replaced: BTreeMap<String, Found> = BTreeMap::new();
    loop {
        let pass = Pass {
            learned: RefCell::new(learned),
            replaced: replaced.keys().cloned().collect(),
            found: RefCell::new(Vec::new()),
            replace_next: RefCell::new(Vec::new()),
        };
        let result = T::deserialize(Value::root(root, &pass));
        learned = pass.learned.into_inner();
        let mut found = pass.found.into_inner();
        let replace_next = pass.replace_next.into_inner();
        let fatal = match result {
            Ok(_) if replace_next.iter().any(|f| !replaced.contains_key(&f.path)) => {
                replaced.extend(replace_next.into_iter().map(|f| (f.path.clone(), f)));
                continue;
            }
            Ok(v) => {
                found.extend(replaced.into_values());
                return (Some(v), found);
            }
            Err(Error::Learned) => continue,
            Err(Error::Located(f)) if !f.path.is_empty() && !replaced.contains_key(&f.path) => {
                replaced.insert(f.path.clone(), f);
                continue;
            }
            Err(Error::Located(f)) => Some(f),
            Err(Error::Unbuildable) => None,
            Err(e @ (Error::Missing(_) | Error::Message(_))) => Some(Found {
                path: String::new(),
                span: root.span(),
                message: e.to_string(),
            }),
        };
        found.extend(replaced.into_values());
        found.extend(fatal);
        if found.is_empty() {
            found.push(Found {
                path: String::new(),
                span: root.span(),
                message: "the file could not be read".into(),
            });
        }
        return (None, found);
    }
}

/// The start of every value of the document by TOML path (tables: their header).
pub fn starts(root: &Spanned<DeValue<'_>>) -> HashMap<String, usize> {
    fn walk(path: String, v: &Spanned<DeValue<'_>>, out: &mut HashMap<String, usize>) {
        match v.get_ref() {
            DeValue::Table(t) => {
                for (k, child) in t.iter() {
                    walk(join(&path, k.get_ref()), child, out);
                }
            }
            DeValue::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    walk(format!("{path}[{i}]"), child, out);
                }
            }
            _ => {}
        }
        if !path.is_empty() {
            out.insert(path, v.span().start);
        }
    }
    let mut out = HashMap::new();
    walk(String::new(), root, &mut out);
    out
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// One reading of the document.
struct Pass {
    /// (struct name, field) pairs known to be required (the serde names of the structs read are
    /// unique: `file.rs` names them `…File`).
    learned: RefCell<BTreeSet<(&'static str, &'static str)>>,
    /// Paths read as stand-ins: optional values of the wrong type (a stand-in for an optional
    /// value is its absence) and values whose own `Deserialize` failed.
    replaced: BTreeSet<String>,
    found: RefCell<Vec<Found>>,
    /// Optional values of the wrong type found in this reading, to be replaced in the next.
    replace_next: RefCell<Vec<Found>>,
}

impl Pass {
    fn found(&self, path: String, span: Range<usize>, message: String) {
        self.found.borrow_mut().push(Found {
            path,
            span,
            message,
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    /// A derived struct visitor's `missing_field`: caught by the struct that asked.
    #[error("required key {0} missing")]
    Missing(&'static str),
    /// A struct learned a required field: the document is read again.
    #[error("a required key was learned")]
    Learned,
    /// A stand-in value was refused by its type.
    #[error("no stand-in value can be built")]
    Unbuildable,
    /// A value's own `Deserialize` failed; placed by the value it came from.
    #[error("{0}")]
    Message(String),
    #[error("{}: {}", .0.path, .0.message)]
    Located(Found),
}

impl de::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error::Message(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Error::Missing(field)
    }
}

/// What a `deserialize_*` call asks for.
#[derive(Clone, Copy)]
enum Want {
    Bool,
    Int {
        min: i128,
        max: i128,
    },
    Float,
    Str,
    Option,
    Newtype,
    Seq,
    Map,
    Struct {
        name: &'static str,
        fields: &'static [&'static str],
    },
    Enum {
        variants: &'static [&'static str],
    },
    IgnoredAny,
    Any,
}

impl Want {
    fn int<T: Into<i128>>(min: T, max: T) -> Want {
        Want::Int {
            min: min.into(),
            max: max.into(),
        }
    }

    /// What the operator should have written.
    fn expected(self) -> String {
        match self {
            Want::Bool => "a boolean (true or false)".into(),
            Want::Int { min: 0, max } if max >= i128::from(u64::MAX) => {
                "a whole number (0 or more)".into()
            }
            Want::Int { min: 0, max } => format!("a whole number from 0 to {max}"),
            Want::Int { min, max }
                if min <= i128::from(i64::MIN) && max >= i128::from(i64::MAX) =>
            {
                "an integer".into()
            }
            Want::Int { min, max } => format!("an integer from {min} to {max}"),
            Want::Float => "a number".into(),
            Want::Str | Want::Enum { .. } => "a string".into(),
            Want::Seq => "an array".into(),
            Want::Map | Want::Struct { .. } => "a table".into(),
            Want::Option | Want::Newtype | Want::IgnoredAny | Want::Any => "a value".into(),
        }
    }
}

/// The found value, for a message. Its content is shown only where no string was expected, so
/// that a secret (always a string) is never echoed.
fn describe(v: &DeValue<'_>, want: Want) -> String {
    let show = !matches!(want, Want::Str | Want::Enum { .. });
    match v {
        DeValue::String(s) if show => {
            let mut short: String = s.chars().take(60).collect();
            if short.len() < s.len() {
                short.push('…');
            }
            format!("the string {short:?}")
        }
        DeValue::String(_) => "a string".into(),
        DeValue::Integer(i) if show => format!("the integer {i}"),
        DeValue::Integer(_) => "an integer".into(),
        DeValue::Float(f) if show => format!("the number {f}"),
        DeValue::Float(_) => "a number".into(),
        DeValue::Boolean(b) if show => format!("the boolean {b}"),
        DeValue::Boolean(_) => "a boolean".into(),
        DeValue::Datetime(d) if show => format!("the date-time {d}"),
        DeValue::Datetime(_) => "a date-time".into(),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

fn integer(i: &toml::de::DeInteger<'_>) -> Option<i128> {
    i128::from_str_radix(i.as_str(), i.radix()).ok()
}

/// Both deserializers answer every `deserialize_*` through `read(Want, visitor)`.
macro_rules! deserialize_through_read {
    () => {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Any, v)
        }
        fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Bool, v)
        }
        fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::int(i8::MIN, i8::MAX), v)
        }
        fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::int(i16::MIN, i16::MAX), v)
        }
        fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::int(i32::MIN, i32::MAX), v)
        }
        fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::int(i64::MIN, i64::MAX), v)
        }
        fn deserialize_i128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::int(i128::from(i64::MIN), i128::from(u64::MAX)), v)
        }
        fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::int(u8::MIN, u8::MAX), v)
        }
        fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::int(u16::MIN, u16::MAX), v)
        }
        fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::int(u32::MIN, u32::MAX), v)
        }
        fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::int(u64::MIN, u64::MAX), v)
        }
        fn deserialize_u128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::int(0, u64::MAX), v)
        }
        fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Float, v)
        }
        fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Float, v)
        }
        fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Str, v)
        }
        fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Str, v)
        }
        fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Str, v)
        }
        fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Any, v)
        }
        fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Any, v)
        }
        fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Option, v)
        }
        fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Any, v)
        }
        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            v: V,
        ) -> Result<V::Value, Error> {
            self.read(Want::Any, v)
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            v: V,
        ) -> Result<V::Value, Error> {
            self.read(Want::Newtype, v)
        }
        fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Seq, v)
        }
        fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
            self.read(Want::Seq, v)
        }
        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _len: usize,
            v: V,
        ) -> Result<V::Value, Error> {
            self.read(Want::Seq, v)
        }
        fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Map, v)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Error> {
            self.read(Want::Struct { name, fields }, v)
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Error> {
            self.read(Want::Enum { variants }, v)
        }
        fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::Str, v)
        }
        fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.read(Want::IgnoredAny, v)
        }
    };
}

/// A value of the document at its path.
struct Value<'a, 'i> {
    v: &'a Spanned<DeValue<'i>>,
    path: String,
    /// The key's span when this value is a struct's entry: an unknown key is reported there.
    key: Option<Range<usize>>,
    /// The value of an `Option`: when of the wrong type it is read as absent (next reading).
    optional: bool,
    pass: &'a Pass,
}

impl<'a, 'i> Value<'a, 'i> {
    fn root(v: &'a Spanned<DeValue<'i>>, pass: &'a Pass) -> Self {
        Value {
            v,
            path: String::new(),
            key: None,
            optional: false,
            pass,
        }
    }

    fn read<'de, V: Visitor<'de>>(self, want: Want, visitor: V) -> Result<V::Value, Error> {
        let (path, span) = (self.path.clone(), self.v.span());
        self.read_here(want, visitor).map_err(|e| match e {
            Error::Message(message) => Error::Located(Found {
                path,
                span,
                message,
            }),
            e => e,
        })
    }

    fn read_here<'de, V: Visitor<'de>>(self, want: Want, visitor: V) -> Result<V::Value, Error> {
        match (want, self.v.get_ref()) {
            (Want::Option, _) => visitor.visit_some(Value {
                optional: true,
                ..self
            }),
            (Want::Newtype, _) => visitor.visit_newtype_struct(self),
            (Want::IgnoredAny, _) => {
                if let Some(key) = self.key {
                    let message = "unknown key (see docs/configuration.md)".to_string();
                    self.pass.found(self.path, key, message);
                }
                visitor.visit_unit()
            }
            (Want::Any, DeValue::String(s)) => visitor.visit_str(s),
            (Want::Any, DeValue::Integer(i)) => match integer(i) {
                Some(n) if n < i128::from(i64::MIN) || n > i128::from(u64::MAX) => {
                    self.wrong(want, None, visitor)
                }
                Some(n) if n < 0 => visitor.visit_i64(n as i64),
                Some(n) => visitor.visit_u64(n as u64),
                None => self.wrong(want, None, visitor),
            },
            (Want::Any, DeValue::Float(f)) => match f.as_str().parse() {
                Ok(x) => visitor.visit_f64(x),
                Err(_) => self.wrong(want, None, visitor),
            },
            (Want::Any, DeValue::Boolean(b)) => visitor.visit_bool(*b),
            (Want::Any, DeValue::Datetime(d)) => visitor.visit_str(&d.to_string()),
            (Want::Any | Want::Seq, DeValue::Array(a)) => visitor.visit_seq(Items {
                items: a.iter().enumerate(),
                parent: &self.path,
                pass: self.pass,
            }),
            (Want::Any | Want::Map, DeValue::Table(t)) => {
                let entries = t
                    .iter()
                    .map(|(k, v)| (k.get_ref().as_ref(), k.span(), Some(v)));
                visitor.visit_map(Entries::new(
                    entries.collect(),
                    &self.path,
                    false,
                    self.pass,
                ))
            }
            (Want::Bool, DeValue::Boolean(b)) => visitor.visit_bool(*b),
            (Want::Int { min, max }, DeValue::Integer(i)) => match integer(i) {
                Some(n) if n < min || n > max => self.wrong(want, Some(n.to_string()), visitor),
                Some(n) if n < 0 => visitor.visit_i64(n as i64),
                Some(n) => visitor.visit_u64(n as u64),
                None => self.wrong(want, Some(i.to_string()), visitor),
            },
            (Want::Float, DeValue::Float(f)) => match f.as_str().parse() {
                Ok(x) => visitor.visit_f64(x),
                Err(_) => self.wrong(want, None, visitor),
            },
            (Want::Float, DeValue::Integer(i)) => match integer(i) {
                Some(n) => visitor.visit_f64(n as f64),
                None => self.wrong(want, None, visitor),
            },
            (Want::Str, DeValue::String(s)) => visitor.visit_str(s),
            (Want::Enum { .. }, DeValue::String(s)) => {
                visitor.visit_enum(IntoDeserializer::<Error>::into_deserializer(s.as_ref()))
            }
            (Want::Struct { name, fields }, DeValue::Table(t)) => {
                let mut entries: Vec<_> = t
                    .iter()
                    .map(|(k, v)| (k.get_ref().as_ref(), k.span(), Some(v)))
                    .collect();
                let missing: Vec<&'static str> = {
                    let learned = self.pass.learned.borrow();
                    let required = |f: &&&str| learned.contains(&(name, **f));
                    fields.iter().filter(required).copied().collect()
                };
                for field in missing.into_iter().filter(|f| t.get(*f).is_none()) {
                    let message = "required key missing from this table".to_string();
                    self.pass
                        .found(join(&self.path, field), self.v.span(), message);
                    entries.push((field, self.v.span(), None));
                }
                let access = Entries::new(entries, &self.path, true, self.pass);
                match visitor.visit_map(access) {
                    Err(Error::Missing(field)) => {
                        if self.pass.learned.borrow_mut().insert((name, field)) {
                            Err(Error::Learned)
                        } else {
                            Err(Error::Message(format!("required key {field} missing")))
                        }
                    }
                    r => r,
                }
            }
            (want, _) => self.wrong(want, None, visitor),
        }
    }

    /// Records a value of the wrong type (`found`: how to show it, when not by its type) and
    /// answers a stand-in. An optional value is read as absent instead, from the next reading
    /// on: a stand-in such as `Some("")` could set off checks of its own elsewhere.
    fn wrong<'de, V: Visitor<'de>>(
        self,
        want: Want,
        found: Option<String>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let found = found.unwrap_or_else(|| describe(self.v.get_ref(), want));
        let message = format!("expected {}, found {found}", want.expected());
        if self.optional {
            self.pass.replace_next.borrow_mut().push(Found {
                path: self.path,
                span: self.v.span(),
                message,
            });
        } else {
            self.pass.found(self.path, self.v.span(), message);
        }
        Placeholder.read(want, visitor)
    }
}

impl<'de> de::Deserializer<'de> for Value<'_, '_> {
    deserialize_through_read!();
}

/// Stands in for a value that is missing or wrong: the zero of what is asked for.
struct Placeholder;

impl Placeholder {
    fn read<'de, V: Visitor<'de>>(self, want: Want, visitor: V) -> Result<V::Value, Error> {
        match want {
            Want::Bool => visitor.visit_bool(false),
            Want::Int { .. } => visitor.visit_u64(0),
            Want::Float => visitor.visit_f64(0.0),
            Want::Str => visitor.visit_str(""),
            Want::Option => visitor.visit_none(),
            Want::Newtype => visitor.visit_newtype_struct(Placeholder),
            Want::Seq => visitor.visit_seq(NoItems),
            Want::Map => visitor.visit_map(Stand::new(&[])),
            Want::Struct { fields, .. } => visitor.visit_map(Stand::new(fields)),
            Want::Enum { variants } => match variants.first() {
                Some(v) => visitor.visit_enum(IntoDeserializer::<Error>::into_deserializer(*v)),
                None => Err(Error::Unbuildable),
            },
            Want::IgnoredAny | Want::Any => visitor.visit_unit(),
        }
        .map_err(|_| Error::Unbuildable)
    }
}

impl<'de> de::Deserializer<'de> for Placeholder {
    deserialize_through_read!();
}

/// A table's entries: `(key, key span, value)`; no value: a required key missing.
type Entry<'a, 'i> = (&'a str, Range<usize>, Option<&'a Spanned<DeValue<'i>>>);

struct Entries<'a, 'i> {
    entries: std::vec::IntoIter<Entry<'a, 'i>>,
    next: Option<Entry<'a, 'i>>,
    parent: &'a str,
    /// A struct's entries (unknown keys are reported), not a map's.
    of_struct: bool,
    pass: &'a Pass,
}

impl<'a, 'i> Entries<'a, 'i> {
    fn new(entries: Vec<Entry<'a, 'i>>, parent: &'a str, of_struct: bool, pass: &'a Pass) -> Self {
        Entries {
            entries: entries.into_iter(),
            next: None,
            parent,
            of_struct,
            pass,
        }
    }
}

impl<'de> de::MapAccess<'de> for Entries<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        let (key, span) = (entry.0, entry.1.clone());
        self.next = Some(entry);
        seed.deserialize(IntoDeserializer::<Error>::into_deserializer(key))
            .map(Some)
            .map_err(|e| match e {
                Error::Message(message) => Error::Located(Found {
                    path: join(self.parent, key),
                    span,
                    message,
                }),
                e => e,
            })
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let (key, key_span, value) = self.next.take().ok_or(Error::Unbuildable)?;
        let path = join(self.parent, key);
        match value {
            Some(v) if !self.pass.replaced.contains(&path) => seed.deserialize(Value {
                v,
                path,
                key: self.of_struct.then_some(key_span),
                optional: false,
                pass: self.pass,
            }),
            _ => seed.deserialize(Placeholder),
        }
    }
}

/// An array's items.
struct Items<'a, 'i> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Spanned<DeValue<'i>>>>,
    parent: &'a str,
    pass: &'a Pass,
}

impl<'de> de::SeqAccess<'de> for Items<'_, '_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        let Some((i, v)) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{i}]", self.parent);
        if self.pass.replaced.contains(&path) {
            return seed.deserialize(Placeholder).map(Some);
        }
        seed.deserialize(Value {
            v,
            path,
            key: None,
            optional: false,
            pass: self.pass,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// A stand-in table: every field a stand-in.
struct Stand {
    fields: std::slice::Iter<'static, &'static str>,
}

impl Stand {
    fn new(fields: &'static [&'static str]) -> Stand {
        Stand {
            fields: fields.iter(),
        }
    }
}

impl<'de> de::MapAccess<'de> for Stand {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.fields.next() {
            Some(f) => seed
                .deserialize(IntoDeserializer::<Error>::into_deserializer(*f))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        seed.deserialize(Placeholder)
    }
}

/// A stand-in array: empty.
struct NoItems;

impl<'de> de::SeqAccess<'de> for NoItems {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        _seed: S,
    ) -> Result<Option<S::Value>, Error> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        #[serde(default, rename = "item")]
        items: Vec<Item>,
        mode: Option<Mode>,
        net: Option<ipnet::IpNet>,
        #[serde(default)]
        pair: (u8, u8),
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        name: String,
        size: u16,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        id: String,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Fast,
        Safe,
    }

    fn read_doc(text: &str) -> (Option<Doc>, Vec<(String, String)>) {
        let doc = toml::de::DeTable::parse(text).unwrap();
        let root = Spanned::new(doc.span(), DeValue::Table(doc.into_inner()));
        let (v, found) = read::<Doc>(&root);
        let mut found: Vec<(String, String)> =
            found.into_iter().map(|f| (f.path, f.message)).collect();
        found.sort();
        (v, found)
    }

    #[test]
    fn required_keys_missing_in_many_tables_of_several_types_are_all_found() {
        let (doc, found) = read_doc(
            "[[item]]\nsize = 1\n[[item]]\nname = \"b\"\n[item.inner]\nx = 1\n[[item]]\n[item.inner]\nid = \"c\"\n",
        );
        let missing = "required key missing from this table";
        let unknown = "unknown key (see docs/configuration.md)";
        let want: Vec<(String, String)> = [
            ("item[0].name", missing),
            ("item[1].inner.id", missing),
            ("item[1].inner.x", unknown),
            ("item[1].size", missing),
            ("item[2].name", missing),
            ("item[2].size", missing),
        ]
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
        assert_eq!(found, want);
        // Stand-ins where the keys are missing, the rest as written.
        let doc = doc.unwrap();
        assert_eq!(doc.items.len(), 3);
        assert_eq!((doc.items[0].name.as_str(), doc.items[0].size), ("", 1));
        assert_eq!(doc.items[2].inner.as_ref().unwrap().id, "c");
    }

    #[test]
    fn errors_of_a_values_own_deserialize_are_found_and_the_value_read_as_absent() {
        let (doc, found) = read_doc(
            "mode = \"turbo\"\nnet = \"10.0.0.0/33\"\n[[item]]\nname = \"a\"\nsize = 70000\n",
        );
        assert_eq!(
            found,
            [
                (
                    "item[0].size".to_string(),
                    "expected a whole number from 0 to 65535, found 70000".to_string()
                ),
                (
                    "mode".into(),
                    "unknown variant `turbo`, expected `fast` or `safe`".into()
                ),
                ("net".into(), "invalid IP address syntax".into()),
            ]
        );
        let doc = doc.unwrap();
        assert_eq!((doc.mode, doc.net), (None, None));
        let (doc, found) = read_doc("mode = \"safe\"\n");
        assert_eq!((doc.unwrap().mode, found), (Some(Mode::Safe), Vec::new()));
    }

    #[test]
    fn a_value_no_stand_in_can_be_built_for_still_reports_what_was_found() {
        // A (required) pair needs exactly two items: an empty stand-in is refused by its type.
        let (doc, found) = read_doc("pair = [1]\n");
        assert!(doc.is_none());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "pair");
        let (doc, found) = read_doc("pair = [1, 2]\n");
        assert_eq!((doc.unwrap().pair, found), ((1, 2), Vec::new()));
    }
}
