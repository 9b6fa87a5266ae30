//! Agent-protocol frames, both directions: never panic, errors stay short, and whatever decodes
//! encodes again to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stratus_agent_proto::{ProtoError, decode_agent, decode_control, encode_agent, encode_control};

fn short(e: &ProtoError) {
    assert!(
        e.to_string().len() < 1024,
        "error too long: {} bytes",
        e.to_string().len()
    );
}

fuzz_target!(|frame: &str| {
    match decode_agent(frame) {
        Ok(msg) => match encode_agent(&msg) {
            Ok(again) => assert_eq!(decode_agent(&again).expect("an encoded message decodes"), msg),
            // Re-encoding may lengthen a frame at the limit (timestamps print in full).
            Err(e) => assert!(matches!(e, ProtoError::TooLarge { .. }), "{e}"),
        },
        Err(e) => short(&e),
    }
    match decode_control(frame) {
        Ok(msg) => match encode_control(&msg) {
            Ok(again) => assert_eq!(decode_control(&again).expect("an encoded message decodes"), msg),
            Err(e) => assert!(matches!(e, ProtoError::TooLarge { .. }), "{e}"),
        },
        Err(e) => short(&e),
    }
});
