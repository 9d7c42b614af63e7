//! JSON written byte for byte as orjson writes it, so a native body equals the reference's.

/// A string as orjson escapes it: `"`, `\` and control characters below U+0020 only.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes); // the usual string: nothing to escape
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{byte:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

pub fn write_int(out: &mut Vec<u8>, value: i128) {
    use std::io::Write;
    // Writing to a Vec cannot fail; i64 formats faster than i128, and nearly every value fits.
    let _ = match i64::try_from(value) {
        Ok(small) => write!(out, "{small}"),
        Err(_) => write!(out, "{value}"),
    };
}

/// A finite float as orjson prints it: the shortest round-trip digits, in fixed notation from 1e-5
/// up to 1e16 (Python's `repr` switches at 1e-4), else with an exponent that is signed and never
/// zero-padded (`1e+16`, `1e-6`).
pub fn write_float(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(float_text(value).as_bytes());
}

pub fn float_text(value: f64) -> String {
    if value == 0.0 {
        return if value.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // ryu gives the shortest digits that read back as `value` and, between two as close, the
    // even one, as Python's repr and orjson do (std's `{:e}` rounds 2^43 + 1/16 up, not to even).
    let (sign, digits, exponent) = shortest_digits(value);
    if (-5..16).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point
        let text = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (whole, fraction) = digits.split_at(point as usize);
            format!("{whole}.{fraction}")
        };
        return format!("{sign}{text}");
    }
    let shown = if digits.len() == 1 {
        digits
    } else {
        format!("{}.{}", &digits[..1], &digits[1..])
    };
    let exp_sign = if exponent < 0 { '-' } else { '+' };
    format!("{sign}{shown}e{exp_sign}{}", exponent.abs())
}

/// The sign, the significant digits and the power of ten of the first digit, as ryu prints them
/// ("1.5e-7", "0.0001", "123.0" all come apart the same way).
fn shortest_digits(value: f64) -> (&'static str, String, i32) {
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(value);
    let (sign, text) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text),
    };
    let (mantissa, power) = match text.split_once('e') {
        Some((mantissa, power)) => (
            mantissa,
            power
                .parse::<i32>()
                .expect("ryu writes an integer exponent"),
        ),
        None => (text, 0),
    };
    let point = mantissa.find('.').unwrap_or(mantissa.len()) as i32;
    let all: String = mantissa.chars().filter(|c| *c != '.').collect();
    let leading = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    (sign, digits.to_string(), point - 1 - leading as i32 + power)
}

/// A SHA-256 digest as a JSON string of lowercase hex (nothing in it needs escaping).
pub fn write_hex_str(out: &mut Vec<u8>, digest: &[u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'"'; 66];
    for (i, byte) in digest.iter().enumerate() {
        text[1 + 2 * i] = DIGITS[(byte >> 4) as usize];
        text[2 + 2 * i] = DIGITS[(byte & 15) as usize];
    }
    out.extend_from_slice(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_orjson_prints_them() {
        let cases = [
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (1e-7, "1e-7"),
            (0.0001, "0.0001"),
            (100.0, "100.0"),
            (12.5, "12.5"),
            (1.5e300, "1.5e+300"),
            (-0.0, "-0.0"),
            (5e-324, "5e-324"),
            (0.30000000000000004, "0.30000000000000004"),
            (-2.5e-5, "-0.000025"),
            (6.103515625e-05, "0.00006103515625"),
            (1e-5, "0.00001"),
            (1.5e-6, "1.5e-6"),
            (2f64.powi(43) + 0.0625, "8796093022208.062"), // a tie: the even digit
            (-(2f64.powi(43) + 0.0625), "-8796093022208.062"),
            (1.0, "1.0"),
            (123.456, "123.456"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ];
        for (value, text) in cases {
            assert_eq!(float_text(value), text, "{value:?}");
        }
    }

    #[test]
    fn strings_escape_as_orjson_escapes_them() {
        let mut out = Vec::new();
        write_str(&mut out, "a\u{0}\u{1f}\u{7f}\"\\/é\u{2028}\n");
        assert_eq!(
            out,
            "\"a\\u0000\\u001f\u{7f}\\\"\\\\/é\u{2028}\\n\"".as_bytes()
        );
    }
}
