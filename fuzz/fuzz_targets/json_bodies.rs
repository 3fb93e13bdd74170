//! ecsd's strict JSON body parser (`batch::from_json` / `parse_body`) on the
//! bodies of the batch reset, the single reset, `cloudservers/action` and the
//! server tags action, each with the validation that follows the parse.
//!
//! The input is the raw body. Invariants: nothing panics; a body is refused
//! without `Content-Type: application/json`; a body one parser accepts is one
//! JSON value; re-serialized (compact and pretty) it is accepted again and
//! understood the same; whitespace after it changes nothing; any other byte
//! after it is refused as trailing data.
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
    value: Option<&Value>,
) {
    let got = parse(JSON, body);
    // The content type is checked before anything else.
    let bad_type = parse(Some("text/plain"), body);
    assert!(bad_type.is_err(), "{name}: accepted text/plain");
    assert!(
        parse(None, body).is_err(),
        "{name}: accepted no content type"
    );
    if body.is_empty() {
        assert!(matches!(got, Err(Error::EmptyBody)), "{name}: empty body");
        return;
    }
    let Ok(got) = got else { return };
    let value =
        value.unwrap_or_else(|| panic!("{name}: accepted a body that is not one JSON value"));
    for re in [
        serde_json::to_vec(value).expect("a Value serializes"),
        serde_json::to_vec_pretty(value).expect("a Value serializes"),
    ] {
        let again = parse(JSON, &Bytes::from(re));
        match again {
            Ok(again) => assert_eq!(
                got, again,
                "{name}: re-serialized body understood differently"
            ),
            Err(e) => panic!("{name}: re-serialized body refused: {e:?}"),
        }
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

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    // The generic parser: one JSON value, nothing after it.
    let value = match fuzzing::from_json::<Value>(data) {
        Ok(v) => {
            let compact = serde_json::to_vec(&v).expect("a Value serializes");
            assert!(
                fuzzing::from_json::<Value>(&compact).is_ok(),
                "re-serialized Value refused"
            );
            Some(v)
        }
        Err(JsonError::Field(p)) => panic!("a Value has no fields to miss: {p}"),
        Err(_) => None,
    };
    check("batch reset", fuzzing::batch_reset, &body, value.as_ref());
    check("single reset", fuzzing::single_reset, &body, value.as_ref());
    check("power action", fuzzing::power_action, &body, value.as_ref());
    check("tags action", fuzzing::tags_action, &body, value.as_ref());
    // The tags body has a serializer: what parses re-serializes and re-parses equal.
    if let Ok(tags) = fuzzing::tags_action(JSON, &body) {
        let re = serde_json::to_vec(&tags).expect("serializes");
        assert_eq!(
            fuzzing::tags_action(JSON, &Bytes::from(re)).ok(),
            Some(tags)
        );
    }
});
