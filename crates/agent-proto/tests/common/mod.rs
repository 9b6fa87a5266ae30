//! Sample messages shared by the test files: one of every kind, with every optional field used.
#![allow(dead_code)]

use std::net::IpAddr;

use stratus_agent_proto::*;
use stratus_types::run::Phase;
use stratus_types::script::Frequency;
use stratus_types::tag::{Selector, Tag};
use stratus_types::{Name, RunId, ServerId, Timestamp};

pub const SECRET: &str = "hunter2-correct-horse";

pub fn at() -> Timestamp {
    "2026-05-01T12:00:00Z".parse().unwrap()
}

pub fn run_id(n: u128) -> RunId {
    RunId(uuid::Uuid::from_u128(n))
}

pub fn server_id() -> ServerId {
    ServerId(uuid::Uuid::from_u128(0x5e))
}

pub fn tag(s: &str) -> Tag {
    Tag::parse(s).unwrap()
}

pub fn script(n: u128, phase: Phase) -> ScriptRun {
    ScriptRun {
        run: run_id(n),
        name: Name::parse("install_nginx").unwrap(),
        body: "#!/bin/sh\necho \"installing $VERSION\"\n".into(),
        env: vec![
            EnvVar::text("VERSION", "1.27"),
            EnvVar::secret("DB_PASSWORD", SECRET),
            EnvVar::instance("ADDR", "PRIVATE_IP"),
        ],
        timeout_secs: Some(600),
        phase,
        frequency: Frequency::PerInstance,
    }
}

pub fn hello() -> Hello {
    Hello {
        versions: vec![1],
        agent_version: "stratus-agent 0.1.0".into(),
        server: server_id(),
        boot_id: "0f8c2a4e-5b1d-4c3e-9a7f-2d6e8b1c3a5f".into(),
        last_generation: Generation(3),
        unacked: vec![run_id(1), run_id(2)],
    }
}

pub fn finished() -> RunFinished {
    RunFinished {
        run: run_id(1),
        outcome: Outcome::Exited,
        exit_code: Some(0),
        signal: None,
        error: None,
        finished_at: at(),
        output_chunks: 2,
        output_bytes: 120,
    }
}

/// One message of every agent type.
pub fn agent_samples() -> Vec<AgentMessage> {
    vec![
        AgentMessage::Hello(hello()),
        AgentMessage::Heartbeat { at: at() },
        AgentMessage::Applied {
            generation: Generation(4),
        },
        AgentMessage::RunStarted {
            run: run_id(1),
            started_at: at(),
        },
        AgentMessage::Output(Output {
            run: run_id(1),
            seq: 0,
            stream: OutputStream::Stderr,
            data: "installing 1.27 ✓\n".into(),
            at: at(),
        }),
        AgentMessage::RunFinished(finished()),
        AgentMessage::RunFinished(RunFinished {
            outcome: Outcome::FailedToStart,
            exit_code: None,
            error: Some("no /bin/sh on this image".into()),
            output_chunks: 0,
            output_bytes: 0,
            ..finished()
        }),
        AgentMessage::Access {
            user: "alice".into(),
            kind: AccessKind::Sudo,
            from: Some("10.0.0.1".into()),
            at: at(),
        },
        AgentMessage::FileStatus {
            path: "/etc/haproxy/haproxy.cfg".into(),
            sha256: "a".repeat(64),
            applied: false,
            error: Some("the new content was refused by its check".into()),
        },
        AgentMessage::TagChange {
            request_id: 7,
            add: vec![tag("lb:pool=www")],
            remove: vec![tag("maint:drain=true")],
        },
        AgentMessage::TagQuery {
            request_id: 8,
            selector: Selector::parse("lb:pool=www,!maint:drain").unwrap(),
        },
    ]
}

/// One message of every control-plane type.
pub fn control_samples() -> Vec<ControlMessage> {
    let ip: IpAddr = "10.0.0.7".parse().unwrap();
    vec![
        ControlMessage::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            resume: vec![Resume {
                run: run_id(1),
                next_seq: 2,
                finished: false,
            }],
        }),
        ControlMessage::Refused(Refused {
            reason: RefusedReason::UnsupportedVersion,
            message: "this control plane speaks protocol version 1; upgrade the agent".into(),
        }),
        ControlMessage::DesiredState(DesiredState {
            generation: Generation(4),
            boot: vec![script(10, Phase::Boot), script(11, Phase::Boot)],
            tags: vec![tag("lb:pool=www")],
            files: vec![ManagedFile {
                check: Some("haproxy -c -f \"$STRATUS_CANDIDATE\"".into()),
                reload: Some("kill -USR2 $(cat /run/haproxy.pid)".into()),
                ..ManagedFile::inline("/etc/haproxy/haproxy.cfg", "global\n    maxconn 4096\n")
            }],
            logins: Some(Logins {
                accounts: vec![LoginAccount {
                    name: "alice".into(),
                    keys: vec![
                        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5vdCBhIHJlYWwga2V5IGJ1dCBiYXNlNjQ alice@laptop".into(),
                    ],
                    sudo: true,
                }],
                end_sessions: true,
                exclusive: false,
            }),
        }),
        ControlMessage::RunScript(script(12, Phase::Operational)),
        ControlMessage::Cancel { run: run_id(12) },
        ControlMessage::AckOutput { run: run_id(1), seq: 1 },
        ControlMessage::AckFinished { run: run_id(1) },
        ControlMessage::TagChangeResult {
            request_id: 7,
            tags: vec![tag("lb:pool=www")],
        },
        ControlMessage::TagQueryResult {
            request_id: 8,
            servers: vec![PeerServer {
                id: server_id(),
                name: Name::parse("web-1").unwrap(),
                tags: vec![tag("lb:pool=www")],
                private_ip: Some(ip),
                public_ip: None,
            }],
            truncated: false,
        },
        ControlMessage::RequestFailed {
            request_id: 9,
            message: "tag namespace stratus is reserved".into(),
        },
        ControlMessage::Heartbeat { at: at() },
    ]
}
