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
    fn os_type_names_parse_and_print() {
        assert_eq!(OsType::parse("linux"), Some(LINUX));
        assert_eq!(OsType::parse("LINUX"), Some(LINUX));
        assert_eq!(OsType::parse("Windows"), Some(WIN));
        assert_eq!(OsType::parse("wINDOWS"), Some(WIN));
        assert_eq!(OsType::parse("macos"), None);
        assert_eq!(OsType::parse(""), None);
        for os in [LINUX, WIN] {
            assert_eq!(OsType::parse(os.as_str()), Some(os));
        }
        assert_eq!(LINUX.as_str(), "Linux");
        assert_eq!(WIN.as_str(), "Windows");
        assert_eq!(LINUX.username(), "root");
        assert_eq!(WIN.username(), "Administrator");
    }

    #[test]
    fn the_blocklist_holds_every_listed_word_and_no_comment() {
        let text = include_str!("../data/weak-passwords.txt");
        let (comments, words): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.starts_with('#'));
        assert!(!comments.is_empty() && words.len() > 50);
        for c in &comments {
            assert!(!is_blocklisted(c), "a comment is on the blocklist: {c}");
        }
        assert!(!is_blocklisted(""));
        for w in &words {
            assert!(is_blocklisted(w), "{w}");
            assert!(is_blocklisted(&w.to_ascii_uppercase()), "{w}");
        }
        assert_eq!(blocklist().len(), words.len());
    }

    /// The messages a client may see: one fixed text per rule.
    const MESSAGES: [&str; 8] = [
        "The password length must range from 8 to 26 characters.",
        "The password may contain only letters, digits and the special characters !@%-_=+[]:./?.",
        "The password must contain at least three of: uppercase letters, lowercase letters, digits and special characters.",
        "The password must not contain the username root or the username reversed.",
        "The password must not contain the username Administrator or the username reversed.",
        "The password must not contain three consecutive characters of Administrator.",
        "The password of a Windows server must not start with /.",
        "The password is a well-known weak password.",
    ];

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

    /// The contract's rules (§2.4) read independently of `check`, in the
    /// contract's order: the oracle of the property tests below.
    fn reference(p: &str, os: OsType, strictness: Strictness) -> Result<(), Violation> {
        const ALLOWED: &str =
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!@%-_=+[]:./?";
        let n = p.chars().count();
        if !(8..=26).contains(&n) {
            return Err(Violation::Length);
        }
        if p.chars().any(|c| !ALLOWED.contains(c)) {
            return Err(Violation::Charset);
        }
        if strictness == Strictness::Basic {
            return Ok(());
        }
        if classes(p) < 3 {
            return Err(Violation::Complexity);
        }
        let l = p.to_lowercase();
        let (user, resu) = match os {
            OsType::Linux => ("root", "toor"),
            OsType::Windows => ("administrator", "rotartsinimda"),
        };
        if l.contains(user) || l.contains(resu) {
            return Err(Violation::ContainsUsername(os.username()));
        }
        if os == OsType::Windows {
            let admin: Vec<char> = "administrator".chars().collect();
            let lc: Vec<char> = l.chars().collect();
            for i in 0..admin.len() - 2 {
                for j in 0..lc.len().saturating_sub(2) {
                    if lc[j..j + 3] == admin[i..i + 3] {
                        return Err(Violation::AdministratorRun);
                    }
                }
            }
            if p.starts_with('/') {
                return Err(Violation::LeadingSlash);
            }
        }
        let weak = include_str!("../data/weak-passwords.txt")
            .lines()
            .filter(|w| !w.starts_with('#'))
            .any(|w| w.eq_ignore_ascii_case(p));
        if weak {
            return Err(Violation::Weak);
        }
        Ok(())
    }

    const ALPHABET: &str =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!@%-_=+[]:./?";

    fn pick(set: &'static str) -> impl Strategy<Value = char> {
        prop::sample::select(set.chars().collect::<Vec<_>>())
    }

    /// A password with all four classes, from the allowed alphabet only, with
    /// `filler` more characters: almost always accepted.
    fn well_formed(filler: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
        (
            pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            pick("abcdefghijklmnopqrstuvwxyz"),
            pick("0123456789"),
            pick(SPECIALS),
            prop::collection::vec(pick(ALPHABET), filler),
        )
            .prop_map(|(u, l, d, s, mut rest)| {
                rest.extend([u, l, d, s]);
                rest
            })
            .prop_shuffle()
            .prop_map(|v| v.into_iter().collect())
    }

    /// Inserts `token` at a position chosen by `at`.
    fn inject(p: String, token: &str, at: prop::sample::Index) -> String {
        let mut chars: Vec<char> = p.chars().collect();
        let i = at.index(chars.len() + 1);
        chars.splice(i..i, token.chars());
        chars.into_iter().collect()
    }

    /// Accepted passwords and near misses of every rule, in about equal parts.
    fn candidate() -> impl Strategy<Value = String> {
        let usernames = [
            "root",
            "ROOT",
            "RoOt",
            "toor",
            "tOOr",
            "Administrator",
            "ROTARTSINIMDA",
            "adm",
            "MIN",
            "nIs",
            "str",
            "tor",
            "ato",
        ];
        let weak: Vec<&'static str> = include_str!("../data/weak-passwords.txt")
            .lines()
            .filter(|w| !w.starts_with('#'))
            .collect();
        prop_oneof![
            3 => well_formed(4..=22),
            // Contains a username, its reverse or an Administrator run, any case.
            3 => (well_formed(4..=9), prop::sample::select(usernames.to_vec()), any::<prop::sample::Index>())
                .prop_map(|(p, t, at)| inject(p, t, at)),
            // A leading slash.
            1 => well_formed(3..=21).prop_map(|p| format!("/{p}")),
            // Weak, in random case.
            1 => (prop::sample::select(weak), prop::collection::vec(any::<bool>(), 26))
                .prop_map(|(w, flips)| w.chars().zip(flips).map(|(c, f)| if f { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect()),
            // One character outside the set.
            1 => (well_formed(4..=21), pick("~`#&^,{}*();\"'<>|\\ $é€\u{0}\t"), any::<prop::sample::Index>())
                .prop_map(|(p, c, at)| inject(p, &c.to_string(), at)),
            // One character too short or too long.
            1 => prop_oneof![well_formed(3..=3), well_formed(23..=23)],
            // Only one or two classes.
            1 => prop_oneof![
                prop::collection::vec(pick("abcdefghijklmnopqrstuvwxyz0123456789"), 8..=26),
                prop::collection::vec(pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ!@%-_=+[]:./?"), 8..=26),
                prop::collection::vec(pick("abcdefghijklmnopqrstuvwxyz"), 8..=26),
            ].prop_map(|v| v.into_iter().collect()),
        ]
    }

    /// The generator reaches every branch often: the properties below are not
    /// vacuous (counted over a fixed sample).
    #[test]
    fn the_generator_reaches_every_rule_and_acceptance() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = candidate();
        let n = 3000;
        let mut seen = std::collections::HashMap::<String, usize>::new();
        let mut root_only = 0;
        for _ in 0..n {
            let p = strategy.new_tree(&mut runner).unwrap().current();
            for os in [LINUX, WIN] {
                let key = match full(&p, os) {
                    Ok(()) => format!("{os:?} ok"),
                    Err(v) => format!("{os:?} {v:?}"),
                };
                *seen.entry(key).or_default() += 1;
            }
            if full(&p, WIN).is_ok() && full(&p, LINUX).is_err() {
                root_only += 1;
            }
        }
        for key in [
            "Linux ok",
            "Windows ok",
            "Linux Length",
            "Linux Charset",
            "Linux Complexity",
            "Linux ContainsUsername(\"root\")",
            "Windows ContainsUsername(\"Administrator\")",
            "Windows AdministratorRun",
            "Windows LeadingSlash",
            "Linux Weak",
            "Windows Weak",
        ] {
            let count = seen.get(key).copied().unwrap_or(0);
            assert!(count * 50 >= n, "{key}: {count} of {n}; {seen:?}");
        }
        assert!(seen["Linux ok"] * 4 >= n, "{seen:?}");
        assert!(root_only * 50 >= n, "Windows-only acceptances: {root_only}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn any_accepted_password_satisfies_every_rule(p in candidate()) {
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
                prop_assert!((MIN_LEN..=MAX_LEN).contains(&p.len()));
                prop_assert!(classes(&p) >= 3);
                prop_assert!(!l.contains("root") && !l.contains("toor"));
                prop_assert!(!is_blocklisted(&p));
            }
        }

        #[test]
        fn check_agrees_with_an_independent_reading_of_the_rules(p in candidate()) {
            for os in [LINUX, WIN] {
                for strictness in [Strictness::Basic, Strictness::Full] {
                    prop_assert_eq!(check(&p, os, strictness), reference(&p, os, strictness), "{:?} {:?}", os, strictness);
                }
            }
        }

        #[test]
        fn windows_is_never_laxer_than_linux(p in candidate()) {
            // Windows' username check differs, so compare only passwords free of "root".
            prop_assume!(!p.to_ascii_lowercase().contains("root") && !p.to_ascii_lowercase().contains("toor"));
            if full(&p, WIN).is_ok() {
                prop_assert_eq!(full(&p, LINUX), Ok(()));
            }
        }

        #[test]
        fn full_is_never_laxer_than_basic(
            p in prop_oneof![4 => candidate(), 1 => "\\PC{0,30}"],
            win in any::<bool>(),
        ) {
            let os = if win { WIN } else { LINUX };
            match check(&p, os, Strictness::Basic) {
                // What Basic refuses, Full refuses for the same rule.
                Err(v) => prop_assert_eq!(check(&p, os, Strictness::Full), Err(v)),
                // What Basic accepts, Full accepts or refuses for a rule Basic does not check.
                Ok(()) => prop_assert!(!matches!(
                    check(&p, os, Strictness::Full),
                    Err(Violation::Length | Violation::Charset)
                )),
            }
        }

        #[test]
        fn every_message_is_a_fixed_rule_text_without_the_input(p in candidate(), win in any::<bool>()) {
            let os = if win { WIN } else { LINUX };
            if let Err(v) = full(&p, os) {
                let msg = v.to_string();
                prop_assert!(MESSAGES.contains(&msg.as_str()), "{}", msg);
                prop_assert!(!msg.contains(&p), "{}", msg);
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
