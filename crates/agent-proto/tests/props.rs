//! Property tests for frames: decoding never panics (on any string, on message-like JSON, on
//! mangled frames), every valid message survives encode → decode, and secrets stay out of `Debug`.

mod common;

use std::collections::BTreeMap;

use chrono::DateTime;
use proptest::prelude::*;
use proptest::sample::Index;
use stratus_agent_proto::*;
use stratus_types::run::Phase;
use stratus_types::script::Frequency;
use stratus_types::tag::{Selector, Tag};
use stratus_types::{Name, RunId, ServerId, Timestamp};

fn run() -> impl Strategy<Value = RunId> {
    any::<u128>().prop_map(common::run_id)
}

fn time() -> impl Strategy<Value = Timestamp> {
    (0i64..8_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
}

fn tag() -> impl Strategy<Value = Tag> {
    let part = "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}";
    let value = "[^\\p{Cc}\\s,*?]([^\\p{Cc},*?]{0,38}[^\\p{Cc}\\s,*?])?";
    (part, part, value).prop_map(|(n, p, v)| Tag::new(&n, &p, &v).unwrap())
}

fn tags() -> impl Strategy<Value = Vec<Tag>> {
    prop::collection::vec(tag(), 0..5)
}

fn name() -> impl Strategy<Value = Name> {
    "[a-z]([a-z0-9_.-]{0,20}[a-z0-9])?".prop_map(|s| Name::parse(&s).unwrap())
}

fn short() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,40}"
}

fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,120}"
}

fn env_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,20}"
}

fn env() -> impl Strategy<Value = Vec<EnvVar>> {
    let value = prop_oneof![
        text().prop_map(EnvValue::Text),
        text().prop_map(|s| EnvValue::Secret(SecretString::new(s))),
        env_name().prop_map(EnvValue::Instance),
        artifact().prop_map(EnvValue::Artifact),
    ];
    prop::collection::btree_map(env_name(), value, 0..6)
        .prop_map(|m: BTreeMap<_, _>| m.into_iter().map(|(name, value)| EnvVar { name, value }).collect())
}

fn script(phase: impl Strategy<Value = Phase>) -> impl Strategy<Value = ScriptRun> {
    let frequency = prop_oneof![
        Just(Frequency::PerInstance),
        Just(Frequency::EveryBoot),
        Just(Frequency::OnDemand)
    ];
    (
        run(),
        name(),
        "[a-z][^\\x00]{0,200}",
        env(),
        prop::option::of(1u64..),
        phase,
        frequency,
    )
        .prop_map(|(run, name, body, env, timeout_secs, phase, frequency)| ScriptRun {
            run,
            name,
            body,
            env,
            timeout_secs,
            phase,
            frequency,
        })
}

fn finished() -> impl Strategy<Value = RunFinished> {
    let outcome = prop_oneof![
        any::<i32>().prop_map(|c| (Outcome::Exited, Some(c), None, None)),
        (1..=64).prop_map(|s| (Outcome::Signalled, None, Some(s), None)),
        prop::option::of(1..=64).prop_map(|s| (Outcome::TimedOut, None, s, None)),
        prop::option::of(1..=64).prop_map(|s| (Outcome::Cancelled, None, s, None)),
        text().prop_map(|e| (Outcome::FailedToStart, None, None, Some(e))),
        Just((Outcome::Interrupted, None, None, None)),
        Just((Outcome::Skipped, None, None, None)),
    ];
    (run(), outcome, time(), 0u64..10_000, any::<Index>()).prop_map(|(run, o, finished_at, chunks, bytes)| {
        let spread = chunks * (limits::MAX_OUTPUT_DATA as u64 - 1) + 1;
        RunFinished {
            run,
            outcome: o.0,
            exit_code: o.1,
            signal: o.2,
            error: o.3,
            finished_at,
            output_chunks: chunks,
            output_bytes: chunks + bytes.index(spread as usize) as u64 * u64::from(chunks > 0),
        }
    })
}

fn sha256() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

fn artifact() -> impl Strategy<Value = ArtifactRef> {
    (
        "/api/v1/artifacts/fetch\\?[a-z0-9=&%._-]{0,80}",
        sha256(),
        any::<u64>(),
        "[a-zA-Z0-9._-]{0,20}[a-zA-Z0-9_-]",
    )
        .prop_map(|(url, sha256, size, name)| ArtifactRef {
            url,
            sha256,
            size,
            name,
        })
}

fn abs_path() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9_-][a-z0-9._-]{0,10}", 1..4).prop_map(|segs| format!("/{}", segs.join("/")))
}

fn managed_file() -> impl Strategy<Value = ManagedFile> {
    (
        abs_path(),
        text(),
        0u32..=0o777,
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(artifact()),
        prop::option::of(5u32..=86_400),
    )
        .prop_map(
            |(path, content, mode, check, reload, source, recheck_secs)| ManagedFile {
                path,
                content: if source.is_some() { String::new() } else { content },
                source,
                recheck_secs,
                mode,
                check,
                reload,
            },
        )
}

fn logins() -> impl Strategy<Value = Logins> {
    (
        prop::collection::btree_map(
            "[a-z_][a-z0-9_-]{0,10}",
            (prop::collection::vec("[A-Za-z0-9+/= @.-]{1,60}", 0..3), any::<bool>()),
            0..4,
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(accounts, end_sessions, exclusive)| Logins {
            accounts: accounts
                .into_iter()
                .map(|(name, (keys, sudo))| LoginAccount { name, keys, sudo })
                .collect(),
            end_sessions,
            exclusive,
        })
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    let hello = (
        prop::collection::vec(1u32.., 1..4),
        short(),
        any::<u128>(),
        short(),
        any::<u64>(),
        prop::collection::btree_set(run(), 0..5),
    )
        .prop_map(|(versions, agent_version, server, boot_id, g, unacked)| {
            AgentMessage::Hello(Hello {
                versions,
                agent_version,
                server: ServerId(uuid::Uuid::from_u128(server)),
                boot_id,
                last_generation: Generation(g),
                unacked: unacked.into_iter().collect(),
            })
        });
    let stream = prop_oneof![Just(OutputStream::Stdout), Just(OutputStream::Stderr)];
    let output = (run(), any::<u64>(), stream, "[^\\x00]{1,200}", time()).prop_map(|(run, seq, stream, data, at)| {
        AgentMessage::Output(Output {
            run,
            seq,
            stream,
            data,
            at,
        })
    });
    let change = (any::<u64>(), tags(), tags()).prop_filter_map("nothing to change", |(request_id, add, remove)| {
        let add: Vec<Tag> = add.into_iter().filter(|t| !remove.contains(t)).collect();
        (!add.is_empty() || !remove.is_empty()).then_some(AgentMessage::TagChange {
            request_id,
            add,
            remove,
        })
    });
    let query = (any::<u64>(), prop::collection::vec(tag(), 1..4)).prop_map(|(request_id, ts)| {
        let text = ts.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        AgentMessage::TagQuery {
            request_id,
            selector: Selector::parse(&text).unwrap(),
        }
    });
    prop_oneof![
        hello,
        time().prop_map(|at| AgentMessage::Heartbeat { at }),
        (1u64..).prop_map(|g| AgentMessage::Applied {
            generation: Generation(g)
        }),
        (run(), time()).prop_map(|(run, started_at)| AgentMessage::RunStarted { run, started_at }),
        output,
        finished().prop_map(AgentMessage::RunFinished),
        change,
        query,
        (
            "[a-z_][a-z0-9_-]{0,12}",
            any::<bool>(),
            prop::option::of("[0-9a-f.:]{1,39}"),
            time()
        )
            .prop_map(|(user, sudo, from, at)| AgentMessage::Access {
                user,
                kind: if sudo { AccessKind::Sudo } else { AccessKind::Login },
                from,
                at,
            }),
        (abs_path(), sha256(), any::<bool>(), prop::option::of(text())).prop_map(|(path, sha256, applied, error)| {
            AgentMessage::FileStatus {
                path,
                sha256,
                applied,
                error,
            }
        }),
        (
            prop::option::of(text()),
            prop::collection::vec(abs_path(), 0..4),
            prop::collection::vec(short(), 0..4)
        )
            .prop_map(|(error, found, removed)| {
                AgentMessage::ImagePrepared(ImagePrepared {
                    secret_found_in: if error.is_some() { found } else { vec![] },
                    error,
                    removed,
                })
            }),
    ]
}

fn control_message() -> impl Strategy<Value = ControlMessage> {
    let resume = (run(), any::<u64>(), any::<bool>()).prop_map(|(run, next_seq, finished)| Resume {
        run,
        next_seq,
        finished,
    });
    let welcome =
        (1u32.., 1u32..=3600, prop::collection::vec(resume, 0..4)).prop_map(|(version, heartbeat_secs, mut resume)| {
            resume.sort_by_key(|r| r.run);
            resume.dedup_by_key(|r| r.run);
            ControlMessage::Welcome(Welcome {
                version,
                heartbeat_secs,
                resume,
            })
        });
    let reason = prop_oneof![
        Just(RefusedReason::UnsupportedVersion),
        Just(RefusedReason::WrongServer),
        Just(RefusedReason::Terminated),
        Just(RefusedReason::ProtocolError),
        Just(RefusedReason::Unavailable),
    ];
    let desired = (
        1u64..,
        prop::collection::vec(script(Just(Phase::Boot)), 0..3),
        tags(),
        prop::collection::btree_map(abs_path(), managed_file(), 0..3),
        prop::option::of(logins()),
    )
        .prop_map(|(g, mut boot, tags, files, logins)| {
            boot.sort_by_key(|r| r.run);
            boot.dedup_by_key(|r| r.run);
            ControlMessage::DesiredState(DesiredState {
                generation: Generation(g),
                boot,
                tags,
                files: files.into_iter().map(|(path, f)| ManagedFile { path, ..f }).collect(),
                logins,
            })
        });
    let phase = prop_oneof![Just(Phase::Operational), Just(Phase::Decommission)];
    let peer = (
        any::<u128>(),
        name(),
        tags(),
        prop::option::of(any::<std::net::IpAddr>()),
    )
        .prop_map(|(id, name, tags, ip)| PeerServer {
            id: ServerId(uuid::Uuid::from_u128(id)),
            name,
            tags,
            private_ip: ip,
            public_ip: ip,
        });
    prop_oneof![
        welcome,
        (reason, text()).prop_map(|(reason, message)| ControlMessage::Refused(Refused { reason, message })),
        desired,
        script(phase).prop_map(ControlMessage::RunScript),
        run().prop_map(|run| ControlMessage::Cancel { run }),
        (run(), any::<u64>()).prop_map(|(run, seq)| ControlMessage::AckOutput { run, seq }),
        run().prop_map(|run| ControlMessage::AckFinished { run }),
        (any::<u64>(), tags()).prop_map(|(request_id, tags)| ControlMessage::TagChangeResult { request_id, tags }),
        (any::<u64>(), prop::collection::vec(peer, 0..3), any::<bool>()).prop_map(
            |(request_id, servers, truncated)| ControlMessage::TagQueryResult {
                request_id,
                servers,
                truncated
            }
        ),
        (any::<u64>(), text()).prop_map(|(request_id, message)| ControlMessage::RequestFailed { request_id, message }),
        time().prop_map(|at| ControlMessage::Heartbeat { at }),
        prop::collection::vec("[^\\x00]{1,40}", 0..4).prop_map(|secrets| ControlMessage::PrepareImage(PrepareImage {
            secrets: secrets.into_iter().map(SecretString::new).collect(),
        })),
    ]
}

/// JSON that looks like a message: the protocol's own keys and type names, nested at random.
fn json_like() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let words = prop::sample::select(vec![
        "type",
        "hello",
        "heartbeat",
        "applied",
        "run_started",
        "output",
        "run_finished",
        "tag_change",
        "tag_query",
        "welcome",
        "refused",
        "desired_state",
        "run_script",
        "cancel",
        "ack_output",
        "run",
        "seq",
        "data",
        "env",
        "name",
        "value",
        "secret",
        "generation",
        "boot",
        "at",
        "versions",
        "00000000-0000-0000-0000-000000000001",
        "2026-05-01T12:00:00Z",
        "lb:pool=www",
        "exited",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        words.clone().prop_map(Value::from),
        ".{0,10}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(words.clone().prop_map(String::from), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoding_never_panics_on_any_string(frame in ".*") {
        let _ = decode_agent(&frame);
        let _ = decode_control(&frame);
    }

    #[test]
    fn decoding_never_panics_on_message_like_json(value in json_like(), kind in prop::sample::select(vec![
        "hello", "output", "run_finished", "tag_change", "welcome", "desired_state", "run_script",
    ])) {
        let mut value = value;
        if let Some(map) = value.as_object_mut() {
            map.insert("type".into(), kind.into());
        }
        let frame = value.to_string();
        for result in [decode_agent(&frame).map(drop), decode_control(&frame).map(drop)] {
            if let Err(e) = result {
                prop_assert!(e.to_string().len() < 512);
            }
        }
    }

    #[test]
    fn decoding_never_panics_on_mangled_frames(msg in agent_message(), at in any::<Index>(), junk in ".{0,8}") {
        let frame = encode_agent(&msg).unwrap();
        let mut cut = at.index(frame.len() + 1);
        while !frame.is_char_boundary(cut) {
            cut -= 1;
        }
        let _ = decode_agent(&format!("{}{junk}", &frame[..cut]));
        let _ = decode_agent(&format!("{}{junk}{}", &frame[..cut], &frame[cut..]));
    }

    #[test]
    fn agent_messages_round_trip(msg in agent_message()) {
        let frame = encode_agent(&msg).unwrap();
        prop_assert_eq!(decode_agent(&frame).unwrap(), msg);
    }

    #[test]
    fn control_messages_round_trip(msg in control_message()) {
        let frame = encode_control(&msg).unwrap();
        prop_assert_eq!(decode_control(&frame).unwrap(), msg);
    }

    #[test]
    fn secrets_never_show_in_debug(msg in control_message()) {
        if let ControlMessage::RunScript(run) = &msg {
            let dbg = format!("{msg:?}");
            for secret in run.secrets().filter(|s| s.len() > 3 && !s.contains("***")) {
                prop_assert!(!dbg.contains(secret), "{} in {}", secret, dbg);
            }
        }
    }
}
