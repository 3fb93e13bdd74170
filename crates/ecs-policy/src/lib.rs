//! The password rules of a root/Administrator password reset (contract §2.4).
//!
//! The same library is used by `ecsd` (authoritative check, `Ecs.0011`) and by
//! `ecsctl` (instant local feedback). Every error names the broken rule and
//! never the password.

use std::collections::HashSet;
use std::sync::OnceLock;

/// Minimum password length in characters.
pub const MIN_LEN: usize = 8;
/// Maximum password length in characters.
pub const MAX_LEN: usize = 26;
/// The special characters the reset APIs accept.
pub const SPECIALS: &str = "!@%-_=+[]:./?";

/// The operating system of a target server: it decides the username rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OsType {
    Linux,
    Windows,
}

impl OsType {
    /// The login whose password is reset.
    pub fn username(self) -> &'static str {
        match self {
            OsType::Linux => "root",
            OsType::Windows => "Administrator",
        }
    }

    /// The spelling used in the Huawei API (`metadata.os_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            OsType::Linux => "Linux",
            OsType::Windows => "Windows",
        }
    }

    /// Parses `Linux` or `Windows` (case-insensitive).
    pub fn parse(s: &str) -> Option<OsType> {
        if s.eq_ignore_ascii_case("linux") {
            Some(OsType::Linux)
        } else if s.eq_ignore_ascii_case("windows") {
            Some(OsType::Windows)
        } else {
            None
        }
    }
}

/// Which rules to apply. The single-server reset checks only length and
/// character set unless `is_check_password` is true (contract §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Length and character set only.
    Basic,
    /// Every rule.
    Full,
}

/// A broken rule. The `Display` text is safe to return to a client and to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("The password length must range from {MIN_LEN} to {MAX_LEN} characters.")]
    Length,
    #[error("The password may contain only letters, digits and the special characters {SPECIALS}.")]
    Charset,
    #[error(
        "The password must contain at least three of: uppercase letters, lowercase letters, digits and special characters."
    )]
    Complexity,
    #[error("The password must not contain the username {0} or the username reversed.")]
    ContainsUsername(&'static str),
    #[error("The password must not contain three consecutive characters of Administrator.")]
    AdministratorRun,
    #[error("The password of a Windows server must not start with /.")]
    LeadingSlash,
    #[error("The password is a well-known weak password.")]
    Weak,
}

/// Checks `password` against the rules for `os`.
pub fn check(password: &str, os: OsType, strictness: Strictness) -> Result<(), Violation> {
    let len = password.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&len) {
        return Err(Violation::Length);
    }
    if !password
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || SPECIALS.contains(c))
    {
        return Err(Violation::Charset);
    }
    if strictness == Strictness::Basic {
        return Ok(());
    }
    // From here on the password is ASCII, so byte operations are character operations.
    let classes = [
        password.bytes().any(|b| b.is_ascii_uppercase()),
        password.bytes().any(|b| b.is_ascii_lowercase()),
        password.bytes().any(|b| b.is_ascii_digit()),
        password.bytes().any(|b| SPECIALS.as_bytes().contains(&b)),
    ];
    if classes.iter().filter(|&&present| present).count() < 3 {
        return Err(Violation::Complexity);
    }
    let lower = password.to_ascii_lowercase();
    let user = os.username().to_ascii_lowercase();
    let reversed: String = user.chars().rev().collect();
    if lower.contains(&user) || lower.contains(&reversed) {
        return Err(Violation::ContainsUsername(os.username()));
    }
    if os == OsType::Windows {
        let admin = "administrator".as_bytes();
        if admin
            .windows(3)
            .any(|run| lower.as_bytes().windows(3).any(|w| w == run))
        {
            return Err(Violation::AdministratorRun);
        }
        if password.starts_with('/') {
            return Err(Violation::LeadingSlash);
        }
    }
    if blocklist().contains(lower.as_str()) {
        return Err(Violation::Weak);
    }
    Ok(())
}

/// The shipped blocklist of well-known weak passwords, lower-cased.
fn blocklist() -> &'static HashSet<String> {
    static LIST: OnceLock<HashSet<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        include_str!("../data/weak-passwords.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_ascii_lowercase)
            .collect()
    })
}

/// True if `password` is on the shipped weak-password blocklist.
pub fn is_blocklisted(password: &str) -> bool {
    blocklist().contains(&password.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LINUX: OsType = OsType::Linux;
    const WIN: OsType = OsType::Windows;

    fn full(p: &str, os: OsType) -> Result<(), Violation> {
        check(p, os, Strictness::Full)
    }

    #[test]
    fn accepts_a_good_password_on_both_systems() {
        assert_eq!(full("Gx7!pLq2vR", LINUX), Ok(()));
        assert_eq!(full("Gx7!pLq2vR", WIN), Ok(()));
    }

    #[test]
    fn length_bounds_are_8_to_26() {
        assert_eq!(full("Gx7!pLq", LINUX), Err(Violation::Length));
        assert_eq!(full("Gx7!pLq2", LINUX), Ok(()));
        let max = "Gx7!pLq2vRGx7!pLq2vRGx7!pL";
        assert_eq!(max.len(), 26);
        assert_eq!(full(max, LINUX), Ok(()));
        assert_eq!(full(&format!("{max}z"), LINUX), Err(Violation::Length));
    }

    #[test]
    fn forbidden_characters_are_rejected() {
        for c in "~`#&^,{}*();\"'<>|\\ $é".chars() {
            let p = format!("Gx7!pLq2{c}");
            assert_eq!(full(&p, LINUX), Err(Violation::Charset), "{c:?}");
            assert_eq!(check(&p, LINUX, Strictness::Basic), Err(Violation::Charset));
        }
    }

    #[test]
    fn needs_three_classes() {
        assert_eq!(full("abcdefgh12", LINUX), Err(Violation::Complexity));
        assert_eq!(full("ABCDEFGH!!", LINUX), Err(Violation::Complexity));
        assert_eq!(full("abcdEFGH12", LINUX), Ok(()));
        assert_eq!(full("abcd!fgh12", LINUX), Ok(()));
    }

    #[test]
    fn basic_strictness_skips_complexity_and_username() {
        assert_eq!(check("abcdefgh", LINUX, Strictness::Basic), Ok(()));
        assert_eq!(check("Root1234!x", LINUX, Strictness::Basic), Ok(()));
        assert_eq!(
            check("abc", LINUX, Strictness::Basic),
            Err(Violation::Length)
        );
    }

    #[test]
    fn username_and_reverse_are_rejected_case_insensitively() {
        assert_eq!(
            full("xRoOt12!ab", LINUX),
            Err(Violation::ContainsUsername("root"))
        );
        assert_eq!(
            full("xTOOR12!ab", LINUX),
            Err(Violation::ContainsUsername("root"))
        );
        assert_eq!(
            full("ROTARTSINIMDA1!", WIN),
            Err(Violation::ContainsUsername("Administrator"))
        );
        // "root" is fine for Windows (other than the Administrator rules).
        assert_eq!(full("xRoOt12!ab", WIN), Ok(()));
    }

    #[test]
    fn windows_forbids_three_consecutive_administrator_characters() {
        assert_eq!(full("Qmin7!pLx2", WIN), Err(Violation::AdministratorRun));
        assert_eq!(full("QMIN7!pLx2", WIN), Err(Violation::AdministratorRun));
        assert_eq!(full("Qmin7!pLx2", LINUX), Ok(()));
    }

    #[test]
    fn windows_forbids_leading_slash() {
        assert_eq!(full("/Gx7!pLq2v", WIN), Err(Violation::LeadingSlash));
        assert_eq!(full("/Gx7!pLq2v", LINUX), Ok(()));
    }

    #[test]
    fn weak_passwords_are_blocked_case_insensitively() {
        assert_eq!(full("P@ssw0rd", LINUX), Err(Violation::Weak));
        assert_eq!(full("p@SSW0RD", LINUX), Err(Violation::Weak));
        assert_eq!(full("Huawei@123", LINUX), Err(Violation::Weak));
        assert!(is_blocklisted("QWERTY@123"));
        assert!(!is_blocklisted("Gx7!pLq2vR"));
    }

    #[test]
    fn messages_never_contain_the_password() {
        let p = "root!Root1";
        let err = full(p, LINUX).unwrap_err();
        assert!(!err.to_string().contains(p));
    }

    fn classes(p: &str) -> usize {
        [
            p.bytes().any(|b| b.is_ascii_uppercase()),
            p.bytes().any(|b| b.is_ascii_lowercase()),
            p.bytes().any(|b| b.is_ascii_digit()),
            p.bytes().any(|b| SPECIALS.as_bytes().contains(&b)),
        ]
        .iter()
        .filter(|x| **x)
        .count()
    }

    proptest! {
        #[test]
        fn any_accepted_password_satisfies_every_rule(p in "[A-Za-z0-9!@%_=+:./?\\[\\]-]{0,30}") {
            if full(&p, WIN).is_ok() {
                prop_assert!((MIN_LEN..=MAX_LEN).contains(&p.len()));
                prop_assert!(classes(&p) >= 3);
                let l = p.to_ascii_lowercase();
                prop_assert!(!l.contains("administrator") && !l.contains("rotartsinimda"));
                prop_assert!(!"administrator".as_bytes().windows(3).any(|r| l.as_bytes().windows(3).any(|w| w == r)));
                prop_assert!(!p.starts_with('/'));
                prop_assert!(!is_blocklisted(&p));
            }
            if full(&p, LINUX).is_ok() {
                let l = p.to_ascii_lowercase();
                prop_assert!(!l.contains("root") && !l.contains("toor"));
            }
        }

        #[test]
        fn windows_is_never_laxer_than_linux(p in "[A-Za-z0-9!@%_=+:./?-]{6,28}") {
            // Windows' username check differs, so compare only passwords free of "root".
            prop_assume!(!p.to_ascii_lowercase().contains("root") && !p.to_ascii_lowercase().contains("toor"));
            if full(&p, WIN).is_ok() {
                prop_assert_eq!(full(&p, LINUX), Ok(()));
            }
        }

        #[test]
        fn full_is_never_laxer_than_basic(p in "\\PC{0,30}", win in any::<bool>()) {
            let os = if win { WIN } else { LINUX };
            if check(&p, os, Strictness::Full).is_ok() {
                prop_assert_eq!(check(&p, os, Strictness::Basic), Ok(()));
            }
        }

        #[test]
        fn any_char_outside_the_set_is_rejected(
            prefix in "[A-Za-z0-9]{4,10}",
            bad in "[^A-Za-z0-9!@%_=+:./?\\[\\]-]",
        ) {
            let p = format!("{prefix}{bad}Aa1");
            if (MIN_LEN..=MAX_LEN).contains(&p.chars().count()) {
                prop_assert_eq!(check(&p, LINUX, Strictness::Basic), Err(Violation::Charset));
            }
        }
    }
}
