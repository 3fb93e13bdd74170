//! The agent's shadow file editor (`ecs-agent`, the in-memory edit of
//! `/etc/shadow` content that replaces one user's hash and `lastchg`).
//!
//! Invariants, checked against an independent model: every other line is
//! byte-identical; exactly the user's first entry changes, and in it only the
//! hash (to the new one) and the third field (`lastchg`, to today, empty on
//! day 0); no entry, or a user name / hash that cannot be written into the
//! file (empty, or holding `:` or a newline), is a clean refusal, never a
//! changed file.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    old: &'a [u8],
    /// Take the user name from this line of `old` (so entries are found).
    user_from_line: Option<u8>,
    user: &'a str,
    new_hash: &'a str,
    today: u16,
}

/// A field cannot hold these.
fn writable(s: &str) -> bool {
    !s.contains([':', '\n'])
}

fn model(old: &[u8], user: &str, new_hash: &str, today: u64) -> Option<Vec<u8>> {
    if user.is_empty() || new_hash.is_empty() || !writable(user) || !writable(new_hash) {
        return None;
    }
    let mut out = Vec::new();
    let mut found = false;
    for line in old.split_inclusive(|&b| b == b'\n') {
        let (text, nl) = match line.strip_suffix(b"\n") {
            Some(t) => (t, &b"\n"[..]),
            None => (line, &b""[..]),
        };
        let fields: Vec<&[u8]> = text.split(|&b| b == b':').collect();
        if found || fields.len() < 2 || fields[0] != user.as_bytes() {
            out.extend_from_slice(line);
            continue;
        }
        found = true;
        let mut new: Vec<Vec<u8>> = vec![user.as_bytes().to_vec(), new_hash.as_bytes().to_vec()];
        if fields.len() > 2 {
            new.push(if today > 0 {
                today.to_string().into_bytes()
            } else {
                Vec::new()
            });
            new.extend(fields[3..].iter().map(|f| f.to_vec()));
        }
        out.extend_from_slice(&new.join(&b':'));
        out.extend_from_slice(nl);
    }
    found.then_some(out)
}

fuzz_target!(|input: Input<'_>| {
    let user = match input.user_from_line {
        Some(i) => {
            let lines: Vec<&[u8]> = input.old.split(|&b| b == b'\n').collect();
            let line = lines[usize::from(i) % lines.len()];
            let first = line.split(|&b| b == b':').next().unwrap_or_default();
            std::str::from_utf8(first).unwrap_or(input.user)
        }
        None => input.user,
    };
    let today = u64::from(input.today);
    let got = ecs_agent::shadow::fuzz_splice(input.old, user, input.new_hash, today);
    let want = model(input.old, user, input.new_hash, today);
    assert_eq!(
        got.as_deref().map(String::from_utf8_lossy),
        want.as_deref().map(String::from_utf8_lossy),
        "user {user:?}, hash {:?}",
        input.new_hash
    );
    assert_eq!(got, want);
});
