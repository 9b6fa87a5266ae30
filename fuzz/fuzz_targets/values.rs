//! Input values, memory sizes, SSH public keys, names and roles: never panic, round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stratus_types::Name;
use stratus_types::input::InputValue;
use stratus_types::size::Memory;
use stratus_types::sshkey::SshPublicKey;
use stratus_types::user::Role;

fuzz_target!(|data: &str| {
    if let Ok(v) = InputValue::parse(data) {
        assert_eq!(InputValue::parse(&v.to_string()).expect("round trip"), v);
    }
    if let Ok(m) = Memory::parse(data) {
        assert_eq!(Memory::parse(&m.to_string()).expect("round trip"), m);
    }
    if let Ok(k) = SshPublicKey::parse(data) {
        assert_eq!(SshPublicKey::parse(&k.line()).expect("round trip").fingerprint, k.fingerprint);
    }
    let _ = Name::parse(data);
    if let Ok(r) = Role::parse(data) {
        assert_eq!(Role::parse(&r.to_string()).expect("round trip"), r);
    }
});
