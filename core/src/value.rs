//! Typed access to the record batch's columns: one value at a time, without copies.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Int8Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampSecondType, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, TimeUnit};

/// One cell, as the reference mapper would see the Python value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val<'a> {
    Null,
    Str(&'a str),
    Int(i128),
    Float(f64),
    Bool(bool),
    /// Days since 1970-01-01 (`datetime.date`).
    Date(i32),
    /// Microseconds since the epoch; `aware` when the column carries a time zone.
    Ts {
        micros: i64,
        aware: bool,
    },
    /// A DECIMAL: `value` / 10^`scale` (`decimal.Decimal`).
    Dec {
        value: i128,
        scale: i8,
    },
    /// A value only the reference reads (a `lookup` of a float, whose `str()` is Python's own):
    /// whatever reads it hands the row back.
    Unreadable,
}

/// Whether the core reads this Arrow type exactly as Python reads the same column.
pub fn supported(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Null
            | DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Date32
            | DataType::Decimal128(_, _)
            | DataType::Timestamp(
                TimeUnit::Second | TimeUnit::Millisecond | TimeUnit::Microsecond,
                _
            )
    )
}

pub struct Column {
    array: ArrayRef,
}

/// A leaf reached through STRUCT fields: null where any struct on the way is null (Python's
/// `walk` meets None there), else the leaf's value.
pub struct PathColumn {
    structs: Vec<ArrayRef>,
    leaf: Column,
}

impl PathColumn {
    /// None when a step is not a STRUCT with exactly one field of that name, or the leaf's type
    /// is not one the core reads: the batch is then the reference's.
    pub fn new(root: &ArrayRef, names: &[String]) -> Option<Self> {
        let mut structs = Vec::with_capacity(names.len());
        let mut current = root.clone();
        for name in names {
            let record = current.as_struct_opt()?;
            let DataType::Struct(fields) = current.data_type() else {
                return None;
            };
            let mut found = fields.iter().enumerate().filter(|(_, f)| f.name() == name);
            let (index, _) = found.next()?;
            if found.next().is_some() {
                return None; // two fields of one name: which one Python keeps is not ours to say
            }
            let child = record.column(index).clone();
            structs.push(current);
            current = child;
        }
        Some(Self {
            structs,
            leaf: Column::new(current)?,
        })
    }

    pub fn get(&self, row: usize) -> Val<'_> {
        if self.structs.iter().any(|array| array.is_null(row)) {
            return Val::Null;
        }
        self.leaf.get(row)
    }
}

impl Column {
    pub fn new(array: ArrayRef) -> Option<Self> {
        supported(array.data_type()).then_some(Self { array })
    }

    pub fn get(&self, row: usize) -> Val<'_> {
        let array = &self.array;
        if array.is_null(row) {
            return Val::Null;
        }
        match array.data_type() {
            DataType::Null => Val::Null,
            DataType::Boolean => Val::Bool(array.as_boolean().value(row)),
            DataType::Int8 => Val::Int(array.as_primitive::<Int8Type>().value(row).into()),
            DataType::Int16 => Val::Int(array.as_primitive::<Int16Type>().value(row).into()),
            DataType::Int32 => Val::Int(array.as_primitive::<Int32Type>().value(row).into()),
            DataType::Int64 => Val::Int(array.as_primitive::<Int64Type>().value(row).into()),
            DataType::UInt8 => Val::Int(array.as_primitive::<UInt8Type>().value(row).into()),
            DataType::UInt16 => Val::Int(array.as_primitive::<UInt16Type>().value(row).into()),
            DataType::UInt32 => Val::Int(array.as_primitive::<UInt32Type>().value(row).into()),
            DataType::UInt64 => Val::Int(array.as_primitive::<UInt64Type>().value(row).into()),
            DataType::Float32 => Val::Float(array.as_primitive::<Float32Type>().value(row).into()),
            DataType::Float64 => Val::Float(array.as_primitive::<Float64Type>().value(row)),
            DataType::Utf8 => Val::Str(array.as_string::<i32>().value(row)),
            DataType::LargeUtf8 => Val::Str(array.as_string::<i64>().value(row)),
            DataType::Utf8View => Val::Str(array.as_string_view().value(row)),
            DataType::Date32 => Val::Date(array.as_primitive::<Date32Type>().value(row)),
            DataType::Decimal128(_, scale) => Val::Dec {
                value: array.as_primitive::<Decimal128Type>().value(row),
                scale: *scale,
            },
            DataType::Timestamp(unit, zone) => {
                let aware = zone.is_some();
                let micros = match unit {
                    TimeUnit::Second => array
                        .as_primitive::<TimestampSecondType>()
                        .value(row)
                        .checked_mul(1_000_000),
                    TimeUnit::Millisecond => array
                        .as_primitive::<TimestampMillisecondType>()
                        .value(row)
                        .checked_mul(1_000),
                    _ => Some(array.as_primitive::<TimestampMicrosecondType>().value(row)),
                };
                match micros {
                    Some(micros) => Val::Ts { micros, aware },
                    None => Val::Null, // beyond datetime's range: Python could not read it either
                }
            }
            _ => unreachable!("Column::new admits supported types only"),
        }
    }
}

/// The civil date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date, or None when the date does not exist.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468_i64, -1, 0, 1, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), Some(days));
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(1990, 2, 29), None);
        assert_eq!(days_from_civil(2000, 2, 29), Some(11_016));
    }
}
