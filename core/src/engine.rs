//! One record batch through the plan: each row becomes an event (JSON bytes), or goes back to
//! the Python reference, which words every rejection and dropped value itself.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::json;
use crate::nested::Found;
use crate::normalize::{self, is_sha256_hex, python_str};
use crate::plan::{Consent, Constant, CustomType, Plan, Rule, Source, UrlRedaction, UserField};
use crate::text;
use crate::value::{Column, PathColumn, Val};

/// A path's values in one batch: read through STRUCT fields, or walked in each row's JSON text.
pub enum PathValues {
    Struct(PathColumn),
    Json(Vec<Found>),
}

/// What became of one row.
pub struct RowOut {
    /// Where the event's JSON lies in its part's `bytes`, or None: the reference maps this row.
    pub event: Option<Range<usize>>,
    /// The primary key as one string, where the core can write it as Python would.
    pub row_key: Option<String>,
    /// Bit i: the event carries the plan's i-th customer-information key (`Plan::user_order`).
    pub shape: u64,
    /// The event's name, as an index into its part's `names`.
    pub name: u32,
}

pub struct Batch<'a> {
    pub columns: Vec<Option<Column>>,
    /// `PlanSpec::paths`, resolved in this batch; None where one cannot be read.
    pub paths: Vec<Option<PathValues>>,
    /// Rows whose JSON text only the reference reads (a path ends on an object, say).
    pub declined: Vec<bool>,
    pub plan: &'a Plan,
    pub now: f64,
}

/// A run of consecutive rows built by one task: their events back to back in one buffer, so a
/// row costs no allocation of its own.
pub struct Part {
    pub bytes: Vec<u8>,
    pub rows: Vec<RowOut>,
    /// The event names this part's events carry, each once.
    pub names: Vec<String>,
}

/// Buffers a task reuses from row to row.
#[derive(Default)]
struct Scratch<'p> {
    /// Custom-data fields in the order the event carries them, their JSON in `custom_bytes`.
    custom: Vec<(&'p str, Range<usize>)>,
    custom_bytes: Vec<u8>,
    /// The name of the event last written.
    name: String,
}

const MAX_ROW_KEY_CHARS: usize = 300;
const MIN_ROWS_PER_TASK: usize = 256;
const EVENT_BYTES_GUESS: usize = 1400;

impl<'p> Batch<'p> {
    /// Every row, in order, as parts built on all of rayon's threads.
    pub fn build(&self, rows: usize) -> Vec<Part> {
        if self.paths.iter().any(Option::is_none) {
            // a path this batch's types do not carry: every row is the reference's
            let rows = (0..rows)
                .map(|_| RowOut {
                    event: None,
                    row_key: None,
                    shape: 0,
                    name: 0,
                })
                .collect();
            return vec![Part {
                bytes: Vec::new(),
                rows,
                names: Vec::new(),
            }];
        }
        // About four parts per thread, so that a slow part does not leave a core idle.
        let per_task = rows
            .div_ceil(rayon::current_num_threads() * 4)
            .max(MIN_ROWS_PER_TASK);
        let starts: Vec<usize> = (0..rows).step_by(per_task).collect();
        starts
            .into_par_iter()
            .map(|start| self.part(start..(start + per_task).min(rows)))
            .collect()
    }

    fn part(&self, rows: Range<usize>) -> Part {
        let mut bytes = Vec::with_capacity(rows.len() * EVENT_BYTES_GUESS);
        let mut scratch = Scratch::default();
        let mut names: Vec<String> = Vec::new();
        let mut name_ids: HashMap<String, u32> = HashMap::new();
        let outcomes = rows
            .map(|row| {
                if self.declined.get(row).copied().unwrap_or(false) {
                    return RowOut {
                        event: None,
                        row_key: None,
                        shape: 0,
                        name: 0,
                    };
                }
                let row_key = self.row_key(row);
                let start = bytes.len();
                let shape = row_key
                    .as_deref()
                    .and_then(|key| self.event(row, key, &mut bytes, &mut scratch));
                let mut name = 0;
                if shape.is_none() {
                    bytes.truncate(start);
                } else if let Some(id) = name_ids.get(scratch.name.as_str()) {
                    name = *id;
                } else {
                    name = u32::try_from(names.len()).unwrap_or(u32::MAX);
                    names.push(scratch.name.clone());
                    name_ids.insert(scratch.name.clone(), name);
                }
                RowOut {
                    event: shape.map(|_| start..bytes.len()),
                    row_key,
                    shape: shape.unwrap_or(0),
                    name,
                }
            })
            .collect();
        Part {
            bytes,
            rows: outcomes,
            names,
        }
    }

    fn get<'s>(&'s self, source: &'s Source, row: usize) -> Val<'s>
    where
        'p: 's,
    {
        match source {
            Source::Column { column } => match self.columns.get(*column) {
                Some(Some(column)) => column.get(row),
                _ => Val::Null,
            },
            Source::Path { path } => match self.paths.get(*path) {
                Some(Some(PathValues::Struct(column))) => column.get(row),
                Some(Some(PathValues::Json(values))) => values[row].as_val(),
                _ => Val::Null, // unreachable: `build` hands back a batch with an unreadable path
            },
            Source::Constant { constant } => constant_val(constant),
            Source::AllOf { .. } => Val::Unreadable, // a list: read by customer information only
            Source::FirstOf { first_of } => first_of
                .iter()
                .map(|source| self.get(source, row))
                .find(present)
                .unwrap_or(Val::Null),
            Source::Lookup {
                lookup,
                values,
                default,
            } => match self.get(lookup, row) {
                Val::Null => constant_val(default),
                Val::Unreadable => Val::Unreadable,
                value => match python_str(&value) {
                    Some(key) => {
                        constant_val(values.get(text::strip_space(&key)).unwrap_or(default))
                    }
                    None => Val::Unreadable,
                },
            },
        }
    }

    /// `_join_key`: the key's values as `str()` writes them, `|`-joined; None where the core
    /// cannot write one (a float, a date) or the row is the reference's to reject (a NULL).
    fn row_key(&self, row: usize) -> Option<String> {
        let mut key = String::new();
        for (position, column) in self.plan.spec.key_columns.iter().enumerate() {
            if position > 0 {
                key.push('|');
            }
            match self.get(&Source::Column { column: *column }, row) {
                Val::Str(text) => key.push_str(text),
                Val::Int(number) => key.push_str(&number.to_string()),
                Val::Bool(flag) => key.push_str(if flag { "True" } else { "False" }),
                _ => return None,
            }
        }
        (key.chars().count() <= MAX_ROW_KEY_CHARS).then_some(key)
    }

    /// `mapper._consented`, for text listing categories; any other row (a JSON array, a row
    /// without the category, which the reference skips and counts) is handed back.
    fn consented(&self, consent: &Consent, row: usize) -> bool {
        let Val::Str(granted) = self.get(&consent.source, row) else {
            return false;
        };
        if granted
            .trim_start_matches(text::is_space_char)
            .starts_with('[')
        {
            return false;
        }
        granted
            .split(',')
            .any(|item| text::strip_space(item) == consent.category)
    }

    /// The row's event appended to `out`, and its shape; None hands the row back (the caller
    /// drops whatever was appended).
    fn event(
        &self,
        row: usize,
        row_key: &str,
        out: &mut Vec<u8>,
        scratch: &mut Scratch<'p>,
    ) -> Option<u64> {
        let spec = &self.plan.spec;
        if let Some(consent) = &spec.consent {
            if !self.consented(consent, row) {
                return None;
            }
        }
        // server event
        let name = text_value(&self.get(&spec.event_name, row))?;
        if name.is_empty() {
            return None;
        }
        let name = if spec.renames.is_empty() {
            name
        } else {
            match spec.renames.get(&name_key(&name)?) {
                Some(renamed) => Cow::Owned(renamed.clone()),
                None => name,
            }
        };
        let event_time = unix_seconds(&self.get(&spec.event_time, row), spec.utc)?;
        scratch.name.clear();
        scratch.name.push_str(&name);
        out.extend_from_slice(b"{\"event_name\":");
        json::write_str(out, &name);
        out.extend_from_slice(b",\"event_time\":");
        json::write_int(out, event_time.into());
        out.extend_from_slice(b",\"event_id\":");
        let given = match &spec.event_id {
            Some(source) => match self.get(source, row) {
                Val::Null => Cow::Borrowed(""),
                value => text_value(&value)?,
            },
            None => Cow::Borrowed(""),
        };
        if given.is_empty() {
            write_derived_event_id(out, &spec.pipeline, row_key);
        } else {
            json::write_str(out, &given);
        }
        let action_source: Cow<'_, str> =
            match spec.action_source.as_ref().map(|s| self.get(s, row)) {
                Some(Val::Null) | None => Cow::Borrowed(spec.default_action_source.as_deref()?),
                Some(value) => Cow::Owned(text::lower(&text_value(&value)?)?.into_owned()),
            };
        if !spec
            .action_sources
            .iter()
            .any(|known| *known == action_source)
        {
            return None;
        }
        out.extend_from_slice(b",\"action_source\":");
        json::write_str(out, &action_source);
        let mut source_url = None;
        for (field, source) in &spec.urls {
            let value = self.get(source, row);
            if value == Val::Null {
                continue;
            }
            let text = text_value(&value)?;
            if text.is_empty() {
                continue;
            }
            if field == "event_source_url" {
                source_url = Some(text.clone());
            }
            out.extend_from_slice(b",\"");
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(b"\":");
            if spec.url_redaction != UrlRedaction::None
                && (field == "event_source_url" || field == "referrer_url")
            {
                let redacted = redact(&text, spec.url_redaction, &spec.redacted_path)?;
                json::write_str(out, &redacted);
            } else {
                json::write_str(out, &text);
            }
        }
        for field in &spec.server_typed {
            let value = self.get(&field.source, row);
            if value == Val::Null || matches!(value, Val::Str(text) if blank(text)?) {
                continue;
            }
            out.extend_from_slice(b",\"");
            out.extend_from_slice(field.key.as_bytes());
            out.extend_from_slice(b"\":");
            custom_value(self.plan, field.kind, &value, out)?;
        }
        // customer information
        out.extend_from_slice(b",\"user_data\":{");
        let mut shape = 0_u64;
        let mut first = true;
        let mut country: Option<String> = None;
        let fields = spec.country.iter().chain(spec.user.iter());
        for (index, field) in fields.enumerate() {
            if let Source::AllOf { all_of } = &field.source {
                // every present value, each normalized and hashed: a JSON array of them
                let mut sent = Vec::new();
                for source in all_of {
                    let value = self.get(source, row);
                    if present(&value) {
                        if let Some((_, one)) =
                            user_value(self.plan, field, &value, country.as_deref())?
                        {
                            sent.push(one);
                        }
                    }
                }
                if sent.is_empty() {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                json::write_str(out, &field.key);
                out.extend_from_slice(b":[");
                for (position, one) in sent.iter().enumerate() {
                    if position > 0 {
                        out.push(b',');
                    }
                    match one {
                        Sent::Text(text) => json::write_str(out, text),
                        Sent::Digest(digest) => json::write_hex_str(out, digest),
                    }
                }
                out.push(b']');
                shape |= 1 << index;
                continue;
            }
            let value = self.get(&field.source, row);
            let Some((plain, sent)) = user_value(self.plan, field, &value, country.as_deref())?
            else {
                continue; // absent or blank
            };
            if index == 0 && spec.country.is_some() {
                country = plain;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            json::write_str(out, &field.key);
            out.push(b':');
            match &sent {
                Sent::Text(text) => json::write_str(out, text),
                Sent::Digest(digest) => json::write_hex_str(out, digest),
            }
            shape |= 1 << index;
        }
        out.push(b'}');
        // custom data
        let Scratch {
            custom,
            custom_bytes,
            ..
        } = scratch;
        custom.clear();
        custom_bytes.clear();
        for field in &spec.custom {
            let value = self.get(&field.source, row);
            if value == Val::Null || matches!(value, Val::Str(text) if blank(text)?) {
                continue;
            }
            let start = custom_bytes.len();
            custom_value(self.plan, field.kind, &value, custom_bytes)?;
            set(custom, &field.key, start..custom_bytes.len());
        }
        for property in &spec.properties {
            let value = self.get(&property.source, row);
            if value != Val::Null {
                let start = custom_bytes.len();
                json_value(&value, custom_bytes)?;
                set(custom, &property.key, start..custom_bytes.len());
            }
        }
        if !custom.is_empty() {
            out.extend_from_slice(b",\"custom_data\":{");
            for (position, (key, value)) in custom.iter().enumerate() {
                if position > 0 {
                    out.push(b',');
                }
                json::write_str(out, key);
                out.push(b':');
                out.extend_from_slice(&custom_bytes[value.clone()]);
            }
            out.push(b'}');
        }
        out.push(b'}');
        // what `validate_event` and the fbclid rule would say: any problem is the reference's
        if spec.fbc_from_fbclid
            && shape & self.plan.fbc_bit == 0
            && source_url.as_deref().is_some_and(|u| u.contains("fbclid="))
        {
            return None;
        }
        let age = self.now - event_time as f64;
        let max_age = if action_source == "physical_store" {
            spec.max_age_seconds_physical_store
        } else {
            spec.max_age_seconds
        };
        if (age > spec.max_age_seconds as f64 && age > max_age as f64)
            || -age > spec.max_future_seconds as f64
        {
            return None;
        }
        match action_source.as_ref() {
            "website" if source_url.is_none() || shape & self.plan.user_agent_bit == 0 => {
                return None
            }
            "app" => return None, // app_data is the reference's
            _ => {}
        }
        if shape == 0 || !self.strong_enough(shape) {
            return None;
        }
        if name == "Purchase"
            && !(custom.iter().any(|(k, _)| *k == "value")
                && custom.iter().any(|(k, _)| *k == "currency"))
        {
            return None;
        }
        Some(shape)
    }

    /// The matching floor of `validate._match_floor`, on the keys the event carries.
    fn strong_enough(&self, shape: u64) -> bool {
        if shape & self.plan.strong_mask != 0 {
            return true;
        }
        if self.plan.weak_masks.iter().any(|weak| shape & !weak == 0) {
            return false;
        }
        !self.plan.spec.strong_key_required
    }
}

/// `urls.redact` for the URLs `urlsplit` reads plainly: printable ASCII without spaces, a scheme,
/// `//` and a host without brackets. Any other URL is handed back to the reference.
fn redact(url: &str, mode: UrlRedaction, redacted_path: &str) -> Option<String> {
    if !url.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return None;
    }
    let (scheme, rest) = url.split_once(':')?;
    let mut chars = scheme.chars();
    if !chars.next()?.is_ascii_alphabetic()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let after = rest.strip_prefix("//")?;
    let host_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (host, tail) = after.split_at(host_end);
    if host.is_empty() || host.contains(['[', ']']) {
        return None;
    }
    let path = match mode {
        UrlRedaction::Path => redacted_path,
        _ => &tail[..tail.find(['?', '#']).unwrap_or(tail.len())],
    };
    Some(format!("{}://{host}{path}", scheme.to_ascii_lowercase()))
}

fn constant_val(constant: &Constant) -> Val<'_> {
    match constant {
        Constant::Null(()) => Val::Null,
        Constant::Bool(flag) => Val::Bool(*flag),
        Constant::Int(number) => Val::Int((*number).into()),
        Constant::Float(number) => Val::Float(*number),
        Constant::Str(text) => Val::Str(text),
    }
}

/// `sources._present`: not NULL and not blank (Python's whitespace) text.
fn present(value: &Val<'_>) -> bool {
    match value {
        Val::Null => false,
        Val::Str(text) => !text::strip_space(text).is_empty(),
        _ => true,
    }
}

/// Replace in place (a Python dict keeps a key's first position), else append.
fn set<'p>(custom: &mut Vec<(&'p str, Range<usize>)>, key: &'p str, value: Range<usize>) {
    match custom.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => custom.push((key, value)),
    }
}

/// Blank as the reference's `_is_empty` says: nothing but `TRIMMED` characters.
fn blank(value: &str) -> Option<bool> {
    Some(text::strip_trimmed(value).is_empty())
}

/// `values.to_text` where the core writes exactly what Python writes.
fn text_value<'a>(value: &Val<'a>) -> Option<Cow<'a, str>> {
    match python_str(value)? {
        Cow::Borrowed(found) => Some(Cow::Borrowed(text::strip_space(found))),
        Cow::Owned(found) => Some(Cow::Owned(text::strip_space(&found).to_owned())),
    }
}

/// `events.name_key`: lowercase, without whitespace, `_` or `-`.
fn name_key(name: &str) -> Option<String> {
    let kept: String = name
        .chars()
        .filter(|c| !text::is_space_char(*c) && *c != '_' && *c != '-')
        .collect();
    Some(text::lower(&kept)?.into_owned())
}

pub fn derive_event_id(pipeline: &str, row_key: &str) -> String {
    hex(&event_id_digest(pipeline, row_key))[..32].to_owned()
}

fn event_id_digest(pipeline: &str, row_key: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"capi-sync\x1f")
        .chain_update(pipeline.as_bytes())
        .chain_update(b"\x1f")
        .chain_update(row_key.as_bytes())
        .finalize()
        .into()
}

/// `derive_event_id`'s 32 hex digits as a JSON string, straight into `out`.
fn write_derived_event_id(out: &mut Vec<u8>, pipeline: &str, row_key: &str) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for byte in &event_id_digest(pipeline, row_key)[..16] {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 15)]);
    }
    out.push(b'"');
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[(byte >> 4) as usize] as char);
        text.push(DIGITS[(byte & 15) as usize] as char);
    }
    text
}

/// `values.unix_seconds`; None for what only the reference reads (ISO text, naive values outside
/// UTC) or rejects.
fn unix_seconds(value: &Val<'_>, utc: bool) -> Option<i64> {
    let number = match *value {
        Val::Ts { micros, aware } => {
            if !aware && !utc {
                return None;
            }
            return Some((micros as f64 / 1e6).trunc() as i64);
        }
        Val::Date(days) => return utc.then_some(i64::from(days) * 86_400),
        Val::Int(number) => number as f64,
        Val::Float(number) => number,
        Val::Dec { .. } => decimal_to_float(value)?,
        Val::Str(raw) => {
            let text = text::strip_space(raw);
            let unsigned = text.trim_start_matches('-');
            let one_point = unsigned.replacen('.', "", 1);
            if !text.is_ascii()
                || one_point.is_empty()
                || !one_point.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            text.parse::<f64>().ok()?
        }
        Val::Null | Val::Bool(_) | Val::Unreadable => return None,
    };
    if !number.is_finite() {
        return None;
    }
    let seconds = if number.abs() >= 100_000_000_000.0 {
        number / 1000.0
    } else {
        number
    };
    let seconds = seconds.trunc();
    (seconds.abs() < 9.0e18).then_some(seconds as i64)
}

fn decimal_to_float(value: &Val<'_>) -> Option<f64> {
    match *value {
        Val::Dec { value, scale } => format!("{value}e{}", -i32::from(scale)).parse().ok(),
        _ => None,
    }
}

/// What a customer-information key sends.
enum Sent {
    Text(String),
    Digest([u8; 32]),
}

/// (plain value, what is sent), None when absent or blank; the outer None hands the row back.
#[allow(clippy::option_option)]
fn user_value(
    plan: &Plan,
    field: &UserField,
    value: &Val<'_>,
    country: Option<&str>,
) -> Option<Option<(Option<String>, Sent)>> {
    if *value == Val::Null {
        return Some(None);
    }
    if field.rule == Rule::Pushed {
        return match value {
            Val::Str(text) if !text.starts_with('!') => {
                Some(Some((None, Sent::Text((*text).to_owned()))))
            }
            _ => None,
        };
    }
    if let Val::Str(text) = value {
        if blank(text)? {
            return Some(None);
        }
        let stripped = text::strip_trimmed(text);
        if field.hashed && is_sha256_hex(stripped) {
            return Some(Some((None, Sent::Text(stripped.to_ascii_lowercase()))));
        }
    }
    if field.hashed && !plan.spec.hashing_required {
        return None; // not SHA-256 hex where only hex may come: the reference rejects the row
    }
    let normalized = normalize::normalize(plan, field.rule, value, country)?;
    if field.hashed {
        let digest: [u8; 32] = Sha256::digest(normalized.as_bytes()).into();
        // only the country's plain value is read again (by the keys after it)
        let plain = (field.rule == Rule::Country).then_some(normalized);
        return Some(Some((plain, Sent::Digest(digest))));
    }
    Some(Some((Some(normalized.clone()), Sent::Text(normalized))))
}

/// A custom-data field's JSON, converted as `mapper._CUSTOM_CONVERTERS` converts it.
fn custom_value(plan: &Plan, kind: CustomType, value: &Val<'_>, out: &mut Vec<u8>) -> Option<()> {
    match kind {
        CustomType::Float => json::write_float(out, to_float(value)?),
        CustomType::Int => {
            let number = match *value {
                Val::Int(number) => number,
                _ => {
                    let number = to_float(value)?;
                    if number.fract() != 0.0 || number.abs() > 1.8e19 {
                        return None;
                    }
                    number as i128
                }
            };
            if !(i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(&number) {
                return None;
            }
            json::write_int(out, number);
        }
        CustomType::Str => json::write_str(out, &text_value(value)?),
        CustomType::Currency => {
            let code = text_value(value)?;
            if !code.is_ascii() {
                return None; // Python's str.upper is not the core's
            }
            let code = code.to_ascii_uppercase();
            if code.len() != 3 || !plan.spec.currencies.contains(code.as_str()) {
                return None;
            }
            json::write_str(out, &code);
        }
        CustomType::ContentType | CustomType::DeliveryCategory => {
            let text = text::lower(&text_value(value)?)?.into_owned();
            let allowed = if kind == CustomType::ContentType {
                &plan.spec.content_types
            } else {
                &plan.spec.delivery_categories
            };
            if !allowed.contains(text.as_str()) {
                return None;
            }
            json::write_str(out, &text);
        }
        CustomType::StrList => {
            let items: Vec<Cow<'_, str>> = match value {
                Val::Str(_) => {
                    let joined = text_value(value)?;
                    if joined.starts_with('[') {
                        return None; // a JSON array: the reference parses it
                    }
                    joined
                        .split(',')
                        .map(text::strip_space)
                        .filter(|p| !p.is_empty())
                        .map(|p| Cow::Owned(p.to_owned()))
                        .collect()
                }
                _ => vec![text_value(value)?],
            };
            out.push(b'[');
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    out.push(b',');
                }
                json::write_str(out, item);
            }
            out.push(b']');
        }
        CustomType::Contents => contents(plan, value, out)?,
        CustomType::Bool => {
            let flag = match *value {
                Val::Bool(flag) => flag,
                _ => match text::lower(&text_value(value)?)?.as_ref() {
                    "1" | "true" | "t" | "yes" | "y" => true,
                    "0" | "false" | "f" | "no" | "n" => false,
                    _ => return None,
                },
            };
            out.extend_from_slice(if flag { b"true" } else { b"false" });
        }
        CustomType::Json => json_value(value, out)?,
    }
    Some(())
}

/// The fields of a `contents` item the reference reads (null reads as absent, as `dict.get` does;
/// a key written twice fails to parse and the row goes to the reference).
#[derive(serde::Deserialize)]
struct ContentItem {
    id: Option<serde_json::Value>,
    quantity: Option<serde_json::Value>,
    item_price: Option<serde_json::Value>,
    delivery_category: Option<serde_json::Value>,
}

/// `mapper._contents` on a JSON array of objects; any other shape is the reference's to reject.
fn contents(plan: &Plan, value: &Val<'_>, out: &mut Vec<u8>) -> Option<()> {
    let Val::Str(raw) = value else { return None };
    let raw = text::strip_space(raw);
    if !raw.starts_with('[') {
        return None;
    }
    let items: Vec<ContentItem> = serde_json::from_str(raw).ok()?;
    out.push(b'[');
    for (position, item) in items.iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        match item.id.as_ref()? {
            serde_json::Value::String(id) => json::write_str(out, id),
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                json::write_str(out, &n.to_string())
            }
            serde_json::Value::Bool(flag) => {
                json::write_str(out, if *flag { "True" } else { "False" })
            }
            _ => return None,
        }
        if let Some(quantity) = item.quantity.as_ref() {
            out.extend_from_slice(b",\"quantity\":");
            json::write_int(out, json_int(quantity)?);
        }
        if let Some(price) = item.item_price.as_ref() {
            out.extend_from_slice(b",\"item_price\":");
            json::write_float(out, json_float(price)?);
        }
        if let Some(category) = item.delivery_category.as_ref() {
            let serde_json::Value::String(category) = category else {
                return None;
            };
            let category = text::lower(text::strip_space(category))?.into_owned();
            if !plan.spec.delivery_categories.contains(category.as_str()) {
                return None;
            }
            out.extend_from_slice(b",\"delivery_category\":");
            json::write_str(out, &category);
        }
        out.push(b'}');
    }
    out.push(b']');
    Some(())
}

/// `values.to_int` of a parsed JSON number (64 bits; an integral float counts).
fn json_int(value: &serde_json::Value) -> Option<i128> {
    let serde_json::Value::Number(number) = value else {
        return None;
    };
    if let Some(n) = number.as_i64() {
        return Some(n.into());
    }
    if let Some(n) = number.as_u64() {
        return Some(n.into());
    }
    let float = number.as_f64()?;
    (float.is_finite() && float.fract() == 0.0 && float.abs() < 9.0e18).then_some(float as i128)
}

/// `values.to_float` of a parsed JSON number.
fn json_float(value: &serde_json::Value) -> Option<f64> {
    let serde_json::Value::Number(number) = value else {
        return None;
    };
    if number.is_f64() {
        return number.as_f64().filter(|f| f.is_finite());
    }
    // an integer: Python's float(int) rounds to nearest, as `as f64` does
    number
        .as_i64()
        .map(|n| n as f64)
        .or_else(|| number.as_u64().map(|n| n as f64))
}

/// `values.to_float`: numbers only here (text goes to the reference); finite.
fn to_float(value: &Val<'_>) -> Option<f64> {
    let number = match *value {
        Val::Int(number) => number as f64,
        Val::Float(number) => number,
        Val::Dec { .. } => decimal_to_float(value)?,
        _ => return None,
    };
    number.is_finite().then_some(number)
}

/// `values.to_json` for a custom property.
fn json_value(value: &Val<'_>, out: &mut Vec<u8>) -> Option<()> {
    match *value {
        Val::Str(text) => json::write_str(out, text),
        Val::Int(number) => {
            if (i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(&number) {
                json::write_int(out, number);
            } else {
                json::write_str(out, &number.to_string());
            }
        }
        Val::Bool(flag) => out.extend_from_slice(if flag { b"true" } else { b"false" }),
        Val::Float(_) | Val::Dec { .. } => match to_float(value) {
            Some(number) => json::write_float(out, number),
            None if matches!(value, Val::Float(_)) => out.extend_from_slice(b"null"),
            None => return None,
        },
        Val::Date(days) => json::write_str(out, &normalize::iso_date(days.into())),
        Val::Ts { .. } | Val::Null | Val::Unreadable => return None,
    }
    Some(())
}

/// Each path of `PlanSpec::paths` in this batch: through STRUCT fields, or into JSON text (every
/// row's text parsed once, on every core, for all the paths into its column). Also the rows
/// whose JSON only the reference reads.
pub fn resolve_paths(
    columns: &[arrow_array::ArrayRef],
    paths: &[(usize, Vec<String>)],
    rows: usize,
) -> (Vec<Option<PathValues>>, Vec<bool>) {
    use arrow_array::cast::AsArray;
    use arrow_schema::DataType;

    let mut resolved: Vec<Option<PathValues>> = Vec::with_capacity(paths.len());
    let mut json_columns: Vec<(usize, Vec<usize>)> = Vec::new(); // column, its slots
    for (slot, (column, names)) in paths.iter().enumerate() {
        let Some(root) = columns.get(*column) else {
            resolved.push(None);
            continue;
        };
        match root.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                match json_columns.iter_mut().find(|(c, _)| c == column) {
                    Some((_, slots)) => slots.push(slot),
                    None => json_columns.push((*column, vec![slot])),
                }
                resolved.push(Some(PathValues::Json(Vec::new())));
            }
            _ => resolved.push(PathColumn::new(root, names).map(PathValues::Struct)),
        }
    }
    let mut declined = vec![false; rows];
    for (column, slots) in json_columns {
        let array = &columns[column];
        let cell = |row: usize| -> Option<&str> {
            if array.is_null(row) {
                return None;
            }
            Some(match array.data_type() {
                DataType::Utf8 => array.as_string::<i32>().value(row),
                DataType::LargeUtf8 => array.as_string::<i64>().value(row),
                _ => array.as_string_view().value(row),
            })
        };
        let wanted: Vec<&[String]> = slots.iter().map(|s| paths[*s].1.as_slice()).collect();
        let found: Vec<Option<Vec<Found>>> = (0..rows)
            .into_par_iter()
            .with_min_len(256)
            .map(|row| crate::nested::resolve(cell(row), &wanted))
            .collect();
        let mut values: Vec<Vec<Found>> = slots.iter().map(|_| Vec::with_capacity(rows)).collect();
        for (row, outcome) in found.into_iter().enumerate() {
            match outcome {
                Some(row_values) => {
                    for (index, value) in row_values.into_iter().enumerate() {
                        values[index].push(value);
                    }
                }
                None => {
                    declined[row] = true;
                    for column_values in &mut values {
                        column_values.push(Found::Null);
                    }
                }
            }
        }
        for (slot, column_values) in slots.into_iter().zip(values) {
            resolved[slot] = Some(PathValues::Json(column_values));
        }
    }
    (resolved, declined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_what_urlsplit_keeps() {
        let path = "/url-redacted-by-capi-sync";
        let query = |url| redact(url, UrlRedaction::Query, path);
        assert_eq!(
            query("HTTPS://Shop.example:8443/p/1?utm=x#top").as_deref(),
            Some("https://Shop.example:8443/p/1")
        );
        assert_eq!(
            query("https://a.example#x?y").as_deref(),
            Some("https://a.example")
        );
        assert_eq!(
            redact("https://a.example/p?q", UrlRedaction::Path, path).as_deref(),
            Some("https://a.example/url-redacted-by-capi-sync")
        );
        // what only the reference reads: no scheme, no host, brackets, spaces, non-ASCII
        for url in [
            "//a.example/x",
            "a.example/x",
            "https:///x",
            "https://[::1]/x",
            "https://a.example/p q",
            "https://a.example/é",
            "1https://a.example",
        ] {
            assert_eq!(query(url), None, "{url}");
        }
    }
}
