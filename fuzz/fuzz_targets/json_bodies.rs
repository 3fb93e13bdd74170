//! ecsd's strict JSON body parser (`batch::from_json` / `parse_body`) on the
//! bodies of the batch reset, the single reset, `cloudservers/action` and the
//! server tags action, each with the validation that follows the parse.
//!
//! The input is the raw body. Invariants: nothing panics; `from_json` accepts
//! exactly what serde_json accepts as one value; a body is refused without
//! `Content-Type: application/json`; a body a route's parser accepts is one
//! JSON value (UTF-8 throughout); re-serialized (compact and pretty) it is
//! accepted again and understood the same; whitespace after it changes
//! nothing; any other byte after it is refused as trailing data.
#![no_main]

use bytes::Bytes;
use ecsd::Error;
use ecsd::fuzzing::{self, JsonError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const JSON: Option<&str> = Some("application/json;charset=utf-8");

fn is_trailing(e: &Error) -> bool {
    matches!(e, Error::Invalid { message, .. } if message == ecsd::batch::TRAILING_MESSAGE)
}

/// One route's parser: its answer must survive re-serialization of the body.
fn check<T: PartialEq + std::fmt::Debug>(
    name: &str,
    parse: impl Fn(Option<&str>, &Bytes) -> Result<T, Error>,
    body: &Bytes,
    value: &Result<Value, serde_json::Error>,
) {
    let got = parse(JSON, body);
    // The content type is checked before anything else.
    assert!(
        parse(Some("text/plain"), body).is_err(),
        "{name}: accepted text/plain"
    );
    assert!(
        parse(None, body).is_err(),
        "{name}: accepted no content type"
    );
    if body.is_empty() {
        assert!(matches!(got, Err(Error::EmptyBody)), "{name}: empty body");
        return;
    }
    let Ok(got) = got else { return };
    match value {
        Ok(value) => {
            for re in [
                serde_json::to_vec(value).expect("a Value serializes"),
                serde_json::to_vec_pretty(value).expect("a Value serializes"),
            ] {
                match parse(JSON, &Bytes::from(re)) {
                    Ok(again) => {
                        assert_eq!(
                            got, again,
                            "{name}: re-serialized body understood differently"
                        )
                    }
                    Err(e) => panic!("{name}: re-serialized body refused: {e:?}"),
                }
            }
        }
        // Valid JSON (RFC 8259's grammar) that a Value cannot hold, in a field
        // the body type ignores: a number beyond f64, an unpaired surrogate
        // escape (`"\udf45"`, `"\ud871x"`). Nothing to re-serialize.
        // serde_json's private RawValue token as a key: a `Value` reads that
        // object as raw JSON and may refuse it; the route's types do not.
        Err(_) if has_raw_value_token(body) => {}
        Err(e)
            if [
                "number out of range",
                "surrogate",
                "hex escape",
                "unicode code point",
            ]
            .iter()
            .any(|m| e.to_string().contains(m)) => {}
        Err(e) => panic!("{name}: accepted a body that is not one JSON value: {e}"),
    }
    let mut spaced = body.to_vec();
    spaced.extend_from_slice(b" \r\n\t");
    assert_eq!(
        parse(JSON, &Bytes::from(spaced)).ok().as_ref(),
        Some(&got),
        "{name}: trailing whitespace changed the answer"
    );
    for junk in [&b"]"[..], b"{}", b"\0", b"x"] {
        let mut trailing = body.to_vec();
        trailing.extend_from_slice(junk);
        match parse(JSON, &Bytes::from(trailing)) {
            Err(e) if is_trailing(&e) => {}
            other => panic!("{name}: trailing {junk:?} not refused as trailing data: {other:?}"),
        }
    }
}

/// Whether `data` holds serde_json's private RawValue token.
fn has_raw_value_token(data: &[u8]) -> bool {
    const TOKEN: &[u8] = b"$serde_json::private::RawValue";
    data.windows(TOKEN.len()).any(|w| w == TOKEN)
}

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    // The generic parser: exactly serde_json's one value, nothing after it.
    let value: Result<Value, serde_json::Error> = serde_json::from_slice(data);
    match (&value, fuzzing::from_json::<Value>(data)) {
        (Ok(v), Ok(ours)) => {
            assert_eq!(v, &ours);
            let compact = serde_json::to_vec(v).expect("a Value serializes");
            assert!(
                fuzzing::from_json::<Value>(&compact).is_ok(),
                "re-serialized Value refused"
            );
        }
        // serde_json's private RawValue token as a key (its `raw_value`
        // feature is on in this build) makes a `Value` read that object as
        // raw JSON, and a value it cannot take is a data error at that path:
        // serde_json's own behaviour, refused 400 all the same.
        (Err(_), Err(JsonError::Field(_))) if has_raw_value_token(data) => {}
        (_, Err(JsonError::Field(p))) => panic!("a Value has no fields to miss: {p}"),
        (Err(_), Ok(_)) => panic!("from_json accepted what serde_json refuses"),
        (Ok(_), Err(e)) => panic!("from_json refused a JSON value: {e:?}"),
        (Err(_), Err(_)) => {}
    }
    check("batch reset", fuzzing::batch_reset, &body, &value);
    check("single reset", fuzzing::single_reset, &body, &value);
    check("power action", fuzzing::power_action, &body, &value);
    check("tags action", fuzzing::tags_action, &body, &value);
    // The tags body has a serializer: what parses re-serializes and re-parses equal.
    if let Ok(tags) = fuzzing::tags_action(JSON, &body) {
        let re = serde_json::to_vec(&tags).expect("serializes");
        assert_eq!(
            fuzzing::tags_action(JSON, &Bytes::from(re)).ok(),
            Some(tags)
        );
    }
});
