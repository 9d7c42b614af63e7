//! Python's `str` methods, from CPython's own Unicode tables (`unicode_tables.rs`).
//!
//! Each function gives what the reference computes, or None where the core does not reproduce
//! Python (a code point Python's Unicode does not know, a final sigma): the row then goes back to
//! the reference.

use std::borrow::Cow;

use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::UnicodeNormalization;

use crate::unicode_tables as tables;

fn within(ranges: &[(u32, u32)], ch: char) -> bool {
    let code = ch as u32;
    ranges
        .binary_search_by(|&(start, end)| {
            if end < code {
                std::cmp::Ordering::Less
            } else if start > code {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

pub fn is_alpha(ch: char) -> bool {
    if ch.is_ascii() {
        return ch.is_ascii_alphabetic();
    }
    within(tables::ALPHA, ch)
}

pub fn is_alnum(ch: char) -> bool {
    if ch.is_ascii() {
        return ch.is_ascii_alphanumeric();
    }
    within(tables::ALPHA, ch) || within(tables::NUMERIC, ch)
}

pub fn is_printable(ch: char) -> bool {
    within(tables::PRINTABLE, ch)
}

pub fn is_trimmed(ch: char) -> bool {
    within(tables::TRIMMED, ch)
}

fn is_space(ch: char) -> bool {
    within(tables::SPACE, ch)
}

/// Neither end can be stripped: an ASCII character that is neither whitespace nor a separator.
fn ends_kept(text: &str) -> bool {
    let bytes = text.as_bytes();
    let kept = |b: u8| b > b' ' && b < 0x7f;
    !bytes.is_empty() && kept(bytes[0]) && kept(bytes[bytes.len() - 1])
}

/// `text.strip(TRIMMED)`.
pub fn strip_trimmed(text: &str) -> &str {
    if ends_kept(text) {
        return text;
    }
    text.trim_matches(is_trimmed)
}

/// `text.strip()`.
pub fn strip_space(text: &str) -> &str {
    if ends_kept(text) {
        return text;
    }
    text.trim_matches(is_space)
}

pub fn is_space_char(ch: char) -> bool {
    is_space(ch)
}

/// Every code point is one Python's Unicode assigns: normalization is then the same in both.
fn known(text: &str) -> bool {
    text.chars()
        .all(|ch| ch.is_ascii() || within(tables::ASSIGNED, ch))
}

/// `unicodedata.normalize("NFKC", text)`.
pub fn nfkc(text: &str) -> Option<Cow<'_, str>> {
    if text.is_ascii() {
        return Some(Cow::Borrowed(text));
    }
    known(text).then(|| Cow::Owned(text.nfkc().collect()))
}

/// `unicodedata.normalize("NFC", text)`.
pub fn nfc(text: &str) -> Option<Cow<'_, str>> {
    if text.is_ascii() {
        return Some(Cow::Borrowed(text));
    }
    known(text).then(|| Cow::Owned(text.nfc().collect()))
}

/// `str.lower()`; None for a capital sigma, whose lowercase depends on its neighbours.
pub fn lower(text: &str) -> Option<Cow<'_, str>> {
    if text.is_ascii() {
        return Some(if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        });
    }
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch == '\u{3A3}' {
            return None;
        }
        if ch.is_ascii() {
            out.push(ch.to_ascii_lowercase());
            continue;
        }
        match tables::LOWER.binary_search_by_key(&(ch as u32), |&(code, _)| code) {
            Ok(found) => out.push_str(tables::LOWER[found].1),
            Err(_) => out.push(ch),
        }
    }
    Some(Cow::Owned(out))
}

/// The reference's `_text`: NFKC-folded (text outside ASCII) and trimmed.
pub fn text(value: &str) -> Option<Cow<'_, str>> {
    Some(match nfkc(value)? {
        Cow::Borrowed(borrowed) => Cow::Borrowed(strip_trimmed(borrowed)),
        Cow::Owned(owned) => Cow::Owned(strip_trimmed(&owned).to_owned()),
    })
}

/// The reference's `_opaque_text`: NFC and trimmed.
pub fn opaque_text(value: &str) -> Option<Cow<'_, str>> {
    Some(match nfc(value)? {
        Cow::Borrowed(borrowed) => Cow::Borrowed(strip_trimmed(borrowed)),
        Cow::Owned(owned) => Cow::Owned(strip_trimmed(&owned).to_owned()),
    })
}

/// The reference's `_ascii_digits`: decimal digits of any script as ASCII digits.
pub fn ascii_digits(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|ch| {
                let code = ch as u32;
                let zero = tables::DECIMAL_ZEROS.partition_point(|&z| z <= code);
                match zero.checked_sub(1).map(|i| tables::DECIMAL_ZEROS[i]) {
                    Some(zero) if code - zero < 10 => char::from(b'0' + (code - zero) as u8),
                    _ => ch,
                }
            })
            .collect(),
    )
}

/// The reference's `_letters`: lowercase letters, with the marks that follow a letter.
pub fn letters(text: &str) -> Option<String> {
    let lowered = lower(text)?;
    if lowered.is_ascii() {
        return Some(
            lowered
                .bytes()
                .filter(u8::is_ascii_alphabetic)
                .map(char::from)
                .collect(),
        );
    }
    let mut kept = String::with_capacity(lowered.len());
    let mut after_letter = false;
    for ch in lowered.chars() {
        if is_alpha(ch) {
            kept.push(ch);
            after_letter = true;
        } else if after_letter && within(tables::MARK, ch) && !within(tables::NOT_LETTER_MARKS, ch)
        {
            kept.push(ch);
        } else {
            after_letter = false;
        }
    }
    Some(kept)
}

/// The reference's `fold_accents`: NFKD without combining marks.
pub fn fold_accents(text: &str) -> Option<Cow<'_, str>> {
    if text.is_ascii() {
        return Some(Cow::Borrowed(text));
    }
    known(text).then(|| {
        Cow::Owned(
            text.nfkd()
                .filter(|&ch| canonical_combining_class(ch) == 0)
                .collect(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_strips_what_rust_trim_keeps() {
        assert_eq!(strip_trimmed("\u{1c}A\u{200b}\u{feff}"), "A");
        assert_eq!(strip_space("\u{1f}A\u{85}"), "A");
        assert_eq!(strip_space("\u{200b}A"), "\u{200b}A"); // not whitespace to str.strip()
    }

    #[test]
    fn lower_and_letters_follow_python() {
        assert_eq!(lower("İ").as_deref(), Some("i\u{307}"));
        assert_eq!(lower("ΑΣ"), None);
        assert_eq!(letters("Valéry").as_deref(), Some("valéry"));
        assert_eq!(letters("राम").as_deref(), Some("राम"));
        assert_eq!(letters("Jo❤\u{fe0f}hn").as_deref(), Some("john"));
    }

    #[test]
    fn normalization_and_digits() {
        assert_eq!(text(" Ｊｏｈｎ\u{a0}").as_deref(), Some("John"));
        assert_eq!(ascii_digits("١٢٣").as_ref(), "123");
        assert_eq!(fold_accents("québec").as_deref(), Some("quebec"));
        assert_eq!(nfkc("\u{378}"), None); // unassigned in Python's Unicode
    }
}
