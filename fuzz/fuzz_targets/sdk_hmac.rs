//! SDK-HMAC-SHA256 (`ecs-sign`): the `Authorization` header parser, the
//! canonical request, and sign-then-verify.
//!
//! Invariants: nothing panics; a parsed header prints back (`header_value`)
//! to a value that parses equal; the canonical URI and query are fixed points
//! (canonicalizing them again changes nothing); a request signed by `sign`
//! verifies the way ecsd verifies it (parse the header, canonical request over
//! exactly its SignedHeaders), and does not verify with another secret key,
//! another body or another signature.
#![no_main]

use arbitrary::Arbitrary;
use ecs_sign::{
    Authorization, EMPTY_SHA256, canonical_query, canonical_request, canonical_uri, parse_date,
    sha256_hex, sign, string_to_sign, verify,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    authorization: &'a str,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    date: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
    access_key: &'a str,
    secret_key: &'a [u8],
    flip: u8,
}

/// An HTTP header name (RFC 9110 token), which is what a server can receive.
fn token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fuzz_target!(|input: Input<'_>| {
    // Any Authorization value: parse, print, parse again.
    if let Ok(a) = Authorization::parse(input.authorization) {
        let printed = a.header_value();
        assert_eq!(
            Authorization::parse(&printed).as_ref(),
            Ok(&a),
            "{printed:?}"
        );
        assert_eq!(a.signature.len(), 64);
    }
    let _ = parse_date(input.date);

    // Canonical forms are fixed points.
    let uri = canonical_uri(input.path);
    assert!(uri.ends_with('/'));
    assert_eq!(canonical_uri(&uri), uri, "canonical URI not stable");
    let query = canonical_query(input.query);
    assert_eq!(canonical_query(&query), query, "canonical query not stable");

    // Arbitrary headers, arbitrary signed-header names.
    let names: Vec<String> = input
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    let lookup = |name: &str| {
        input
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    };
    let creq = canonical_request(
        input.method,
        input.path,
        input.query,
        &names,
        lookup,
        EMPTY_SHA256,
    );
    assert!(creq.is_some(), "every signed header is present");

    // Sign, then verify as ecsd does. Access keys are ecsd's (letters and
    // digits); header names are HTTP tokens.
    let ak: String = input
        .access_key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let ak = if ak.is_empty() { "AK".to_owned() } else { ak };
    let mut headers: Vec<(String, String)> = vec![("X-Sdk-Date".into(), input.date.into())];
    headers.extend(
        input
            .headers
            .iter()
            .filter(|(n, _)| token(n))
            .map(|(n, v)| (n.to_string(), v.to_string())),
    );
    let signed = sign(
        &ak,
        input.secret_key,
        input.method,
        input.path,
        input.query,
        &headers,
        input.body,
    )
    .expect("X-Sdk-Date is present");
    let auth = Authorization::parse(&signed).expect("our own header parses");
    assert_eq!(auth.access_key, ak);
    assert!(auth.signed_headers.iter().any(|h| h == "x-sdk-date"));
    let server_lookup = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    };
    let date = server_lookup("x-sdk-date").expect("present");
    let date = std::str::from_utf8(date).expect("a str");
    let payload = if input.body.is_empty() {
        EMPTY_SHA256.to_owned()
    } else {
        sha256_hex(input.body)
    };
    let creq = canonical_request(
        input.method,
        input.path,
        input.query,
        &auth.signed_headers,
        server_lookup,
        &payload,
    )
    .expect("signed headers present");
    let sts = string_to_sign(date, &creq);
    assert!(
        verify(input.secret_key, &sts, &auth.signature),
        "signed request does not verify"
    );

    // Another secret key (HMAC pads short keys with zeros: flip a bit, or
    // append a non-zero byte), another body, another signature: refused.
    let mut other_key = input.secret_key.to_vec();
    match other_key.first_mut() {
        Some(b) => *b ^= 1 << (input.flip % 8),
        None => other_key.push(1),
    }
    assert!(
        !verify(&other_key, &sts, &auth.signature),
        "verified with another key"
    );
    let mut other_body = input.body.to_vec();
    other_body.push(input.flip);
    let other_creq = canonical_request(
        input.method,
        input.path,
        input.query,
        &auth.signed_headers,
        server_lookup,
        &sha256_hex(&other_body),
    )
    .expect("signed headers present");
    assert!(
        !verify(
            input.secret_key,
            &string_to_sign(date, &other_creq),
            &auth.signature
        ),
        "verified with another body"
    );
    let mut sig = auth.signature.into_bytes();
    let i = usize::from(input.flip) % sig.len();
    sig[i] = if sig[i] == b'0' { b'1' } else { b'0' };
    let sig = String::from_utf8(sig).expect("hex");
    assert!(
        !verify(input.secret_key, &sts, &sig),
        "verified another signature"
    );
});
