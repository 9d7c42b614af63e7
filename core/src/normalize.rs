//! The reference's normalization rules (`mappings/normalize.py`), with Python's text semantics.
//!
//! Every function returns the normalized value, or None when the value is outside what the core
//! decides alone: a value the rule drops (its problem is the reference's to word), a form only the
//! reference reads, text Python's Unicode does not know. The row then goes to the reference, whole.

use std::borrow::Cow;

use crate::plan::{CompiledNanp, Plan, Rule};
use crate::text;
use crate::value::{civil_from_days, days_from_civil, Val};

/// A value as Python's `str(value)` writes it, for the types where that is plain; None for types
/// whose text form the core does not reproduce (floats, decimals, timestamps).
pub fn python_str<'a>(value: &Val<'a>) -> Option<Cow<'a, str>> {
    match *value {
        Val::Str(text) => Some(Cow::Borrowed(text)),
        Val::Int(number) => Some(Cow::Owned(number.to_string())),
        Val::Bool(flag) => Some(Cow::Borrowed(if flag { "True" } else { "False" })),
        Val::Date(days) => Some(Cow::Owned(iso_date(days.into()))),
        _ => None,
    }
}

pub fn iso_date(days: i64) -> String {
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One customer-information value, normalized by `rule` (not yet hashed).
pub fn normalize(
    plan: &Plan,
    rule: Rule,
    value: &Val<'_>,
    country: Option<&str>,
) -> Option<String> {
    match (rule, value) {
        (Rule::Zip, Val::Int(number)) if (0..100_000).contains(number) => {
            return zip(&format!("{number:05}"), country);
        }
        (Rule::Zip, Val::Bool(_)) => return None, // Python formats a bool as the integer 1 or 0 there
        (Rule::BirthDate, Val::Date(days)) => return birth_date_of_days(plan, (*days).into()),
        (
            Rule::BirthDate,
            Val::Ts {
                micros,
                aware: false,
            },
        ) => {
            return birth_date_of_days(plan, micros.div_euclid(86_400_000_000));
        }
        (Rule::BirthDate, Val::Ts { .. } | Val::Dec { .. } | Val::Float(_)) => return None,
        (Rule::Phone, Val::Float(number)) if number.fract() == 0.0 && number.abs() < 1e15 => {
            return phone(plan, &format!("{}", *number as i64), country);
        }
        _ => {}
    }
    let raw = python_str(value)?;
    if matches!(rule, Rule::ExternalId | Rule::Plain | Rule::Pushed) {
        let opaque = text::opaque_text(&raw)?;
        let out = if rule == Rule::ExternalId {
            text::lower(&opaque)?.into_owned()
        } else {
            opaque.into_owned()
        };
        return (!out.is_empty()).then_some(out);
    }
    let text = text::text(&raw)?;
    match rule {
        Rule::Email => email(&text::lower(&text)?),
        Rule::Name | Rule::City => Some(text::letters(&text)?).filter(|l| !l.is_empty()),
        Rule::State => {
            let letters = text::letters(&text)?;
            if letters.is_empty() {
                return None;
            }
            let key = text::fold_accents(&letters)?;
            let table = plan.spec.subdivisions.get(country.unwrap_or(""));
            Some(
                table
                    .and_then(|t| t.get(key.as_ref()))
                    .cloned()
                    .unwrap_or(letters),
            )
        }
        Rule::Gender => match text::lower(&text)?.as_ref() {
            "m" | "male" | "man" => Some("m".into()),
            "f" | "female" | "woman" => Some("f".into()),
            _ => None,
        },
        Rule::BirthDate => birth_date(plan, &text::ascii_digits(&text)),
        Rule::Zip => zip(&text::ascii_digits(&text), country),
        Rule::Country => {
            let lowered = text::lower(&text)?;
            let key: String = text::fold_accents(&lowered)?
                .chars()
                .filter(|c| text::is_alnum(*c))
                .collect();
            plan.spec.countries.get(&key).cloned()
        }
        Rule::IpAddress => is_canonical_ipv4(&text).then(|| text.into_owned()),
        Rule::IntegerId => {
            let digits = text::ascii_digits(&text);
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.into_owned())
        }
        Rule::LeadId => {
            let digits = text::ascii_digits(&text);
            ((15..=16).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.into_owned())
        }
        Rule::Phone => phone(plan, &text::ascii_digits(&text), country),
        Rule::ExternalId | Rule::Plain | Rule::Pushed => unreachable!("handled above"),
    }
}

/// `text` is already trimmed and lowercased.
fn email(text: &str) -> Option<String> {
    let (local, domain) = text.rsplit_once('@')?;
    if local.is_empty() || local.contains('@') || !domain.trim_matches('.').contains('.') {
        return None;
    }
    if text.chars().any(|c| c == ' ' || !text::is_printable(c)) {
        return None;
    }
    Some(text.to_owned())
}

fn zip(text: &str, country: Option<&str>) -> Option<String> {
    let lowered = text::lower(text)?;
    let cleaned: String = lowered
        .chars()
        .filter(|c| *c != '-' && !text::is_trimmed(*c))
        .collect();
    if cleaned.is_empty() || !cleaned.chars().all(text::is_alnum) {
        return None;
    }
    if cleaned.bytes().all(|b| b.is_ascii_digit()) {
        let length = cleaned.len();
        if country == Some("us") {
            return Some(match length {
                5.. => cleaned[..5].to_owned(),
                3 | 4 => format!("{cleaned:0>5}"),
                _ => cleaned,
            });
        }
        if country.is_none() && (length == 5 || length == 9) {
            return Some(cleaned[..5].to_owned());
        }
    }
    Some(cleaned)
}

/// `YYYY-MM-DD` only, the shape warehouses export; every other form goes to the reference.
fn birth_date(plan: &Plan, text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = &text[range];
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let days = days_from_civil(year.into(), month, day)?;
    birth_date_of_days(plan, days)
}

fn birth_date_of_days(plan: &Plan, days: i64) -> Option<String> {
    let (year, month, day) = civil_from_days(days);
    (1900..=plan.spec.current_year)
        .contains(&year)
        .then(|| format!("{year:04}{month:02}{day:02}"))
}

fn is_canonical_ipv4(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && !(part.starts_with('0') && *part != "0")
                && part.parse::<u32>().is_ok_and(|n| n <= 255)
        })
}

/// North American numbers, the way the reference's fast paths read them; the rest is its own.
fn phone(plan: &Plan, text: &str, country: Option<&str>) -> Option<String> {
    if text.contains(['x', 'X', '#']) || text.contains("(0)") {
        return None; // an extension, or a trunk zero: the reference's regexes decide
    }
    let without_punctuation: String = text.chars().filter(|c| !" -().".contains(*c)).collect();
    let digits = without_punctuation.trim_start_matches('+');
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let international = text.starts_with('+') || digits.starts_with("00");
    let region = country
        .or(plan.spec.default_phone_region.as_deref())
        .filter(|r| !r.is_empty())
        .map(str::to_ascii_uppercase);
    match region {
        Some(region) if !international => {
            if region != "US" && region != "CA" || without_punctuation != digits {
                return None;
            }
            let national = if digits.len() == 11 && digits.starts_with('1') {
                &digits[1..]
            } else {
                digits
            };
            let shaped = national.len() == 10 && !national.starts_with(['0', '1']);
            (shaped && nanp_is_valid(&plan.nanp, national)).then(|| format!("1{national}"))
        }
        _ => {
            let significant = digits.trim_start_matches('0');
            let shaped = significant.len() == 11
                && significant.starts_with('1')
                && !significant[1..].starts_with(['0', '1']);
            (shaped && nanp_is_valid(&plan.nanp, &significant[1..])).then(|| significant.to_owned())
        }
    }
}

/// `phonenumbers.is_valid_number` for +1 and ten digits, from the library's own patterns.
pub fn nanp_is_valid(rules: &[CompiledNanp], national: &str) -> bool {
    let matches_all = |rule: &CompiledNanp| {
        rule.general.as_ref().is_some_and(|g| g.is_match(national))
            && rule.types.as_ref().is_some_and(|t| t.is_match(national))
    };
    for rule in rules {
        match &rule.leading {
            Some(leading) => {
                if leading.is_match(national) {
                    return matches_all(rule);
                }
            }
            None => {
                if matches_all(rule) {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let spec = r#"{
            "pipeline": "t", "key_columns": [0], "event_name": {"column": 1}, "event_time": {"column": 2},
            "event_id": null, "action_source": null, "default_action_source": "website", "urls": [],
            "renames": {}, "country": null, "user": [], "custom": [], "properties": [], "utc": true,
            "fbc_from_fbclid": true, "strong_key_required": false, "default_phone_region": "US",
            "current_year": 2026, "action_sources": ["website"], "strong_keys": ["em"],
            "weak_key_sets": [], "currencies": ["USD"], "content_types": [], "delivery_categories": [],
            "countries": {"unitedstates": "us", "us": "us"},
            "subdivisions": {"us": {"california": "ca"}, "": {"california": "ca"}},
            "nanp": [{"leading": null, "general": "[2-9]\\d{2}[2-9]\\d{6}", "types": "[2-9]\\d{2}[2-9]\\d{6}"}],
            "max_age_seconds": 604800, "max_age_seconds_physical_store": 5356800, "max_future_seconds": 60
        }"#;
        Plan::from_json(spec).expect("a valid plan")
    }

    fn norm(rule: Rule, text: &str, country: Option<&str>) -> Option<String> {
        normalize(&plan(), rule, &Val::Str(text), country)
    }

    #[test]
    fn emails_names_and_places() {
        assert_eq!(
            norm(Rule::Email, " John_Smith@Gmail.com ", None).as_deref(),
            Some("john_smith@gmail.com")
        );
        assert_eq!(norm(Rule::Email, "a b@c.de", None), None);
        assert_eq!(
            norm(Rule::Name, " Mary-Ann ", None).as_deref(),
            Some("maryann")
        );
        assert_eq!(norm(Rule::Name, "Élodie", None).as_deref(), Some("élodie"));
        assert_eq!(
            norm(Rule::State, "Califórnia", Some("us")).as_deref(),
            Some("ca")
        );
        assert_eq!(
            norm(Rule::Country, "United-States", None).as_deref(),
            Some("us")
        );
        assert_eq!(norm(Rule::Country, "Narnia", None), None);
    }

    #[test]
    fn zips_dates_and_phones() {
        assert_eq!(
            norm(Rule::Zip, "94035-1234", Some("us")).as_deref(),
            Some("94035")
        );
        assert_eq!(
            norm(Rule::Zip, "2134", Some("us")).as_deref(),
            Some("02134")
        );
        assert_eq!(
            normalize(&plan(), Rule::Zip, &Val::Int(2134), Some("us")).as_deref(),
            Some("02134")
        );
        assert_eq!(
            norm(Rule::BirthDate, "1990-12-31", None).as_deref(),
            Some("19901231")
        );
        assert_eq!(norm(Rule::BirthDate, "1990-02-30", None), None);
        assert_eq!(norm(Rule::BirthDate, "2099-01-01", None), None);
        assert_eq!(
            norm(Rule::Phone, "(650) 555-1212", None).as_deref(),
            Some("16505551212")
        );
        assert_eq!(
            norm(Rule::Phone, "+1 650 555 1212", Some("de")).as_deref(),
            Some("16505551212")
        );
        assert_eq!(norm(Rule::Phone, "555-0100", None), None);
        assert_eq!(norm(Rule::Phone, "650 555 1212 x12", None), None); // an extension: the reference's
    }
}
