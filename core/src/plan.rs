//! The pipeline's mapping as the core executes it, compiled once in Python (`capi_sync.native`).
//!
//! Tables (countries, subdivisions, currencies, North American phone patterns) come from the
//! Python reference at compile time, so both paths read one copy of the rules.

use std::collections::{HashMap, HashSet};

use regex::Regex;
use serde::Deserialize;

/// Bits of a shape from here up carry the event's name (its index in `Built.event_names`); the
/// bits below are the customer-information keys.
pub const NAME_SHIFT: u32 = 40;

/// Where a field's value comes from: a column of the batch, or a constant.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Source {
    /// A path of field names into a STRUCT column: `PlanSpec::paths[path]`.
    Path {
        path: usize,
    },
    Column {
        column: usize,
    },
    /// Every source holding a value, as a list (customer information sends them all).
    AllOf {
        all_of: Vec<Source>,
    },
    /// The first source holding a value (`sources._present`: not NULL, not blank text).
    FirstOf {
        first_of: Vec<Source>,
    },
    /// `values[str(value).strip()]`, else `default` (also for a NULL).
    Lookup {
        lookup: Box<Source>,
        values: HashMap<String, Constant>,
        default: Constant,
    },
    Constant {
        constant: Constant,
    },
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Constant {
    Null(()),
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Email,
    Phone,
    Name,
    City,
    Gender,
    BirthDate,
    State,
    Zip,
    Country,
    ExternalId,
    IpAddress,
    IntegerId,
    /// Meta's lead id: an integer id of 15 or 16 digits.
    LeadId,
    Plain,
    /// A digest (or `!rule`) the warehouse computed: sent as it is.
    Pushed,
}

#[derive(Deserialize, Debug, Clone)]
pub struct UserField {
    pub key: String,
    pub source: Source,
    pub rule: Rule,
    pub hashed: bool,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CustomType {
    Float,
    Int,
    Str,
    Currency,
    StrList,
    ContentType,
    DeliveryCategory,
    /// Read by the reference only: a row holding one is handed back.
    Contents,
    /// `values.to_bool` (the server event's `opt_out`).
    Bool,
    /// `values.to_json`, as a custom property is written (`customer_segmentation`).
    Json,
}

#[derive(Deserialize, Debug, Clone)]
pub struct CustomField {
    pub key: String,
    pub source: Source,
    #[serde(rename = "type")]
    pub kind: CustomType,
}

#[derive(Deserialize, Debug, Clone)]
pub struct Property {
    pub key: String,
    pub source: Source,
}

/// `settings.consent_column` and `consent_category`: rows without the category are skipped.
#[derive(Deserialize, Debug, Clone)]
pub struct Consent {
    pub source: Source,
    pub category: String,
}

/// `settings.url_redaction`, applied to `event_source_url` and `referrer_url`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UrlRedaction {
    #[default]
    None,
    /// Drop `?query` and `#fragment`.
    Query,
    /// Keep only scheme and host (`urls.REDACTED_PATH` for the path).
    Path,
}

#[derive(Deserialize, Debug, Clone)]
pub struct NanpRule {
    pub leading: Option<String>,
    pub general: Option<String>,
    pub types: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct PlanSpec {
    pub pipeline: String,
    pub key_columns: Vec<usize>,
    pub event_name: Source,
    pub event_time: Source,
    pub event_id: Option<Source>,
    pub action_source: Option<Source>,
    pub default_action_source: Option<String>,
    pub urls: Vec<(String, Source)>,
    /// (column, field names) of every path into a STRUCT column the mapping reads.
    #[serde(default)]
    pub paths: Vec<(usize, Vec<String>)>,
    /// Typed server-event fields (`opt_out`, `data_processing_options*`, `customer_segmentation`),
    /// in the mapping's order; a value they refuse rejects the row, so it is handed back.
    #[serde(default)]
    pub server_typed: Vec<CustomField>,
    pub renames: HashMap<String, String>,
    pub country: Option<UserField>,
    pub user: Vec<UserField>,
    pub custom: Vec<CustomField>,
    pub properties: Vec<Property>,
    pub utc: bool,
    pub fbc_from_fbclid: bool,
    /// False: hashed keys must arrive as SHA-256 hex; any other value is the reference's to reject.
    #[serde(default = "yes")]
    pub hashing_required: bool,
    #[serde(default)]
    pub consent: Option<Consent>,
    #[serde(default)]
    pub url_redaction: UrlRedaction,
    #[serde(default)]
    pub redacted_path: String,
    pub strong_key_required: bool,
    pub default_phone_region: Option<String>,
    pub current_year: i64,
    pub action_sources: HashSet<String>,
    pub strong_keys: Vec<String>,
    pub weak_key_sets: Vec<Vec<String>>,
    pub currencies: HashSet<String>,
    pub content_types: HashSet<String>,
    pub delivery_categories: HashSet<String>,
    pub countries: HashMap<String, String>,
    pub subdivisions: HashMap<String, HashMap<String, String>>,
    pub nanp: Vec<NanpRule>,
    pub max_age_seconds: i64,
    pub max_age_seconds_physical_store: i64,
    pub max_future_seconds: i64,
}

fn yes() -> bool {
    true
}

pub struct CompiledNanp {
    pub leading: Option<Regex>,
    /// None: no pattern admits ten digits, so nothing matches.
    pub general: Option<Regex>,
    pub types: Option<Regex>,
}

pub struct Plan {
    pub spec: PlanSpec,
    pub nanp: Vec<CompiledNanp>,
    /// Customer-information keys in the order an event carries them: country first.
    pub user_order: Vec<String>,
    /// Bits (of a shape) of the keys that alone meet the matching floor.
    pub strong_mask: u64,
    /// Per weak key set, its bits: a shape inside one of them falls below the floor.
    pub weak_masks: Vec<u64>,
    pub fbc_bit: u64,
    pub user_agent_bit: u64,
}

impl Plan {
    pub fn from_json(text: &str) -> Result<Self, String> {
        let spec: PlanSpec =
            serde_json::from_str(text).map_err(|e| format!("invalid plan: {e}"))?;
        let anchored = |pattern: &str, whole: bool| {
            let text = if whole {
                format!("^(?:{pattern})$")
            } else {
                format!("^(?:{pattern})")
            };
            Regex::new(&text).map_err(|e| format!("invalid phone pattern {pattern:?}: {e}"))
        };
        let mut nanp = Vec::new();
        for rule in &spec.nanp {
            nanp.push(CompiledNanp {
                leading: rule
                    .leading
                    .as_deref()
                    .map(|p| anchored(p, false))
                    .transpose()?,
                general: rule
                    .general
                    .as_deref()
                    .map(|p| anchored(p, true))
                    .transpose()?,
                types: rule
                    .types
                    .as_deref()
                    .map(|p| anchored(p, true))
                    .transpose()?,
            });
        }
        let user_order: Vec<String> = spec
            .country
            .iter()
            .chain(spec.user.iter())
            .map(|f| f.key.clone())
            .collect();
        if user_order.len() > NAME_SHIFT as usize {
            return Err(format!("more than {NAME_SHIFT} customer-information keys"));
        }
        let mask = |keys: &[String]| {
            user_order
                .iter()
                .enumerate()
                .filter(|(_, key)| keys.contains(key))
                .fold(0_u64, |bits, (i, _)| bits | 1 << i)
        };
        let strong_mask = mask(&spec.strong_keys);
        let weak_masks = spec.weak_key_sets.iter().map(|set| mask(set)).collect();
        let fbc_bit = mask(&["fbc".to_owned()]);
        let user_agent_bit = mask(&["client_user_agent".to_owned()]);
        Ok(Self {
            spec,
            nanp,
            user_order,
            strong_mask,
            weak_masks,
            fbc_bit,
            user_agent_bit,
        })
    }
}
