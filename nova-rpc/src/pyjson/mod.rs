//! JSON as Python's `json.dumps` writes it, for anything `Serialize`.
//!
//! oslo.messaging writes its messages with `json.dumps`: `", "` between
//! items, `": "` after keys, and every character outside printable ASCII
//! as a `\uXXXX` escape (UTF-16 units, so a character past the BMP is two).
//! Integers are written as serde_json writes them; floats with the same
//! shortest digits, laid out as Python's `repr` lays them out (`1e+16`,
//! `1e-07`, `1000000000000000.0`).
//!
//! One difference is kept on purpose: Python writes NaN and infinities as
//! `NaN`, `Infinity` and `-Infinity`, which are not JSON, and which
//! serde_json (so every nova-rs reader) refuses. Written that way, a reply
//! holding one would fail at a nova-rs caller as a malformed message; it
//! is written `null` instead, as serde_json writes it, which both sides
//! read (Python as `None`). `tests/tests/pyjson_against_python.rs` pins
//! both the agreement and this difference against `json.dumps` itself.
//!
//! A message travels as JSON inside a JSON string (the 2.0 envelope's
//! `oslo.message`). Written *enveloped*, every `"` and `\` of the JSON
//! gains its second escape as it is written, so a message is serialised
//! once, straight into the envelope, and never scanned again.
//!
//! Strings are most of what a message holds. They are scanned eight bytes
//! at a time ([`scan`]) and copied a run at a time; only the bytes that
//! need an escape are looked at one by one.

use std::fmt;

use serde::ser::{self, Impossible, Serialize};
use serde_json::ser::{CompactFormatter, Formatter as _};

/// Eight bytes at a time: whether any of them is one JSON would have to
/// escape (`"`, `\`, a control character; [`scan::special_or_wide`]: or
/// one outside printable ASCII). Nonzero when one is. Messages are short
/// runs between quotes, so a call to `memchr` per escape cost more than
/// the bytes did.
pub(crate) mod envelope;

pub(crate) mod scan {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = 0x8080_8080_8080_8080;

    /// Lanes equal to `b`.
    fn equal(v: u64, b: u8) -> u64 {
        let x = v ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & TOPS
    }

    /// Lanes below 0x20 (exact for ASCII lanes; the others are flagged by
    /// the top bit anyway).
    fn control(v: u64) -> u64 {
        v.wrapping_sub(ONES * 0x20) & !v & TOPS
    }

    pub(crate) fn special(v: u64) -> u64 {
        equal(v, b'"') | equal(v, b'\\') | control(v)
    }

    /// [`special`], and lanes of 0x7f or more: those with the top bit set
    /// after adding one. A lane of 0xff carries into the next one up, but
    /// it is flagged itself, and only the lowest flagged lane is used.
    pub(crate) fn special_or_wide(v: u64) -> u64 {
        special(v) | ((v | v.wrapping_add(ONES)) & TOPS)
    }

    /// The eight bytes at `at`, when there are eight.
    pub(crate) fn word(bytes: &[u8], at: usize) -> Option<u64> {
        bytes.get(at..at + 8).and_then(|w| w.try_into().ok()).map(u64::from_le_bytes)
    }

    fn is_special<const WIDE: bool>(b: u8) -> bool {
        // `|`, not `||`: no branch per byte, so a loop of these becomes
        // vector compares.
        (b == b'"') | (b == b'\\') | (b < 0x20) | (WIDE & (b >= 0x7f))
    }

    /// How far from `at` the bytes can be skipped 32 at a time: up to the
    /// first 32 that hold a special byte. The test of 32 bytes is written
    /// as a loop the compiler turns into a few vector compares (a long
    /// argument is scanned at a fraction of the word-at-a-time cost).
    fn skip_blocks<const WIDE: bool>(bytes: &[u8], mut at: usize) -> usize {
        while let Some(block) = bytes.get(at..at + 32) {
            if block.iter().fold(false, |any, &b| any | is_special::<WIDE>(b)) {
                break;
            }
            at += 32;
        }
        at
    }

    /// Copy `bytes` to `out`, handing each special byte (with `WIDE`: each
    /// byte outside printable ASCII too) to `special` with the input from
    /// there on; it writes what stands for it and says how many bytes it
    /// took (`None` gives up). A run that ends inside its first eight
    /// bytes (the usual case between the quotes of a message) is copied as
    /// a whole word and the length cut back to the special byte, so no copy
    /// is of a length known only at run time; a longer run is scanned (32
    /// bytes, then a word, at a time) without writing and copied once. The lowest lane a
    /// test flags is always a true one (a borrow only runs upwards from a
    /// true lane), so the cut is exact.
    pub(crate) fn copy_runs<const WIDE: bool>(
        bytes: &[u8],
        out: &mut Vec<u8>,
        mut special: impl FnMut(&[u8], &mut Vec<u8>) -> Option<usize>,
    ) -> Option<()> {
        let test = if WIDE { special_or_wide } else { self::special };
        let mut at = 0;
        while let Some(v) = word(bytes, at) {
            let found = test(v);
            if found != 0 {
                let run = (found.trailing_zeros() / 8) as usize;
                let len = out.len();
                out.extend_from_slice(&v.to_le_bytes());
                out.truncate(len + run);
                at += run;
                at += special(&bytes[at..], out)?;
                continue;
            }
            // A long run: find its end, copy it once, and hand on the byte
            // that ended it.
            let (start, mut stopped) = (at, false);
            at = skip_blocks::<WIDE>(bytes, at + 8);
            while let Some(v) = word(bytes, at) {
                let found = test(v);
                if found != 0 {
                    at += (found.trailing_zeros() / 8) as usize;
                    stopped = true;
                    break;
                }
                at += 8;
            }
            out.extend_from_slice(&bytes[start..at]);
            if stopped {
                at += special(&bytes[at..], out)?;
            }
        }
        while let Some(&b) = bytes.get(at) {
            if is_special::<WIDE>(b) {
                at += special(&bytes[at..], out)?;
            } else {
                out.push(b);
                at += 1;
            }
        }
        Some(())
    }
}

/// Write `value` as Python's `json.dumps` would, appending to `out`;
/// `enveloped`: as the contents of a JSON string.
///
/// # Errors
///
/// What the value's `Serialize` says, or a map key that is not a string
/// (nor a number or boolean, which are written quoted, as serde_json does).
pub(crate) fn write<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>, enveloped: bool) -> Result<(), Error> {
    value.serialize(&mut Writer { out, enveloped })
}

/// `value` as Python's `json.dumps` writes it (oslo's `jsonutils.dumps`).
///
/// ```
/// let text = nova_rpc::pyjson::to_string(&serde_json::json!({"é": [1.5, 1e16, 1e-7]})).unwrap();
/// assert_eq!(text, r#"{"\u00e9": [1.5, 1e+16, 1e-07]}"#);
/// ```
///
/// # Errors
///
/// As [`write`]'s.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    let mut out = Vec::new();
    write(value, &mut out, false)?;
    // Every byte written is ASCII: anything else is escaped.
    String::from_utf8(out).map_err(|e| Error(e.to_string()))
}

/// `value` as Python writes it inside the 2.0 envelope's string: the text
/// of [`to_string`] quoted once more, without its outer quotes.
///
/// # Errors
///
/// As [`write`]'s.
pub fn to_enveloped_string<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    let mut out = Vec::new();
    write(value, &mut out, true)?;
    String::from_utf8(out).map_err(|e| Error(e.to_string()))
}

/// Why a value could not be written.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// A value that cannot be written is a serialisation error of the call.
impl From<Error> for crate::RpcError {
    fn from(e: Error) -> Self {
        crate::RpcError::Serialization(e.0)
    }
}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

fn key_must_be_a_string() -> Error {
    Error("key must be a string".into())
}

/// serde_json's name for the struct a `RawValue` serialises as.
///
/// serde has no hook for "this is JSON text already": serde_json passes a
/// `RawValue` to a serializer as a one-field struct of this private name,
/// and only the name tells it apart. Arguments and results travel as
/// `RawValue`s, so without it they would be written as quoted strings.
/// `a_raw_value_is_copied_not_quoted` fails the day serde_json renames it.
const RAW_VALUE: &str = "$serde_json::private::RawValue";

/// The serializer: JSON appended to `out`.
pub(crate) struct Writer<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) enveloped: bool,
}

impl Writer<'_> {
    /// One `"` of the JSON, as written.
    pub(crate) fn quote(&mut self) {
        self.out.extend_from_slice(if self.enveloped { b"\\\"" } else { b"\"" });
    }

    /// `s` as a JSON string.
    pub(crate) fn string(&mut self, s: &str) {
        self.quote();
        self.contents(s);
        self.quote();
    }

    /// `s` escaped, without its quotes.
    pub(crate) fn contents(&mut self, s: &str) {
        let enveloped = self.enveloped;
        // A `&str` always ends where a character does: the escape takes
        // whole characters, so nothing gives up.
        let _ = scan::copy_runs::<true>(s.as_bytes(), self.out, |rest, out| Some(escape(rest, out, enveloped)));
    }

    /// JSON text, copied in (escaped for the envelope).
    pub(crate) fn raw(&mut self, json: &str) {
        if !self.enveloped {
            self.out.extend_from_slice(json.as_bytes());
            return;
        }
        let _ = scan::copy_runs::<false>(json.as_bytes(), self.out, |rest, out| {
            // Valid JSON text holds no other control characters outside strings.
            let letter = match rest.first() {
                Some(b'\n') => b'n',
                Some(b'\r') => b'r',
                Some(b'\t') => b't',
                Some(&b) => b,
                None => return Some(1),
            };
            out.extend_from_slice(&[b'\\', letter]);
            Some(1)
        });
    }

    fn null(&mut self) {
        self.out.extend_from_slice(b"null");
    }

    /// A number through serde_json's formatter (writing to a `Vec` cannot fail).
    fn number(&mut self, write: impl FnOnce(&mut CompactFormatter, &mut Vec<u8>) -> std::io::Result<()>) {
        let _ = write(&mut CompactFormatter, self.out);
    }

    /// A finite float as Python's `repr` writes it: the same shortest
    /// digits serde_json (ryu) finds, laid out by Python's rule.
    fn float(&mut self, write: impl FnOnce(&mut CompactFormatter, &mut Vec<u8>) -> std::io::Result<()>) {
        let mut shortest = Vec::with_capacity(24);
        let _ = write(&mut CompactFormatter, &mut shortest);
        python_float(&shortest, self.out);
    }

    /// `{"variant": ` before a variant's contents.
    fn open_variant(&mut self, variant: &str) {
        self.out.push(b'{');
        self.string(variant);
        self.out.extend_from_slice(b": ");
    }
}

/// Lay out a float that serde_json wrote (`shortest`: `1e16`, `1.5e-7`,
/// `0.0001`, `-2.0`) as Python's `float.__repr__` does: the digits in
/// fixed notation while the decimal point falls within 16 digits and no
/// more than 4 places before the first digit, with `.0` when there is no
/// fractional part (`1e15` → `1000000000000000.0`); otherwise one digit,
/// the rest after a point, and a signed exponent of at least two digits
/// (`1e+16`, `1.5e-07`).
fn python_float(shortest: &[u8], out: &mut Vec<u8>) {
    let (negative, text) = match shortest.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, shortest),
    };
    let (mantissa, exponent) = match text.iter().position(|&b| b == b'e') {
        Some(at) => (&text[..at], std::str::from_utf8(&text[at + 1..]).ok().and_then(|e| e.parse::<i32>().ok())),
        None => (text, Some(0)),
    };
    let Some(exponent) = exponent else {
        // Not a shape ryu writes: keep what it wrote.
        out.extend_from_slice(shortest);
        return;
    };
    // The digits, and where the decimal point falls among them (`decpt`:
    // the value is 0.d1d2… × 10^decpt).
    let point = mantissa.iter().position(|&b| b == b'.').unwrap_or(mantissa.len());
    let mut digits: Vec<u8> = mantissa.iter().copied().filter(u8::is_ascii_digit).collect();
    let mut decpt = i32::try_from(point).unwrap_or(i32::MAX).saturating_add(exponent);
    let leading = digits.iter().take_while(|&&d| d == b'0').count();
    digits.drain(..leading);
    decpt -= i32::try_from(leading).unwrap_or(0);
    while digits.last() == Some(&b'0') {
        digits.pop();
    }
    if negative {
        out.push(b'-');
    }
    if digits.is_empty() {
        out.extend_from_slice(b"0.0");
        return;
    }
    let count = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    if decpt <= -4 || decpt > 16 {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        let e = decpt - 1;
        out.extend_from_slice(format!("e{}{:02}", if e < 0 { '-' } else { '+' }, e.unsigned_abs()).as_bytes());
    } else if decpt <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', decpt.unsigned_abs() as usize));
        out.extend_from_slice(&digits);
    } else if decpt >= count {
        out.extend_from_slice(&digits);
        out.extend(std::iter::repeat_n(b'0', (decpt - count) as usize));
        out.extend_from_slice(b".0");
    } else {
        let (whole, fraction) = digits.split_at(decpt as usize);
        out.extend_from_slice(whole);
        out.push(b'.');
        out.extend_from_slice(fraction);
    }
}

/// Write what stands for the byte that starts `rest` (one that needs an
/// escape, or the first of a character outside ASCII); the bytes it took.
fn escape(rest: &[u8], out: &mut Vec<u8>, enveloped: bool) -> usize {
    let backslash: &[u8] = if enveloped { b"\\\\" } else { b"\\" };
    let letter: &[u8] = match rest.first().copied().unwrap_or(0) {
        b'"' if enveloped => b"\\\"",
        b'"' => b"\"",
        b'\\' => backslash,
        b'\n' => b"n",
        b'\r' => b"r",
        b'\t' => b"t",
        0x08 => b"b",
        0x0c => b"f",
        b @ 0..0x80 => {
            unit(out, backslash, u16::from(b));
            return 1;
        }
        lead => {
            let len = match lead {
                0xf0.. => 4,
                0xe0.. => 3,
                _ => 2,
            };
            let c = rest.get(..len).and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.chars().next());
            let mut units = [0u16; 2];
            for u in c.unwrap_or(char::REPLACEMENT_CHARACTER).encode_utf16(&mut units) {
                unit(out, backslash, *u);
            }
            return len.min(rest.len());
        }
    };
    out.extend_from_slice(backslash);
    out.extend_from_slice(letter);
    1
}

/// `\uXXXX` for one UTF-16 unit.
fn unit(out: &mut Vec<u8>, backslash: &[u8], unit: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hex = |shift: u16| HEX[usize::from((unit >> shift) & 0xf)];
    out.extend_from_slice(backslash);
    out.extend_from_slice(&[b'u', hex(12), hex(8), hex(4), hex(0)]);
}

/// `serialize_i8` … `serialize_u32`: written as the 64-bit ones are.
macro_rules! narrow_integers_widened {
    () => {
        fn serialize_i8(self, v: i8) -> Result<(), Error> {
            self.serialize_i64(v.into())
        }

        fn serialize_i16(self, v: i16) -> Result<(), Error> {
            self.serialize_i64(v.into())
        }

        fn serialize_i32(self, v: i32) -> Result<(), Error> {
            self.serialize_i64(v.into())
        }

        fn serialize_u8(self, v: u8) -> Result<(), Error> {
            self.serialize_u64(v.into())
        }

        fn serialize_u16(self, v: u16) -> Result<(), Error> {
            self.serialize_u64(v.into())
        }

        fn serialize_u32(self, v: u32) -> Result<(), Error> {
            self.serialize_u64(v.into())
        }
    };
}

impl<'s, 'a> ser::Serializer for &'s mut Writer<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'s, 'a>;
    type SerializeTuple = Compound<'s, 'a>;
    type SerializeTupleStruct = Compound<'s, 'a>;
    type SerializeTupleVariant = Compound<'s, 'a>;
    type SerializeMap = Compound<'s, 'a>;
    type SerializeStruct = Compound<'s, 'a>;
    type SerializeStructVariant = Compound<'s, 'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    narrow_integers_widened!();

    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.number(|f, out| f.write_i64(out, v));
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.number(|f, out| f.write_i128(out, v));
        Ok(())
    }

    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.number(|f, out| f.write_u64(out, v));
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.number(|f, out| f.write_u128(out, v));
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        // NaN and infinity: see the module docs.
        match v.is_finite() {
            true => self.float(|f, out| f.write_f32(out, v)),
            false => self.null(),
        }
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        match v.is_finite() {
            true => self.float(|f, out| f.write_f64(out, v)),
            false => self.null(),
        }
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.string(v.encode_utf8(&mut [0u8; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.string(v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        use ser::SerializeSeq as _;
        let mut seq = self.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(b)?;
        }
        seq.end()
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.null();
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        self.null();
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.null();
        Ok(())
    }

    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<(), Error> {
        self.string(variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.open_variant(variant);
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'s, 'a>, Error> {
        Ok(Compound::open(self, b"[", b"]"))
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'s, 'a>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Compound<'s, 'a>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'s, 'a>, Error> {
        self.open_variant(variant);
        Ok(Compound::open(self, b"[", b"]}"))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'s, 'a>, Error> {
        Ok(Compound::open(self, b"{", b"}"))
    }

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Compound<'s, 'a>, Error> {
        if name == RAW_VALUE {
            // A `RawValue`: its one field is the JSON text, written as it is.
            return Ok(Compound { w: self, first: true, close: b"", raw: true });
        }
        Ok(Compound::open(self, b"{", b"}"))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'s, 'a>, Error> {
        self.open_variant(variant);
        Ok(Compound::open(self, b"{", b"}}"))
    }
}

/// An array, object or a variant's contents being written.
pub(crate) struct Compound<'s, 'a> {
    w: &'s mut Writer<'a>,
    first: bool,
    /// What ends it.
    close: &'static [u8],
    /// A `RawValue`'s one field.
    raw: bool,
}

impl<'s, 'a> Compound<'s, 'a> {
    fn open(w: &'s mut Writer<'a>, open: &[u8], close: &'static [u8]) -> Self {
        w.out.extend_from_slice(open);
        Self { w, first: true, close, raw: false }
    }

    /// `", "` before every item but the first.
    fn separate(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.w.out.extend_from_slice(b", ");
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.separate();
        value.serialize(&mut *self.w)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        if self.raw {
            return value.serialize(Scalar { w: &mut *self.w, raw: true });
        }
        self.separate();
        self.w.string(key);
        self.w.out.extend_from_slice(b": ");
        value.serialize(&mut *self.w)
    }

    fn close(self) -> Result<(), Error> {
        self.w.out.extend_from_slice(self.close);
        Ok(())
    }
}

/// The compound traits whose items are all written alike: `$write` of
/// each writes one item.
macro_rules! items {
    ($($compound:ident::$write:ident),*) => {$(
        impl ser::$compound for Compound<'_, '_> {
            type Ok = ();
            type Error = Error;

            fn $write<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }

            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )*};
}

items!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// The compound traits of named fields.
macro_rules! fields {
    ($($compound:ident),*) => {$(
        impl ser::$compound for Compound<'_, '_> {
            type Ok = ();
            type Error = Error;

            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
                self.field(key, value)
            }

            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.separate();
        key.serialize(Scalar { w: &mut *self.w, raw: false })
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.w.out.extend_from_slice(b": ");
        value.serialize(&mut *self.w)
    }

    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// A map key (a string; numbers and booleans quoted, as serde_json writes
/// them), or with `raw` a `RawValue`'s text.
struct Scalar<'s, 'a> {
    w: &'s mut Writer<'a>,
    raw: bool,
}

impl Scalar<'_, '_> {
    /// A number or boolean as a key: quoted.
    fn quoted(self, write: impl FnOnce(&mut Writer<'_>)) -> Result<(), Error> {
        if self.raw {
            return Err(self.refuse());
        }
        self.w.quote();
        write(self.w);
        self.w.quote();
        Ok(())
    }

    fn text(self, s: &str) -> Result<(), Error> {
        match self.raw {
            true => self.w.raw(s),
            false => self.w.string(s),
        }
        Ok(())
    }

    fn refuse(&self) -> Error {
        match self.raw {
            true => Error("a raw value must be JSON text".into()),
            false => key_must_be_a_string(),
        }
    }
}

impl ser::Serializer for Scalar<'_, '_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.quoted(|w| w.out.extend_from_slice(if v { b"true" } else { b"false" }))
    }

    narrow_integers_widened!();

    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.quoted(|w| w.number(|f, out| f.write_i64(out, v)))
    }

    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.quoted(|w| w.number(|f, out| f.write_i128(out, v)))
    }

    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.quoted(|w| w.number(|f, out| f.write_u64(out, v)))
    }

    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.quoted(|w| w.number(|f, out| f.write_u128(out, v)))
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        if !v.is_finite() {
            return Err(Error("float key must be finite (got NaN or +/-inf)".into()));
        }
        self.quoted(|w| w.float(|f, out| f.write_f32(out, v)))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        if !v.is_finite() {
            return Err(Error("float key must be finite (got NaN or +/-inf)".into()));
        }
        self.quoted(|w| w.float(|f, out| f.write_f64(out, v)))
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.text(v.encode_utf8(&mut [0u8; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.text(v)
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
        Err(self.refuse())
    }

    fn serialize_none(self) -> Result<(), Error> {
        Err(self.refuse())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        Err(self.refuse())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Err(self.refuse())
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), Error> {
        self.text(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Error> {
        Err(self.refuse())
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Impossible<(), Error>, Error> {
        Err(self.refuse())
    }

    fn serialize_tuple(self, _: usize) -> Result<Impossible<(), Error>, Error> {
        Err(self.refuse())
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Impossible<(), Error>, Error> {
        Err(self.refuse())
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Impossible<(), Error>, Error> {
        Err(self.refuse())
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Impossible<(), Error>, Error> {
        Err(self.refuse())
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Impossible<(), Error>, Error> {
        Err(self.refuse())
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Impossible<(), Error>, Error> {
        Err(self.refuse())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, io};

    use serde::Serialize;
    use serde_json::{ser::CharEscape, value::RawValue, Value};

    /// The reference: serde_json's own serializer with Python's separators
    /// and ASCII escapes, as nova-rs wrote messages before [`super::Writer`].
    struct PyFormatter {
        enveloped: bool,
    }

    impl PyFormatter {
        /// One backslash of the inner JSON, as written.
        fn backslash(&self) -> &'static [u8] {
            if self.enveloped {
                b"\\\\"
            } else {
                b"\\"
            }
        }

        /// One `"` of the inner JSON, as written.
        fn quote(&self) -> &'static [u8] {
            if self.enveloped {
                b"\\\""
            } else {
                b"\""
            }
        }

        /// `\uXXXX` for one UTF-16 unit.
        fn write_unit<W: ?Sized + io::Write>(&self, w: &mut W, unit: u16) -> io::Result<()> {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            w.write_all(self.backslash())?;
            let hex = |shift: u16| HEX[usize::from((unit >> shift) & 0xf)];
            w.write_all(&[b'u', hex(12), hex(8), hex(4), hex(0)])
        }
    }

    impl serde_json::ser::Formatter for PyFormatter {
        fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }

        fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
            w.write_all(python_repr(value).as_bytes())
        }

        fn write_f32<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
            // The shortest digits of the f32, read back as the f64 they spell.
            w.write_all(python_repr(value.to_string().parse().unwrap_or_default()).as_bytes())
        }

        fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }

        fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            w.write_all(b": ")
        }

        fn begin_string<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            w.write_all(self.quote())
        }

        fn end_string<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            w.write_all(self.quote())
        }

        fn write_char_escape<W: ?Sized + io::Write>(&mut self, w: &mut W, escape: CharEscape) -> io::Result<()> {
            let letter: &[u8] = match escape {
                CharEscape::Quote => self.quote(),
                CharEscape::ReverseSolidus => self.backslash(),
                CharEscape::Solidus => b"/",
                CharEscape::Backspace => b"b",
                CharEscape::FormFeed => b"f",
                CharEscape::LineFeed => b"n",
                CharEscape::CarriageReturn => b"r",
                CharEscape::Tab => b"t",
                CharEscape::AsciiControl(byte) => return self.write_unit(w, u16::from(byte)),
            };
            w.write_all(self.backslash())?;
            w.write_all(letter)
        }

        fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
            let bytes = fragment.as_bytes();
            // serde_json has escaped the control characters already: only
            // non-ASCII and DEL are left to write as `\uXXXX`.
            if fragment.is_ascii() && !bytes.contains(&0x7f) {
                return w.write_all(bytes);
            }
            let mut start = 0;
            for (i, c) in fragment.char_indices() {
                if (' '..'\u{7f}').contains(&c) {
                    continue;
                }
                w.write_all(&bytes[start..i])?;
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    self.write_unit(w, *unit)?;
                }
                start = i + c.len_utf8();
            }
            w.write_all(&bytes[start..])
        }

        fn write_raw_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
            if !self.enveloped {
                return w.write_all(fragment.as_bytes());
            }
            for piece in fragment.as_bytes().split_inclusive(|b| matches!(b, b'"' | b'\\')) {
                match piece.split_last() {
                    Some((last @ (b'"' | b'\\'), head)) => {
                        w.write_all(head)?;
                        w.write_all(b"\\")?;
                        w.write_all(&[*last])?;
                    }
                    _ => w.write_all(piece)?,
                }
            }
            Ok(())
        }
    }

    /// Python's `repr` of a finite float, from the standard library's own
    /// shortest digits (`{:e}`), independently of ryu: a second way to the
    /// layout `python_float` gives.
    fn python_repr(value: f64) -> String {
        let scientific = format!("{:e}", value.abs());
        let (mantissa, exponent) = scientific.split_once('e').unwrap();
        let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        let digits = digits.trim_end_matches('0');
        let sign = if value.is_sign_negative() { "-" } else { "" };
        if digits.is_empty() {
            return format!("{sign}0.0");
        }
        let decpt = exponent.parse::<i32>().unwrap() + 1;
        let body = if !(-4 < decpt && decpt <= 16) {
            let (first, rest) = digits.split_at(1);
            let point = if rest.is_empty() { String::new() } else { format!(".{rest}") };
            format!("{first}{point}e{}{:02}", if decpt > 0 { '+' } else { '-' }, (decpt - 1).abs())
        } else if decpt <= 0 {
            format!("0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(decpt as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..decpt as usize], &digits[decpt as usize..])
        };
        format!("{sign}{body}")
    }

    /// Pins [`super::RAW_VALUE`]: serde_json's private name for a
    /// `RawValue` is how pyjson knows JSON text from a string.
    #[test]
    fn a_raw_value_is_copied_not_quoted() {
        let raw = RawValue::from_string("{\"a\":[1,2]}".into()).unwrap();
        // Were the name to change, the text would come out as a struct
        // holding a string, quoted.
        assert_eq!(ours(&raw, false).unwrap(), "{\"a\":[1,2]}", "serde_json renamed RawValue's struct: see RAW_VALUE");
    }

    #[test]
    fn floats_are_laid_out_as_pythons_repr() {
        for (value, python) in [
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-7, "1e-07"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (2.0, "2.0"),
            (123.456, "123.456"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-12345678901234567890.0, "-1.2345678901234567e+19"),
        ] {
            assert_eq!(ours(&value, false).unwrap(), python, "{value:e}");
            assert_eq!(python_repr(value), python, "{value:e}");
        }
    }

    fn reference<T: Serialize + ?Sized>(value: &T, enveloped: bool) -> Result<String, String> {
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter { enveloped });
        value.serialize(&mut ser).map_err(|e| e.to_string())?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn ours<T: Serialize + ?Sized>(value: &T, enveloped: bool) -> Result<String, String> {
        let mut out = Vec::new();
        super::write(value, &mut out, enveloped).map_err(|e| e.to_string())?;
        Ok(String::from_utf8(out).unwrap())
    }

    /// Both ways, plain and enveloped, give the same text; enveloped is the
    /// plain text quoted as a JSON string (without its quotes).
    fn same<T: Serialize + ?Sized>(value: &T) {
        let plain = ours(value, false);
        assert_eq!(plain, reference(value, false));
        let enveloped = ours(value, true);
        assert_eq!(enveloped, reference(value, true));
        if let (Ok(plain), Ok(enveloped)) = (plain, enveloped) {
            assert!(plain.is_ascii(), "{plain}");
            let unquoted: String = serde_json::from_str(&format!("\"{enveloped}\"")).unwrap();
            assert_eq!(unquoted, plain);
        }
    }

    fn random_string(rng: &mut fastrand::Rng) -> String {
        const ODD: &[char] = &[
            '"',
            '\\',
            '/',
            '\n',
            '\r',
            '\t',
            '\u{8}',
            '\u{c}',
            '\u{0}',
            '\u{1f}',
            '\u{7f}',
            'é',
            '€',
            '\u{2028}',
            '😀',
            '\u{10ffff}',
        ];
        let len = if rng.u8(..8) == 0 { rng.usize(..300) } else { rng.usize(..24) };
        let odd = rng.usize(1..=40);
        (0..len).map(|_| if rng.usize(..odd) == 0 { ODD[rng.usize(..ODD.len())] } else { rng.alphanumeric() }).collect()
    }

    fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
        match rng.u8(..if depth > 3 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.bool()),
            2 => Value::from(rng.i64(..)),
            3 => Value::from(rng.u64(..)),
            4 => Value::from((rng.f64() - 0.5) * 10f64.powi(rng.i32(-30..30))),
            5 => Value::from(random_string(rng)),
            6 => Value::Array((0..rng.usize(..5)).map(|_| random_value(rng, depth + 1)).collect()),
            _ => {
                Value::Object((0..rng.usize(..5)).map(|_| (random_string(rng), random_value(rng, depth + 1))).collect())
            }
        }
    }

    #[test]
    fn any_json_is_written_as_serde_json_with_python_style_writes_it() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..3000 {
            same(&random_value(&mut rng, 0));
        }
    }

    #[test]
    fn every_shape_of_the_serde_data_model_is_written_the_same() {
        #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
        enum Key {
            Plain,
            #[serde(rename = "r\u{e9}named")]
            Renamed,
        }
        #[derive(Serialize)]
        enum Shape {
            Unit,
            Newtype(String),
            Tuple(i8, f32),
            Struct { wide: u128, c: Option<char> },
        }
        #[derive(Serialize)]
        struct Unit;
        #[derive(Serialize)]
        struct Newtype(i128);
        #[derive(Serialize)]
        struct Pair(u16, Option<()>);
        struct Bytes(&'static [u8]);
        impl Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        #[derive(Serialize)]
        struct All {
            shapes: Vec<Shape>,
            tuple: (u8, i64, bool),
            unit: (),
            unit_struct: Unit,
            newtype: Newtype,
            pair: Pair,
            bytes: Bytes,
            empty: Vec<u8>,
            not_finite: [f64; 3],
            int_keys: BTreeMap<i32, &'static str>,
            bool_keys: BTreeMap<bool, u8>,
            char_keys: BTreeMap<char, u8>,
            variant_keys: BTreeMap<Key, u8>,
            raw: Box<RawValue>,
            #[serde(rename = "k\"ey\u{1}")]
            odd_name: f32,
        }
        let all = All {
            shapes: vec![
                Shape::Unit,
                Shape::Newtype("n\"é".into()),
                Shape::Tuple(-8, 0.1),
                Shape::Struct { wide: u128::MAX, c: Some('😀') },
                Shape::Struct { wide: 0, c: None },
            ],
            tuple: (255, i64::MIN, true),
            unit: (),
            unit_struct: Unit,
            newtype: Newtype(i128::MIN),
            pair: Pair(7, None),
            bytes: Bytes(b"\x00\xffab"),
            empty: Vec::new(),
            not_finite: [f64::NAN, f64::INFINITY, 1e300],
            int_keys: [(-1, "a"), (20, "\u{7f}")].into(),
            bool_keys: [(false, 1), (true, 2)].into(),
            char_keys: [('"', 1), ('é', 2)].into(),
            variant_keys: [(Key::Plain, 1), (Key::Renamed, 2)].into(),
            raw: RawValue::from_string(r#"{"a": [1, "x\"y\\"], "b": null}"#.into()).unwrap(),
            odd_name: -0.0,
        };
        same(&all);
    }

    #[test]
    fn keys_that_are_not_strings_and_failing_values_are_refused_alike() {
        struct FloatKeys(f64);
        impl Serialize for FloatKeys {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(&self.0, &1)?;
                map.end()
            }
        }
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("this value cannot be written"))
            }
        }
        let unit_keys: BTreeMap<(), u8> = [((), 1)].into();
        let list_keys: BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into();
        for e in [ours(&unit_keys, false), ours(&list_keys, true), ours(&vec![Fails], false)] {
            assert!(e.is_err());
        }
        same(&unit_keys);
        same(&list_keys);
        same(&[Fails]);
        same(&FloatKeys(1.5));
        same(&FloatKeys(f64::NAN));
        assert!(ours(&FloatKeys(f64::NAN), false).unwrap_err().contains("finite"));
    }

    #[test]
    fn raw_json_with_whitespace_stays_one_string_in_the_envelope() {
        let raw = RawValue::from_string("{\"a\":\n\t[1,\r\n \"\\\"\"]}".into()).unwrap();
        let plain = ours(&raw, false).unwrap();
        assert_eq!(plain, raw.get());
        let enveloped = ours(&raw, true).unwrap();
        let unquoted: String = serde_json::from_str(&format!("\"{enveloped}\"")).unwrap();
        assert_eq!(unquoted, plain);
    }

    #[test]
    fn copying_by_words_gives_what_a_byte_loop_gives() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"ab~ \"\\\x01\x1f\x7f\x80\xc3\xa9\xff";
        for _ in 0..5000 {
            let len = rng.usize(0..200);
            // Sometimes dense with special bytes, sometimes long runs without.
            let sparse = rng.usize(1..=120);
            let bytes: Vec<u8> = (0..len)
                .map(|_| if rng.usize(..sparse) == 0 { alphabet[rng.usize(..alphabet.len())] } else { b'a' })
                .collect();
            let from = rng.usize(0..=len);
            // Each special byte doubled, the rest copied: what a byte loop gives.
            let doubled = |wide: bool| -> Vec<u8> {
                let special = |b: &u8| matches!(b, b'"' | b'\\' | 0..=0x1f) || (wide && *b >= 0x7f);
                bytes[from..].iter().flat_map(|b| if special(b) { vec![*b, *b] } else { vec![*b] }).collect()
            };
            let double = |rest: &[u8], out: &mut Vec<u8>| {
                out.extend_from_slice(&[rest[0], rest[0]]);
                Some(1)
            };
            let mut out = Vec::new();
            super::scan::copy_runs::<false>(&bytes[from..], &mut out, double);
            assert_eq!(out, doubled(false), "{bytes:?} from {from}");
            out.clear();
            super::scan::copy_runs::<true>(&bytes[from..], &mut out, double);
            assert_eq!(out, doubled(true), "{bytes:?} from {from}, wide");
        }
    }
}
