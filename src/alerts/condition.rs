//! dakkio's plain-English alert conditions → a [`Condition`] (pure, no I/O).
//!
//! The phrasings are those of dakkio's API page and alert guide
//! (dakkio-api.md §2.7): a comparison `<field> <operator> <value>`, with an
//! optional duration (`for 5 minutes`), or a no-data form (`no data
//! received for 30 minutes`, `no readings for 1 hour`, `missing data for 2
//! hours`). dakkio does not publish its grammar; what is accepted here:
//!
//! - operators in words — `is greater than`, `exceeds`, `is above`, `is
//!   greater than or equal to`, `is at least`, `is less than`, `drops
//!   below`, `falls below`, `is below`, `is less than or equal to`, `is at
//!   most`, `equals`, `is equal to`, `is not equal to`, `does not equal` —
//!   or symbols `>`, `>=`, `<`, `<=`, `==`, `=`, `!=`;
//! - a value: a number with an optional unit that is ignored (`30`, `30°C`,
//!   `80 percent`, `80%`), or for `equals`/`is not equal to` also `true`,
//!   `false` or a word or quoted text;
//! - a duration after `for` (`for 5 minutes`, `for at least 90 seconds`,
//!   `for 1h`): seconds, minutes, hours, days;
//! - a leading `when`/`if`/`the` is skipped; a field is one name as it
//!   appears in the readings' `values` (letters, digits, `_`, `-`, `.`).
//!
//! Invariant: [`parse`] either returns a condition that the evaluator can
//! run or an error saying what was understood and what was not; it never
//! guesses a field or a number.

use std::fmt;
use std::time::Duration;

use serde_json::{json, Value as Json};

/// A comparison operator; [`Op::code`] is `parsedCondition.operator`
/// (dakkio shows `gt`), [`Op::symbol`] the webhook payload's `operator`
/// (dakkio shows `>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
    Ne,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Eq => "eq",
            Op::Ne => "ne",
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Gte => ">=",
            Op::Lt => "<",
            Op::Lte => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

/// The value a field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Number(f64),
    Bool(bool),
    Text(String),
}

impl Target {
    pub fn to_json(&self) -> Json {
        match self {
            Target::Number(n) => crate::api::routes::json_number(*n),
            Target::Bool(b) => Json::Bool(*b),
            Target::Text(t) => Json::String(t.clone()),
        }
    }
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `field op value`, true for `hold` (zero: on the reading itself).
    Threshold {
        field: String,
        op: Op,
        value: Target,
        hold: Duration,
    },
    /// No reading of the data source for `silence`.
    NoData { silence: Duration },
}

impl Condition {
    /// dakkio's `parsedCondition`: `{field, operator, value}` as dakkio
    /// shows it, plus `forSeconds` when the condition has a duration; the
    /// no-data form is `{operator: "no_data", forSeconds}` (the gateway's
    /// own, dakkio documents none).
    pub fn to_json(&self) -> Json {
        match self {
            Condition::Threshold {
                field,
                op,
                value,
                hold,
            } => {
                let mut v =
                    json!({"field": field, "operator": op.code(), "value": value.to_json()});
                if !hold.is_zero() {
                    v["forSeconds"] = hold.as_secs().into();
                }
                v
            }
            Condition::NoData { silence } => {
                json!({"operator": "no_data", "forSeconds": silence.as_secs()})
            }
        }
    }
}

/// Why a condition was not understood: what was, what was not, and what
/// would have been.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionError {
    /// What was understood, for people (`field `temperature`, operator `gt``).
    pub understood: String,
    /// The part of the text that was not understood.
    pub not_understood: String,
    /// What was expected there, with an example.
    pub expected: String,
}

impl fmt::Display for ConditionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.understood.is_empty() {
            write!(f, "nothing was understood")?;
        } else {
            write!(f, "understood {}", self.understood)?;
        }
        write!(
            f,
            "; not understood: `{}`; {}",
            self.not_understood, self.expected
        )
    }
}

/// Longest phrasings first, so `is greater than or equal to` wins over
/// `is greater than`, `is not equal to` over `is`.
const WORD_OPS: &[(&str, Op)] = &[
    ("is greater than or equal to", Op::Gte),
    ("is less than or equal to", Op::Lte),
    ("greater than or equal to", Op::Gte),
    ("less than or equal to", Op::Lte),
    ("is not equal to", Op::Ne),
    ("is greater than", Op::Gt),
    ("does not equal", Op::Ne),
    ("is less than", Op::Lt),
    ("greater than", Op::Gt),
    ("is equal to", Op::Eq),
    ("drops below", Op::Lt),
    ("falls below", Op::Lt),
    ("goes above", Op::Gt),
    ("goes below", Op::Lt),
    ("rises above", Op::Gt),
    ("less than", Op::Lt),
    ("is at least", Op::Gte),
    ("is at most", Op::Lte),
    ("is above", Op::Gt),
    ("is below", Op::Lt),
    ("exceeds", Op::Gt),
    ("equals", Op::Eq),
    ("is not", Op::Ne),
    ("above", Op::Gt),
    ("below", Op::Lt),
];

const SYMBOL_OPS: &[(&str, Op)] = &[
    (">=", Op::Gte),
    ("<=", Op::Lte),
    ("==", Op::Eq),
    ("!=", Op::Ne),
    ("=>", Op::Gte),
    ("=<", Op::Lte),
    (">", Op::Gt),
    ("<", Op::Lt),
    ("=", Op::Eq),
];

/// Leading phrases of the no-data form, longest first.
const NO_DATA: &[&str] = &[
    "no data points received",
    "no readings received",
    "no data received",
    "no data points",
    "missing readings",
    "missing data",
    "no readings",
    "no reading",
    "no data",
];

/// Units a number may carry; ignored (the rule compares the raw value).
const UNITS: &[&str] = &[
    "percent", "degrees", "degree", "°c", "°f", "°", "%", "c", "f", "v", "a", "w", "kw", "hpa",
    "pa", "ppm", "lux",
];

const EXAMPLE: &str = "e.g. `temperature is greater than 30`, `humidity > 80 for 5 minutes` \
                       or `no data received for 30 minutes`";

/// Longest accepted condition (dakkio documents none).
pub const MAX_LEN: usize = 500;

/// Parse a condition sentence.
pub fn parse(text: &str) -> Result<Condition, ConditionError> {
    let norm = normalise(text);
    let lower = norm.to_ascii_lowercase();
    if norm.is_empty() {
        return Err(ConditionError {
            understood: String::new(),
            not_understood: text.to_owned(),
            expected: format!("expected a condition, {EXAMPLE}"),
        });
    }
    let body = strip_prefixes(&lower);
    for phrase in NO_DATA {
        if let Some(rest) = strip_word(body, phrase) {
            return no_data(phrase, rest);
        }
    }
    let Some((start, end, op)) = find_op(body) else {
        return Err(ConditionError {
            understood: String::new(),
            not_understood: same(&lower, &norm, body).to_owned(),
            expected: format!(
                "expected `<field> <operator> <value>` with an operator such as `is greater \
                 than`, `exceeds`, `is less than`, `drops below`, `equals`, `is not equal to` \
                 or `>`, `<`, `>=`, `<=`, `==`, `!=`, {EXAMPLE}"
            ),
        });
    };
    let field = same(&lower, &norm, body[..start].trim());
    let op_text = body[start..end].trim();
    let rest = body[end..].trim();
    if field.is_empty() || !is_field(field) {
        return Err(ConditionError {
            understood: format!("operator `{op_text}` ({})", op.code()),
            not_understood: if field.is_empty() {
                "(no field before the operator)".to_owned()
            } else {
                field.to_owned()
            },
            expected: format!(
                "expected one field name before the operator (letters, digits, `_`, `-`, \
                 `.`), {EXAMPLE}"
            ),
        });
    }
    let understood_op = format!("field `{field}`, operator `{op_text}` ({})", op.code());
    // The duration, if any, follows the last ` for `.
    let (value_text, hold) = match rfind_word(rest, "for") {
        Some(at) => {
            let dur_text = rest[at + 3..].trim();
            match parse_duration(dur_text) {
                Some(d) => (rest[..at].trim(), d),
                None => {
                    return Err(ConditionError {
                        understood: format!("{understood_op}, value `{}`", rest[..at].trim()),
                        not_understood: format!("for {dur_text}"),
                        expected: "expected a duration after `for`, e.g. `for 5 minutes`, \
                                   `for 90 seconds` or `for 2 hours`"
                            .to_owned(),
                    })
                }
            }
        }
        None => (rest, Duration::ZERO),
    };
    let value = match parse_value(value_text, same(&lower, &norm, value_text), op) {
        Ok(v) => v,
        Err(expected) => {
            return Err(ConditionError {
                understood: understood_op,
                not_understood: if value_text.is_empty() {
                    "(no value after the operator)".to_owned()
                } else {
                    same(&lower, &norm, value_text).to_owned()
                },
                expected,
            })
        }
    };
    Ok(Condition::Threshold {
        field: field.to_owned(),
        op,
        value,
        hold,
    })
}

fn no_data(phrase: &str, rest: &str) -> Result<Condition, ConditionError> {
    let rest = rest.trim();
    let dur = strip_word(rest, "for")
        .or_else(|| strip_word(rest, "in"))
        .or_else(|| strip_word(rest, "within"))
        .or_else(|| strip_word(rest, "over"))
        .map(str::trim);
    match dur.and_then(parse_duration) {
        Some(silence) if !silence.is_zero() => Ok(Condition::NoData { silence }),
        _ => Err(ConditionError {
            understood: format!("no-data condition (`{phrase}`)"),
            not_understood: if rest.is_empty() {
                "(no duration)".to_owned()
            } else {
                rest.to_owned()
            },
            expected: "expected how long, e.g. `no data received for 30 minutes` or `no \
                       readings for 1 hour`"
                .to_owned(),
        }),
    }
}

/// Whitespace collapsed (outside quotes), a trailing full stop dropped;
/// the case is kept (field names and text values keep theirs; operators
/// are matched on an ASCII-lowercase copy with the same byte offsets).
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    for c in text.trim().trim_end_matches('.').chars() {
        if c == '"' || c == '\'' {
            quoted = !quoted;
            out.push(c);
        } else if c.is_whitespace() && !quoted {
            if !out.ends_with(' ') && !out.is_empty() {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

/// The part of `orig` at the same byte offsets as `sub`, a slice of `lower`
/// (`lower` is `orig` ASCII-lowercased: same length, same boundaries).
fn same<'a>(lower: &str, orig: &'a str, sub: &str) -> &'a str {
    let start = sub.as_ptr() as usize - lower.as_ptr() as usize;
    &orig[start..start + sub.len()]
}

fn strip_prefixes(mut s: &str) -> &str {
    loop {
        let before = s;
        for p in ["when", "if", "alert when", "alert if", "the"] {
            if let Some(rest) = strip_word(s, p) {
                s = rest.trim_start();
            }
        }
        if s == before {
            return s;
        }
    }
}

/// `s` without the leading word(s) `w` (whole words only).
fn strip_word<'a>(s: &'a str, w: &str) -> Option<&'a str> {
    let rest = s.strip_prefix(w)?;
    (rest.is_empty() || rest.starts_with(' ')).then_some(rest)
}

/// The byte offset of the last whole word `w` in `s`.
fn rfind_word(s: &str, w: &str) -> Option<usize> {
    let mut end = s.len();
    while let Some(at) = s[..end].rfind(w) {
        let before_ok = at == 0 || s.as_bytes()[at - 1] == b' ';
        let after = at + w.len();
        let after_ok = after == s.len() || s.as_bytes()[after] == b' ';
        if before_ok && after_ok {
            return Some(at);
        }
        end = at;
    }
    None
}

/// The first operator in `s`: (start, end, op). Symbols may touch their
/// neighbours (`temperature>30`); words must be whole words.
fn find_op(s: &str) -> Option<(usize, usize, Op)> {
    let mut best: Option<(usize, usize, Op)> = None;
    let mut consider = |start: usize, end: usize, op: Op| {
        let better = match best {
            None => true,
            Some((b_start, b_end, _)) => start < b_start || (start == b_start && end > b_end),
        };
        if better {
            best = Some((start, end, op));
        }
    };
    for (sym, op) in SYMBOL_OPS {
        if let Some(at) = s.find(sym) {
            consider(at, at + sym.len(), *op);
        }
    }
    for (phrase, op) in WORD_OPS {
        let mut from = 0;
        while let Some(rel) = s[from..].find(phrase) {
            let at = from + rel;
            let end = at + phrase.len();
            let before_ok = at == 0 || s.as_bytes()[at - 1] == b' ';
            let after_ok = end == s.len() || s.as_bytes()[end] == b' ';
            if before_ok && after_ok {
                consider(at, end, *op);
                break;
            }
            from = at + 1;
        }
    }
    best
}

fn is_field(s: &str) -> bool {
    s.len() <= 100
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The value after the operator: a number with an optional unit, or for
/// `eq`/`ne` a boolean, a word or quoted text.
/// `text` is lowercase, `orig` the same text with its case.
fn parse_value(text: &str, orig: &str, op: Op) -> Result<Target, String> {
    let equality = matches!(op, Op::Eq | Op::Ne);
    if text.is_empty() {
        return Err(format!("expected a value after the operator, {EXAMPLE}"));
    }
    if let Some(n) = number_with_unit(text) {
        return Ok(Target::Number(n));
    }
    if equality {
        if let Some(q) = orig
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .or_else(|| orig.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')))
        {
            return Ok(Target::Text(q.to_owned()));
        }
        match text {
            "true" | "on" | "yes" => return Ok(Target::Bool(true)),
            "false" | "off" | "no" => return Ok(Target::Bool(false)),
            _ => {}
        }
        if !text.contains(' ') {
            return Ok(Target::Text(orig.to_owned()));
        }
        return Err(
            "expected a number, `true`/`false`, one word or quoted text, e.g. `door equals \
             \"open\"`"
                .to_owned(),
        );
    }
    Err(format!(
        "expected a number (a unit such as `°C` or `percent` may follow), e.g. `temperature \
         is greater than 30`; `{}` compares numbers only",
        op.symbol()
    ))
}

/// `30`, `-2.5`, `30°c`, `80 percent`, `80%`.
fn number_with_unit(text: &str) -> Option<f64> {
    let end = text
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || ((*c == '-' || *c == '+') && *i == 0)))
        .map_or(text.len(), |(i, _)| i);
    let n: f64 = text[..end].parse().ok()?;
    if !n.is_finite() {
        return None;
    }
    let unit = text[end..].trim();
    (unit.is_empty() || UNITS.contains(&unit)).then_some(n)
}

/// `5 minutes`, `at least 90 seconds`, `1h`, `an hour`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut t = text.trim();
    for p in ["at least", "more than", "over", "longer than"] {
        if let Some(rest) = strip_word(t, p) {
            t = rest.trim_start();
        }
    }
    let end = t
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(t.len(), |(i, _)| i);
    let (n, unit) = if end == 0 {
        let (article, unit) = t.split_once(' ')?;
        if !matches!(article, "a" | "an" | "one") {
            return None;
        }
        (1.0, unit.trim())
    } else {
        (t[..end].parse::<f64>().ok()?, t[end..].trim())
    };
    let secs = match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        _ => return None,
    };
    let total = n * secs;
    // At most a year: a longer silence is not an alert.
    (total.is_finite() && (0.0..=31_536_000.0).contains(&total))
        .then(|| Duration::from_secs(total.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(field: &str, op: Op, value: f64, hold_s: u64) -> Condition {
        Condition::Threshold {
            field: field.into(),
            op,
            value: Target::Number(value),
            hold: Duration::from_secs(hold_s),
        }
    }

    #[test]
    fn documented_phrasings() {
        let cases = [
            (
                "temperature is greater than 30",
                threshold("temperature", Op::Gt, 30.0, 0),
            ),
            (
                "temperature exceeds 30",
                threshold("temperature", Op::Gt, 30.0, 0),
            ),
            (
                "temperature is less than 5",
                threshold("temperature", Op::Lt, 5.0, 0),
            ),
            (
                "battery drops below 3.3",
                threshold("battery", Op::Lt, 3.3, 0),
            ),
            ("status equals 2", threshold("status", Op::Eq, 2.0, 0)),
            ("mode is not equal to 1", threshold("mode", Op::Ne, 1.0, 0)),
            (
                "humidity exceeds 80 percent",
                threshold("humidity", Op::Gt, 80.0, 0),
            ),
            (
                "temperature > 30 for 5 minutes",
                threshold("temperature", Op::Gt, 30.0, 300),
            ),
            (
                "Temperature exceeds 30°C for 5 minutes",
                threshold("Temperature", Op::Gt, 30.0, 300),
            ),
            (
                "temperature>=30",
                threshold("temperature", Op::Gte, 30.0, 0),
            ),
            (
                "temperature <= -2.5",
                threshold("temperature", Op::Lte, -2.5, 0),
            ),
            ("level == 4", threshold("level", Op::Eq, 4.0, 0)),
            ("level != 4", threshold("level", Op::Ne, 4.0, 0)),
            (
                "pressure < 990 for 1 hour",
                threshold("pressure", Op::Lt, 990.0, 3600),
            ),
            (
                "when the co2 is above 1000 ppm",
                threshold("co2", Op::Gt, 1000.0, 0),
            ),
            (
                "temperature is greater than or equal to 30",
                threshold("temperature", Op::Gte, 30.0, 0),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn no_data_forms() {
        for (text, secs) in [
            ("no data received for 30 minutes", 1800),
            ("no readings for 1 hour", 3600),
            ("missing data for 2 hours", 7200),
            ("No data for 90 seconds.", 90),
            ("no data received for an hour", 3600),
        ] {
            assert_eq!(
                parse(text),
                Ok(Condition::NoData {
                    silence: Duration::from_secs(secs)
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn equality_with_words_and_booleans() {
        assert_eq!(
            parse("door equals \"Open\""),
            Ok(Condition::Threshold {
                field: "door".into(),
                op: Op::Eq,
                value: Target::Text("Open".into()),
                hold: Duration::ZERO
            })
        );
        assert_eq!(
            parse("alarm is not equal to true"),
            Ok(Condition::Threshold {
                field: "alarm".into(),
                op: Op::Ne,
                value: Target::Bool(true),
                hold: Duration::ZERO
            })
        );
    }

    #[test]
    fn parsed_condition_json() {
        assert_eq!(
            parse("temperature is greater than 30").unwrap().to_json(),
            json!({"field": "temperature", "operator": "gt", "value": 30})
        );
        assert_eq!(
            parse("temperature > 30.5 for 5 minutes").unwrap().to_json(),
            json!({"field": "temperature", "operator": "gt", "value": 30.5, "forSeconds": 300})
        );
        assert_eq!(
            parse("no readings for 1 hour").unwrap().to_json(),
            json!({"operator": "no_data", "forSeconds": 3600})
        );
    }

    #[test]
    fn errors_say_what_was_understood_and_what_was_not() {
        let e = parse("temperature is greater than thirty").unwrap_err();
        assert!(e.understood.contains("temperature") && e.understood.contains("gt"));
        assert_eq!(e.not_understood, "thirty");
        let e = parse("temperature > 30 for a while").unwrap_err();
        assert_eq!(e.not_understood, "for a while");
        assert!(e.understood.contains("30"));
        let e = parse("it is hot").unwrap_err();
        assert!(e.understood.is_empty());
        assert!(e.to_string().contains("not understood: `it is hot`"));
        let e = parse("no data received").unwrap_err();
        assert!(e.understood.contains("no-data"));
        let e = parse("> 30").unwrap_err();
        assert!(e.not_understood.contains("no field"));
        let e = parse("cold room temp > 3").unwrap_err();
        assert_eq!(e.not_understood, "cold room temp");
        assert!(parse("").is_err());
        assert!(parse("temperature > 30 for 2 years").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5 minutes"), Some(Duration::from_secs(300)));
        assert_eq!(
            parse_duration("at least 90 seconds"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2 days"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("soon"), None);
    }
}
