//! Register words → a value: byte order within each word, word order across
//! words, the data type, then `scale` and `offset`. Pure; every type and
//! order is unit-tested against byte layouts written out by hand.
//!
//! Invariant: a value that is not a finite number (a float register holding
//! NaN or infinity, or a scale that overflows) is an error, never a reading:
//! dakkio's numbers are finite.

use crate::config::{DataType, Order};
use crate::reading::Value;

/// Why a register's words did not become a value (a stable label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer words than the type needs (a short answer; never happens with
    /// a well-behaved device, which the codec already checks).
    Short,
    /// NaN or infinity (an `f32`/`f64` register a sensor fills with NaN to
    /// say "no reading", or a scale that overflows).
    NotFinite,
}

impl DecodeError {
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Short => "short_answer",
            DecodeError::NotFinite => "not_finite",
        }
    }
}

/// The raw integer or float the words hold, before scale and offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl Raw {
    fn as_f64(self) -> f64 {
        match self {
            Raw::Unsigned(n) => n as f64,
            Raw::Signed(n) => n as f64,
            Raw::Float(f) => f,
        }
    }
}

/// Put the value's words in big-endian order (most significant byte first)
/// and read the type from them.
pub fn raw(
    words: &[u16],
    ty: DataType,
    word_order: Order,
    byte_order: Order,
) -> Result<Raw, DecodeError> {
    let n = usize::from(ty.words());
    let words = words.get(..n).ok_or(DecodeError::Short)?;
    let mut bytes = [0u8; 8];
    for (i, w) in words.iter().enumerate() {
        let w = match byte_order {
            Order::Big => *w,
            Order::Little => w.swap_bytes(),
        };
        let at = match word_order {
            Order::Big => i,
            Order::Little => n - 1 - i,
        };
        bytes[2 * at..2 * at + 2].copy_from_slice(&w.to_be_bytes());
    }
    let b = &bytes[..2 * n];
    Ok(match ty {
        DataType::Bool | DataType::U16 => {
            Raw::Unsigned(u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        DataType::I16 => Raw::Signed(i64::from(i16::from_be_bytes([b[0], b[1]]))),
        DataType::U32 => Raw::Unsigned(u64::from(u32::from_be_bytes(b.try_into().expect("4")))),
        DataType::I32 => Raw::Signed(i64::from(i32::from_be_bytes(b.try_into().expect("4")))),
        DataType::F32 => Raw::Float(f64::from(f32::from_be_bytes(b.try_into().expect("4")))),
        DataType::U64 => Raw::Unsigned(u64::from_be_bytes(b.try_into().expect("8"))),
        DataType::I64 => Raw::Signed(i64::from_be_bytes(b.try_into().expect("8"))),
        DataType::F64 => Raw::Float(f64::from_be_bytes(b.try_into().expect("8"))),
    })
}

/// The value of a register: raw × scale + offset (exact for integers while
/// they stay below 2^53, as every double is).
pub fn value(
    words: &[u16],
    ty: DataType,
    word_order: Order,
    byte_order: Order,
    scale: f64,
    offset: f64,
) -> Result<Value, DecodeError> {
    let v = raw(words, ty, word_order, byte_order)?.as_f64();
    let v = if scale == 1.0 && offset == 0.0 {
        v
    } else {
        v * scale + offset
    };
    if v.is_finite() {
        Ok(Value::Number(v))
    } else {
        Err(DecodeError::NotFinite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::*;
    use Order::*;

    /// Big-endian bytes → words, as a device that follows the Modbus
    /// convention sends them.
    fn words(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    /// `ABCD` → the layout a device with the given orders puts on the wire:
    /// word order reverses the words, byte order swaps inside each word.
    fn layout(bytes: &[u8], word_order: Order, byte_order: Order) -> Vec<u16> {
        let mut w = words(bytes);
        if word_order == Little {
            w.reverse();
        }
        if byte_order == Little {
            for x in &mut w {
                *x = x.swap_bytes();
            }
        }
        w
    }

    fn num(ws: &[u16], ty: DataType, wo: Order, bo: Order) -> f64 {
        value(ws, ty, wo, bo, 1.0, 0.0).unwrap().as_f64().unwrap()
    }

    #[test]
    fn every_type_in_every_order() {
        let cases: Vec<(DataType, Vec<u8>, f64)> = vec![
            (U16, 0xBEEFu16.to_be_bytes().to_vec(), 48879.0),
            (I16, (-1234i16).to_be_bytes().to_vec(), -1234.0),
            (U32, 3_000_000_000u32.to_be_bytes().to_vec(), 3e9),
            (I32, (-2_000_000_000i32).to_be_bytes().to_vec(), -2e9),
            (F32, 230.5f32.to_be_bytes().to_vec(), 230.5),
            (
                U64,
                9_007_199_254_740_993u64.to_be_bytes().to_vec(),
                9_007_199_254_740_993u64 as f64,
            ),
            (
                I64,
                (-123_456_789_012i64).to_be_bytes().to_vec(),
                -123_456_789_012.0,
            ),
            (F64, (-0.000123f64).to_be_bytes().to_vec(), -0.000123),
        ];
        for (ty, bytes, want) in cases {
            for wo in [Big, Little] {
                for bo in [Big, Little] {
                    let ws = layout(&bytes, wo, bo);
                    assert_eq!(num(&ws, ty, wo, bo), want, "{ty:?} {wo:?} {bo:?} {ws:04x?}");
                }
            }
        }
    }

    /// The four orders of one f32 differ on the wire (so a wrong order
    /// setting gives a wrong number, not the right one by luck).
    #[test]
    fn the_orders_are_distinct() {
        let bytes = 1.5f32.to_be_bytes();
        let abcd = words(&bytes);
        assert_eq!(abcd, vec![0x3FC0, 0x0000]);
        assert_eq!(layout(&bytes, Little, Big), vec![0x0000, 0x3FC0]);
        assert_eq!(layout(&bytes, Big, Little), vec![0xC03F, 0x0000]);
        assert_eq!(layout(&bytes, Little, Little), vec![0x0000, 0xC03F]);
        assert_ne!(num(&abcd, F32, Little, Big), 1.5);
    }

    #[test]
    fn scale_and_offset() {
        let v = value(&[2305], U16, Big, Big, 0.1, -100.0).unwrap();
        assert_eq!(v, Value::Number(2305.0 * 0.1 - 100.0));
        let v = value(&[0xFFFF], I16, Big, Big, 10.0, 0.5).unwrap();
        assert_eq!(v, Value::Number(-9.5));
    }

    #[test]
    fn not_finite_and_short_are_errors() {
        let nan = words(&f32::NAN.to_be_bytes());
        assert_eq!(
            value(&nan, F32, Big, Big, 1.0, 0.0),
            Err(DecodeError::NotFinite)
        );
        let inf = words(&f64::INFINITY.to_be_bytes());
        assert_eq!(
            value(&inf, F64, Big, Big, 1.0, 0.0),
            Err(DecodeError::NotFinite)
        );
        let max = words(&f64::MAX.to_be_bytes());
        assert_eq!(
            value(&max, F64, Big, Big, 10.0, 0.0),
            Err(DecodeError::NotFinite)
        );
        assert_eq!(
            value(&[1], U32, Big, Big, 1.0, 0.0),
            Err(DecodeError::Short)
        );
    }
}
