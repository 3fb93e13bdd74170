//! The password policy (`ecs-policy`, contract §2.4): arbitrary password,
//! OS name and strictness. Invariants: nothing panics; the answer is
//! deterministic; Full accepts only what Basic accepts; an accepted password
//! obeys every rule, checked here independently of the crate's code; the
//! first rule (length) fails exactly when the length is out of range.
#![no_main]

use arbitrary::Arbitrary;
use ecs_policy::{MAX_LEN, MIN_LEN, OsType, SPECIALS, Strictness, Violation, check};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    password: &'a str,
    /// An OS name as an API caller or a stored server would give it.
    os_name: &'a str,
    windows: bool,
    full: bool,
}

fuzz_target!(|input: Input<'_>| {
    // OS names: exactly "linux" / "windows" in any case.
    let parsed = OsType::parse(input.os_name);
    let expect = if input.os_name.eq_ignore_ascii_case("linux") {
        Some(OsType::Linux)
    } else if input.os_name.eq_ignore_ascii_case("windows") {
        Some(OsType::Windows)
    } else {
        None
    };
    assert_eq!(parsed, expect);

    let os = parsed.unwrap_or(if input.windows {
        OsType::Windows
    } else {
        OsType::Linux
    });
    assert_eq!(OsType::parse(os.as_str()), Some(os));
    let strictness = if input.full {
        Strictness::Full
    } else {
        Strictness::Basic
    };
    let p = input.password;

    let got = check(p, os, strictness);
    assert_eq!(got, check(p, os, strictness), "not deterministic");
    let basic = check(p, os, Strictness::Basic);
    let full = check(p, os, Strictness::Full);
    if full.is_ok() {
        assert!(basic.is_ok(), "Full accepted what Basic refused");
    }
    let len = p.chars().count();
    assert_eq!(
        basic == Err(Violation::Length),
        !(MIN_LEN..=MAX_LEN).contains(&len),
        "length rule"
    );
    if basic.is_ok() {
        assert!(
            p.chars()
                .all(|c| c.is_ascii_alphanumeric() || SPECIALS.contains(c))
        );
    }
    if full.is_ok() {
        let classes = [
            p.bytes().any(|b| b.is_ascii_uppercase()),
            p.bytes().any(|b| b.is_ascii_lowercase()),
            p.bytes().any(|b| b.is_ascii_digit()),
            p.bytes().any(|b| SPECIALS.as_bytes().contains(&b)),
        ];
        assert!(classes.iter().filter(|&&c| c).count() >= 3, "complexity");
        let lower = p.to_ascii_lowercase();
        let user = os.username().to_ascii_lowercase();
        let reversed: String = user.chars().rev().collect();
        assert!(
            !lower.contains(&user) && !lower.contains(&reversed),
            "username"
        );
        if os == OsType::Windows {
            let admin = b"administrator";
            assert!(
                !admin
                    .windows(3)
                    .any(|r| lower.as_bytes().windows(3).any(|w| w == r)),
                "Administrator run"
            );
            assert!(!p.starts_with('/'), "leading slash");
        }
        assert!(
            !ecs_policy::is_blocklisted(p),
            "blocklisted password accepted"
        );
        // Case does not matter to the blocklist.
        assert!(!ecs_policy::is_blocklisted(&lower));
    }
});
