//! Credentials: the `authorization` header parser (`auth::parse_basic`) and the users file
//! (`Users::load_file` on a per-process temporary file, then `Users::from_entries`).
//!
//! Input: `selector:u8` then the rest. Even selector: the rest is an `authorization` value;
//! odd: the rest is users-file TOML text.
//!
//! Checks, besides "no panic, no abort":
//! - a parsed header yields a user name without `:` whose `basic_header` form parses back to
//!   the same pair (when the secret is UTF-8), and `verify` answers without panicking;
//! - the known user verifies with its secret and nothing else does;
//! - users accepted from a file are all present (`len`), and each entry's name fails to verify
//!   against a wrong secret.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringcache_server::auth::{
    AuthError, Role, UserEntry, Users, basic_header, parse_basic, required_role, sha256, to_hex,
};

const KNOWN_USER: &str = "alice";
const KNOWN_SECRET: &[u8] = b"correct horse battery staple";

fn known_users() -> &'static Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| {
        Users::from_entries(&[UserEntry {
            name: KNOWN_USER.to_owned(),
            role: Role::Write,
            secret_sha256: to_hex(&sha256(KNOWN_SECRET)),
        }])
        .expect("valid user")
    })
}

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("ringcache-fuzz-users-{}.toml", std::process::id()))
    })
}

fn header(value: &[u8]) {
    if let Ok(text) = std::str::from_utf8(value) {
        let _ = required_role(text);
    }
    let Ok((user, secret)) = parse_basic(value) else {
        return;
    };
    assert!(!user.contains(':'), "user name {user:?} contains the separator");
    if let Ok(secret_text) = std::str::from_utf8(&secret) {
        let again = parse_basic(basic_header(&user, secret_text).as_bytes());
        assert_eq!(again, Ok((user.clone(), secret.clone())), "basic_header round trip");
    }
    let verdict = known_users().verify(&user, &secret);
    let correct = user == KNOWN_USER && secret == KNOWN_SECRET;
    match verdict {
        Ok(principal) => {
            assert!(correct, "{user:?} authenticated with a wrong secret");
            assert_eq!(&*principal.user, KNOWN_USER);
            assert_eq!(principal.role, Role::Write);
        }
        Err(AuthError::Malformed(_)) => assert!(secret.len() > 512 && !correct),
        Err(error) => {
            assert!(!correct, "the right secret was refused: {error}");
            assert_eq!(error, AuthError::Invalid);
        }
    }
}

fn users_file(text: &[u8]) {
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    std::fs::write(path(), text).expect("write the temporary users file");
    let Ok(entries) = Users::load_file(path()) else {
        return;
    };
    let Ok(users) = Users::from_entries(&entries) else {
        return;
    };
    assert_eq!(users.len(), entries.len());
    assert_eq!(users.is_empty(), entries.is_empty());
    let _ = format!("{users:?}");
    for entry in entries.iter().take(16) {
        // sha256("") is never a configured hash unless written so; a wrong secret must fail.
        let wrong = b"\xffnot the secret";
        if entry.secret_sha256.eq_ignore_ascii_case(&to_hex(&sha256(wrong))) {
            continue;
        }
        assert_eq!(users.verify(&entry.name, wrong), Err(AuthError::Invalid));
    }
}

fuzz_target!(|data: &[u8]| {
    let [selector, rest @ ..] = data else { return };
    if selector % 2 == 0 {
        header(rest);
    } else {
        users_file(rest);
    }
});
