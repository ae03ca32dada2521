//! pyjson against its ground truth: Python's own `json.dumps`, in the
//! interop virtualenv (the Python oslo.messaging runs on). Random values,
//! strings of every awkward kind, integers, and floats across the whole
//! exponent range, are written by both, plain and inside the 2.0
//! envelope's string, and must come out byte for byte the same. The one
//! difference kept on purpose (NaN and infinities; see `nova_rpc::pyjson`)
//! is pinned too.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use serde_json::{Map, Value};

/// What Python prints for each input line (a JSON value): `json.dumps` of
/// it, then `json.dumps` of that text (the envelope's quoting).
const DUMPS: &str = r#"
import json, sys
for line in sys.stdin:
    text = json.dumps(json.loads(line))
    print(text)
    print(json.dumps(text)[1:-1])
"#;

fn python_dumps(values: &[Value]) -> Vec<String> {
    let mut child = Command::new(nova_tests::interop::python())
        .args(["-c", DUMPS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the interop Python runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let input: String = values.iter().map(|v| format!("{v}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("Python ends");
    writer.join().expect("writer").expect("written");
    assert!(out.status.success(), "Python failed");
    String::from_utf8(out.stdout).expect("ASCII").lines().map(str::to_owned).collect()
}

fn random_string(rng: &mut fastrand::Rng) -> String {
    let pick = [
        'a',
        'Z',
        '0',
        ' ',
        '"',
        '\\',
        '/',
        '\n',
        '\r',
        '\t',
        '\u{0}',
        '\u{1f}',
        '\u{7f}',
        '\u{80}',
        'é',
        '€',
        '\u{2028}',
        '\u{fffd}',
        '😀',
        '\u{10ffff}',
        '<',
        '&',
        '\'',
    ];
    (0..rng.usize(0..12)).map(|_| if rng.bool() { pick[rng.usize(..pick.len())] } else { rng.char(..) }).collect()
}

fn random_float(rng: &mut fastrand::Rng) -> f64 {
    match rng.u8(0..4) {
        // Any bit pattern that is a finite float.
        0 => loop {
            let f = f64::from_bits(rng.u64(..));
            if f.is_finite() {
                break f;
            }
        },
        // Around the places Python's layout changes (1e-4, 1e16).
        1 => (rng.f64() + 0.5) * 10f64.powi(rng.i32(-8..20)),
        // Round numbers and short decimals.
        2 => rng.i64(-1_000_000..1_000_000) as f64 / 10f64.powi(rng.i32(0..6)),
        _ => [0.0, -0.0, 1e16, 1e15, 1e-7, 1e-4, 1e-5, 5e-324, f64::MAX, f64::MIN_POSITIVE, 0.1, 1.0 / 3.0]
            [rng.usize(..12)],
    }
}

fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    let leaf = depth >= 3 || rng.u8(0..3) > 0;
    match rng.u8(0..if leaf { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => Value::from(rng.i64(..)),
        3 => Value::from(rng.u64(..)),
        4 => Value::from(random_float(rng)),
        5 => Value::String(random_string(rng)),
        6 => Value::Array((0..rng.usize(0..5)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => Value::Object(
            (0..rng.usize(0..5)).map(|_| (random_string(rng), random_value(rng, depth + 1))).collect::<Map<_, _>>(),
        ),
    }
}

#[test]
fn pyjson_writes_what_json_dumps_writes() {
    let mut rng = fastrand::Rng::with_seed(20261207);
    let values: Vec<Value> = (0..4000).map(|_| random_value(&mut rng, 0)).collect();
    let python = python_dumps(&values);
    assert_eq!(python.len(), values.len() * 2, "Python answered every value, plain and quoted");
    let mut compared = 0;
    for (value, expected) in values.iter().zip(python.chunks(2)) {
        let plain = nova_rpc::pyjson::to_string(value).expect("written");
        assert_eq!(plain, expected[0], "plain, for {value}");
        let enveloped = nova_rpc::pyjson::to_enveloped_string(value).expect("written");
        assert_eq!(enveloped, expected[1], "inside the envelope, for {value}");
        compared += 1;
    }
    assert_eq!(compared, 4000);
}

#[test]
fn floats_at_the_edges_of_pythons_layout() {
    let floats = [1e16, 9999999999999998.0, 1e15, 1e-4, 9.9999e-5, 1e-5, 1e-7, 123456789.125, -0.0, 5e-324, f64::MAX];
    let values: Vec<Value> = floats.iter().map(|&f| Value::from(f)).collect();
    let python = python_dumps(&values);
    for (value, expected) in values.iter().zip(python.chunks(2)) {
        assert_eq!(nova_rpc::pyjson::to_string(value).unwrap(), expected[0], "{value}");
    }
}

/// Python writes NaN and the infinities as `NaN` and `Infinity`, which are
/// not JSON and which no nova-rs reader takes; pyjson writes `null`.
#[test]
fn nan_and_infinity_are_written_null_where_python_writes_words() {
    let out = Command::new(nova_tests::interop::python())
        .args(["-c", "import json; print(json.dumps([float('nan'), float('inf'), -float('inf')]))"])
        .output()
        .expect("Python runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[NaN, Infinity, -Infinity]");
    let ours = nova_rpc::pyjson::to_string(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY]).unwrap();
    assert_eq!(ours, "[null, null, null]");
    assert!(serde_json::from_str::<Value>("[NaN]").is_err(), "serde_json refuses Python's words, hence null");
}
