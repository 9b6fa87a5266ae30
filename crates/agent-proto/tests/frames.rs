//! Frames on the wire: every message round-trips, the wire format is pinned, and malformed,
//! oversized and hostile frames are refused with short errors that never echo secrets.

mod common;

use common::*;
use stratus_agent_proto::limits::*;
use stratus_agent_proto::*;
use stratus_types::run::Phase;

fn agent_err(frame: &str) -> ProtoError {
    let err = decode_agent(frame).expect_err("the frame should be refused");
    assert!(err.to_string().len() < 512, "error too long: {err}");
    err
}

fn control_err(frame: &str) -> ProtoError {
    let err = decode_control(frame).expect_err("the frame should be refused");
    assert!(err.to_string().len() < 512, "error too long: {err}");
    err
}

fn problem(err: &ProtoError) -> String {
    err.to_string()
}

#[test]
fn every_agent_message_round_trips() {
    for msg in agent_samples() {
        let frame = encode_agent(&msg).unwrap();
        assert_eq!(decode_agent(&frame).unwrap(), msg, "{frame}");
    }
}

#[test]
fn every_control_message_round_trips() {
    for msg in control_samples() {
        let frame = encode_control(&msg).unwrap();
        assert_eq!(decode_control(&frame).unwrap(), msg, "{frame}");
    }
}

#[test]
fn the_wire_format_is_pinned() {
    let hello = encode_agent(&AgentMessage::Hello(hello())).unwrap();
    assert_eq!(
        hello,
        r#"{"type":"hello","versions":[1],"agent_version":"stratus-agent 0.1.0","#.to_owned()
            + r#""server":"00000000-0000-0000-0000-00000000005e","#
            + r#""boot_id":"0f8c2a4e-5b1d-4c3e-9a7f-2d6e8b1c3a5f","last_generation":3,"#
            + r#""unacked":["00000000-0000-0000-0000-000000000001","00000000-0000-0000-0000-000000000002"]}"#
    );
    let ack = encode_control(&ControlMessage::AckOutput {
        run: run_id(1),
        seq: 41,
    })
    .unwrap();
    assert_eq!(
        ack,
        r#"{"type":"ack_output","run":"00000000-0000-0000-0000-000000000001","seq":41}"#
    );
    let finished = encode_agent(&AgentMessage::RunFinished(finished())).unwrap();
    assert_eq!(
        finished,
        r#"{"type":"run_finished","run":"00000000-0000-0000-0000-000000000001","outcome":"exited","#.to_owned()
            + r#""exit_code":0,"finished_at":"2026-05-01T12:00:00Z","output_chunks":2,"output_bytes":120}"#
    );
    let run = encode_control(&ControlMessage::RunScript(script(12, Phase::Operational))).unwrap();
    assert!(run.starts_with(r#"{"type":"run_script","run":"#), "{run}");
    assert!(run.contains(r#"{"name":"DB_PASSWORD","value":{"secret":"hunter2-correct-horse"}}"#));
    assert!(
        run.contains(r#""phase":"operational","frequency":"per-instance""#),
        "{run}"
    );
}

#[test]
fn optional_fields_may_be_left_out() {
    let frame = r#"{"type":"hello","versions":[1],"agent_version":"a","server":"00000000-0000-0000-0000-00000000005e","boot_id":"b","last_generation":0}"#;
    let AgentMessage::Hello(h) = decode_agent(frame).unwrap() else {
        panic!()
    };
    assert!(h.unacked.is_empty());
    let frame = r#"{"type":"desired_state","generation":1}"#;
    let ControlMessage::DesiredState(d) = decode_control(frame).unwrap() else {
        panic!()
    };
    assert!(d.boot.is_empty() && d.tags.is_empty());
}

#[test]
fn secrets_never_appear_in_debug_output() {
    for msg in control_samples() {
        let dbg = format!("{msg:?} {msg:#?}");
        assert!(!dbg.contains(SECRET), "{dbg}");
    }
    let ControlMessage::RunScript(run) = &control_samples()[3] else {
        panic!()
    };
    assert!(format!("{run:?}").contains("DB_PASSWORD"));
    assert_eq!(run.secrets().collect::<Vec<_>>(), [SECRET]);
}

#[test]
fn malformed_frames_are_refused() {
    for (frame, want) in [
        ("", "EOF"),
        ("null", "invalid type"),
        ("[]", "missing field `type`"),
        ("{}", "missing field `type`"),
        (r#"{"type":"launch_missiles"}"#, "unknown variant `launch_missiles`"),
        (
            r#"{"type":"welcome","version":1,"heartbeat_secs":15}"#,
            "unknown variant `welcome`",
        ),
        (r#"{"type":5}"#, "invalid type"),
        (r#"{"type":"heartbeat"}"#, "missing field `at`"),
        (
            r#"{"type":"heartbeat","at":"yesterday"}"#,
            "input contains invalid characters",
        ),
        (r#"{"type":"applied","generation":"4"}"#, "invalid type: string \"4\""),
        (r#"{"type":"applied","generation":-1}"#, "invalid value"),
        (r#"{"type":"applied","generation":1.5}"#, "invalid type"),
        (
            r#"{"type":"applied","generation":4,"extra":1}"#,
            "unknown field `extra`",
        ),
        (
            r#"{"type":"applied","generation":4,"generation":5}"#,
            "duplicate field `generation`",
        ),
        (
            r#"{"type":"applied","type":"applied","generation":4}"#,
            "duplicate field `type`",
        ),
        (r#"{"type":"applied","generation":4} trailing"#, "trailing characters"),
        (
            r#"{"type":"run_started","run":"not-a-uuid","started_at":"2026-05-01T12:00:00Z"}"#,
            "UUID",
        ),
        (r#"{"type":"tag_change","request_id":1,"add":["lb"]}"#, "invalid tag"),
        (
            r#"{"type":"tag_query","request_id":1,"selector":""}"#,
            "invalid tag selector",
        ),
    ] {
        let err = agent_err(frame);
        assert!(matches!(err, ProtoError::Malformed { .. }), "{frame}: {err:?}");
        assert!(problem(&err).contains(want), "{frame}: {err}");
    }
    let mut hello = serde_json::to_value(AgentMessage::Hello(hello())).unwrap();
    hello["extra"] = 1.into();
    assert!(problem(&agent_err(&hello.to_string())).contains("unknown field `extra`"));
    let run = control_err(r#"{"type":"cancel","run":"00000000-0000-0000-0000-000000000001","why":1}"#);
    assert!(problem(&run).contains("unknown field `why`"), "{run}");
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let frame = format!("{{\"type\":\"heartbeat\",\"at\":\"{}\"}}", "x".repeat(MAX_AGENT_FRAME));
    let err = agent_err(&frame);
    assert_eq!(
        err,
        ProtoError::TooLarge {
            len: frame.len(),
            max: MAX_AGENT_FRAME
        }
    );
    let frame = " ".repeat(MAX_CONTROL_FRAME + 1);
    assert!(matches!(control_err(&frame), ProtoError::TooLarge { .. }));
}

#[test]
fn hostile_values_are_quoted_only_briefly() {
    let huge = "A".repeat(500_000);
    for frame in [
        format!(r#"{{"type":"applied","generation":"{huge}"}}"#),
        format!(r#"{{"type":"applied","generation":4,"{huge}":1}}"#),
        format!(r#"{{"type":"{huge}"}}"#),
        format!(r#"{{"type":"tag_query","request_id":1,"selector":"{huge}"}}"#),
        format!(r#"{{"type":"tag_change","request_id":1,"add":["lb:pool={huge}"]}}"#),
    ] {
        let err = agent_err(&frame).to_string();
        assert!(!err.contains(&"A".repeat(QUOTE_MAX + 1)), "{err}");
        assert!(err.contains("AAAA"), "a short prefix is quoted: {err}");
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for depth in [200, 100_000] {
        let nest = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let err = agent_err(&format!(r#"{{"type":"hello","versions":{nest}}}"#));
        assert!(problem(&err).contains("recursion limit"), "{err}");
        let err = agent_err(&format!(r#"{{"unknown":{nest},"type":"heartbeat"}}"#));
        assert!(problem(&err).contains("recursion limit"), "{err}");
    }
}

#[test]
fn secrets_in_refused_frames_are_not_echoed() {
    let frame = encode_control(&ControlMessage::RunScript(script(12, Phase::Operational))).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&frame).unwrap();
    value["timeout_secs"] = "soon".into();
    assert!(!control_err(&value.to_string()).to_string().contains(SECRET));
    // A secret given as a number (a PIN) is refused without repeating it.
    value["timeout_secs"] = 5.into();
    value["env"][1]["value"]["secret"] = 918_273_645.into();
    let err = control_err(&value.to_string()).to_string();
    assert!(err.contains("must be a string") && !err.contains("918273645"), "{err}");
    value["env"][1]["value"]["secret"] = format!("{SECRET}\u{0}").into();
    let err = control_err(&value.to_string()).to_string();
    assert!(
        err.contains("env[1].value: contains a NUL byte") && !err.contains("hunter2"),
        "{err}"
    );
}
