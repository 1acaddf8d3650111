//! The `scalar` payload format: a bare number, boolean or text, stored
//! under the configured field name.

use super::json::json_syntax_error;
use super::*;

pub(super) fn decode_scalar(text: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let field = opts.scalar_field_name();
    let value = if text.starts_with('"') {
        // A JSON string: unescape it properly.
        let s: String = serde_json::from_str(text).map_err(|e| json_syntax_error(e, text))?;
        Value::Text(s)
    } else {
        text_value(text, field)?
    };
    let mut point = DecodedPoint::default();
    point.values.insert(field.into(), value);
    finish(point.into(), text, opts)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn scalar() {
        assert_eq!(num(&one("21.5", PayloadFormat::Scalar), "value"), 21.5);
        let o = DecodeOptions {
            scalar_field: Some("temperature".into()),
            ..opts()
        };
        let d = decode_payload(b" -3 \r\n", PayloadFormat::Scalar, &o).unwrap();
        assert_eq!(d[0].point.values["temperature"], Value::Number(-3.0));
        let o = DecodeOptions {
            scalar_field: None,
            ..opts()
        };
        assert!(decode_payload(b"1", PayloadFormat::Scalar, &o).unwrap()[0]
            .point
            .values
            .contains_key("value"));
        // Booleans and text alone are not readings unless allowed.
        assert_eq!(reason(b"true", PayloadFormat::Scalar), "no_numeric_value");
        assert_eq!(reason(b"on", PayloadFormat::Scalar), "no_numeric_value");
        let lax = DecodeOptions {
            require_number: false,
            ..opts()
        };
        let d = decode_payload(b"TRUE", PayloadFormat::Scalar, &lax).unwrap();
        assert_eq!(d[0].point.values["value"], Value::Bool(true));
        let d = decode_payload(br#""open \"now\"""#, PayloadFormat::Scalar, &lax).unwrap();
        assert_eq!(d[0].point.values["value"], text("open \"now\""));
        let d = decode_payload(b"open", PayloadFormat::Scalar, &lax).unwrap();
        assert_eq!(d[0].point.values["value"], text("open"));
        for bad in ["NaN", "nan", "inf", "+Infinity", "1e400", "-1e999"] {
            assert_eq!(
                reason(bad.as_bytes(), PayloadFormat::Scalar),
                "non_finite",
                "{bad}"
            );
        }
        assert_eq!(
            reason(b"\"unterminated", PayloadFormat::Scalar),
            "invalid_json"
        );
    }
}
