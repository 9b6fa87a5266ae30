//! Messages outside the protocol's limits and rules are refused by the sender's encoder and,
//! when a broken sender sends them anyway, by the receiver's decoder, naming the field.

mod common;

use common::*;
use stratus_agent_proto::limits::*;
use stratus_agent_proto::*;
use stratus_types::run::Phase;
use stratus_types::tag::{Selector, Tag};

fn invalid_agent(msg: AgentMessage, field: &str) {
    let err = encode_agent(&msg).expect_err("encoding should refuse it");
    let ProtoError::Invalid { field: f, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(f, field, "{err}");
    // The receiving side refuses the same message if a broken sender sends it anyway.
    let frame = serde_json::to_string(&msg).unwrap();
    assert_eq!(decode_agent(&frame).unwrap_err(), err);
}

fn invalid_control(msg: ControlMessage, field: &str) {
    let err = encode_control(&msg).expect_err("encoding should refuse it");
    let ProtoError::Invalid { field: f, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(f, field, "{err}");
    let frame = serde_json::to_string(&msg).unwrap();
    assert_eq!(decode_control(&frame).unwrap_err(), err);
}

#[test]
fn agent_messages_outside_the_limits_are_refused() {
    let output = |data: String| {
        AgentMessage::Output(Output {
            run: run_id(1),
            seq: 0,
            stream: OutputStream::Stdout,
            data,
            at: at(),
        })
    };
    invalid_agent(output("x".repeat(MAX_OUTPUT_DATA + 1)), "data");
    invalid_agent(output(String::new()), "data");
    invalid_agent(output("a\0b".into()), "data");
    assert!(encode_agent(&output("x".repeat(MAX_OUTPUT_DATA))).is_ok());

    let hello = |f: fn(&mut Hello)| {
        let mut h = hello();
        f(&mut h);
        AgentMessage::Hello(h)
    };
    invalid_agent(hello(|h| h.versions.clear()), "versions");
    invalid_agent(hello(|h| h.versions = vec![0]), "versions");
    invalid_agent(hello(|h| h.versions = (1..=17).collect()), "versions");
    invalid_agent(hello(|h| h.agent_version = "v".repeat(MAX_NAME + 1)), "agent_version");
    invalid_agent(hello(|h| h.agent_version = "v1\nFAKE LOG LINE".into()), "agent_version");
    invalid_agent(hello(|h| h.boot_id = String::new()), "boot_id");
    invalid_agent(hello(|h| h.unacked = vec![run_id(1), run_id(1)]), "unacked[1]");
    invalid_agent(
        hello(|h| h.unacked = (0..=MAX_RUNS as u128).map(run_id).collect()),
        "unacked",
    );

    invalid_agent(
        AgentMessage::Applied {
            generation: Generation::NONE,
        },
        "generation",
    );
    invalid_agent(
        AgentMessage::TagChange {
            request_id: 1,
            add: vec![],
            remove: vec![],
        },
        "add",
    );
    let t = tag("lb:pool=www");
    invalid_agent(
        AgentMessage::TagChange {
            request_id: 1,
            add: vec![t.clone()],
            remove: vec![t],
        },
        "add[0]",
    );
    let many: Vec<Tag> = (0..=MAX_TAGS).map(|i| tag(&format!("t:n{i}=v"))).collect();
    invalid_agent(
        AgentMessage::TagChange {
            request_id: 1,
            add: many,
            remove: vec![],
        },
        "add",
    );
    let term = |i: usize| format!("n{i}{}:p{}={}", "s".repeat(60), "q".repeat(60), "v".repeat(200));
    let selector = Selector::parse(&(0..32).map(term).collect::<Vec<_>>().join(",")).unwrap();
    invalid_agent(
        AgentMessage::TagQuery {
            request_id: 1,
            selector,
        },
        "selector",
    );
}

#[test]
fn run_finished_must_be_consistent() {
    let f = finished();
    let bad = [
        (
            RunFinished {
                exit_code: None,
                ..f.clone()
            },
            "exit_code",
        ),
        (
            RunFinished {
                signal: Some(9),
                ..f.clone()
            },
            "signal",
        ),
        (
            RunFinished {
                outcome: Outcome::Signalled,
                exit_code: None,
                ..f.clone()
            },
            "signal",
        ),
        (
            RunFinished {
                outcome: Outcome::TimedOut,
                ..f.clone()
            },
            "exit_code",
        ),
        (
            RunFinished {
                outcome: Outcome::Cancelled,
                exit_code: None,
                signal: Some(0),
                ..f.clone()
            },
            "signal",
        ),
        (
            RunFinished {
                outcome: Outcome::FailedToStart,
                exit_code: None,
                ..f.clone()
            },
            "error",
        ),
        (
            RunFinished {
                error: Some("e".repeat(MAX_MESSAGE + 1)),
                ..f.clone()
            },
            "error",
        ),
        (
            RunFinished {
                output_bytes: 1,
                ..f.clone()
            },
            "output_bytes",
        ),
        (
            RunFinished {
                output_chunks: 0,
                ..f.clone()
            },
            "output_bytes",
        ),
    ];
    for (msg, field) in bad {
        invalid_agent(AgentMessage::RunFinished(msg), field);
    }
    let killed = RunFinished {
        outcome: Outcome::TimedOut,
        exit_code: None,
        signal: Some(9),
        ..f.clone()
    };
    assert!(encode_agent(&AgentMessage::RunFinished(killed.clone())).is_ok());
    assert_eq!(killed.status(), stratus_types::run::RunStatus::TimedOut);
    assert_eq!(f.status(), stratus_types::run::RunStatus::Succeeded);
    let failed = RunFinished {
        exit_code: Some(3),
        ..f
    };
    assert_eq!(failed.status(), stratus_types::run::RunStatus::Failed);
}

#[test]
fn control_messages_outside_the_limits_are_refused() {
    let op = |f: fn(&mut ScriptRun)| {
        let mut s = script(1, Phase::Operational);
        f(&mut s);
        ControlMessage::RunScript(s)
    };
    invalid_control(op(|s| s.phase = Phase::Boot), "phase");
    invalid_control(op(|s| s.body = " \n".into()), "body");
    invalid_control(op(|s| s.body = "echo \0".into()), "body");
    invalid_control(op(|s| s.timeout_secs = Some(0)), "timeout_secs");
    invalid_control(
        op(|s| s.env = (0..=MAX_ENV).map(|i| EnvVar::text(format!("V{i}"), "x")).collect()),
        "env",
    );
    invalid_control(op(|s| s.env[0].name = "1ABC".into()), "env[0].name");
    invalid_control(op(|s| s.env[0].name = "A=B".into()), "env[0].name");
    invalid_control(op(|s| s.env[0].name = "A".repeat(MAX_NAME + 1)), "env[0].name");
    invalid_control(op(|s| s.env[1].name = "VERSION".into()), "env[1].name");
    invalid_control(
        op(|s| s.env[0] = EnvVar::text("V", "x".repeat(MAX_ENV_VALUE + 1))),
        "env[0].value",
    );
    invalid_control(op(|s| s.env[2] = EnvVar::instance("ADDR", "$(reboot)")), "env[2].value");

    let desired = |boot: Vec<ScriptRun>| DesiredState {
        generation: Generation(2),
        boot,
        tags: vec![],
        files: vec![],
        logins: None,
    };
    invalid_control(
        ControlMessage::DesiredState(desired(vec![script(1, Phase::Operational)])),
        "boot[0].phase",
    );
    invalid_control(
        ControlMessage::DesiredState(desired(vec![script(1, Phase::Boot), script(1, Phase::Boot)])),
        "boot[1]",
    );
    let mut bad = script(2, Phase::Boot);
    bad.body = String::new();
    invalid_control(
        ControlMessage::DesiredState(desired(vec![script(1, Phase::Boot), bad])),
        "boot[1].body",
    );
    invalid_control(
        ControlMessage::DesiredState(DesiredState {
            generation: Generation::NONE,
            ..desired(vec![])
        }),
        "generation",
    );

    // Managed files: hostile paths, oversized content, bad modes, repeats, too many.
    let file = |path: &str| ManagedFile::inline(path, "x");
    let with_files = |files: Vec<ManagedFile>| {
        ControlMessage::DesiredState(DesiredState {
            files,
            ..desired(vec![])
        })
    };
    for bad in [
        "etc/x",
        "/",
        "/etc/../x",
        "/etc//x",
        "/etc/./x",
        "/etc/x/",
        "/etc/\0x",
        "",
    ] {
        invalid_control(with_files(vec![file(bad)]), "files[0].path");
    }
    invalid_control(
        with_files(vec![ManagedFile {
            content: "x".repeat(MAX_FILE_CONTENT + 1),
            ..file("/etc/x")
        }]),
        "files[0].content",
    );
    invalid_control(
        with_files(vec![ManagedFile {
            mode: 0o4755,
            ..file("/etc/x")
        }]),
        "files[0].mode",
    );
    invalid_control(
        with_files(vec![ManagedFile {
            reload: Some("x".repeat(MAX_COMMAND + 1)),
            ..file("/etc/x")
        }]),
        "files[0].reload",
    );
    invalid_control(with_files(vec![file("/etc/x"), file("/etc/x")]), "files[1].path");
    let sourced = ArtifactRef {
        url: "/api/v1/artifacts/fetch?x=1".into(),
        sha256: "c".repeat(64),
        size: 1,
        name: "x.json".into(),
    };
    invalid_control(
        with_files(vec![ManagedFile {
            source: Some(sourced.clone()),
            ..file("/etc/x")
        }]),
        "files[0].content",
    );
    invalid_control(
        with_files(vec![ManagedFile {
            source: Some(ArtifactRef {
                url: "file:///etc/shadow".into(),
                ..sourced.clone()
            }),
            ..ManagedFile::inline("/etc/x", "")
        }]),
        "files[0].source.url",
    );
    invalid_control(
        with_files(vec![ManagedFile {
            recheck_secs: Some(1),
            ..file("/etc/x")
        }]),
        "files[0].recheck_secs",
    );
    invalid_control(
        with_files((0..=MAX_FILES).map(|i| file(&format!("/etc/f{i}"))).collect()),
        "files",
    );

    // Logins: account names that are not Unix names, repeats, and key lines that would inject
    // a second authorized_keys entry.
    let logins = |accounts: Vec<LoginAccount>| {
        ControlMessage::DesiredState(DesiredState {
            logins: Some(Logins {
                accounts,
                end_sessions: true,
                exclusive: false,
            }),
            ..desired(vec![])
        })
    };
    let account = |name: &str, key: &str| LoginAccount {
        name: name.into(),
        keys: vec![key.into()],
        sudo: false,
    };
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5vdA alice";
    for bad in ["", "Root", "1abc", "a b", "../x", &"a".repeat(33)] {
        invalid_control(logins(vec![account(bad, key)]), "logins.accounts[0].name");
    }
    invalid_control(
        logins(vec![account("bob", key), account("bob", key)]),
        "logins.accounts[1].name",
    );
    invalid_control(
        logins(vec![account("bob", "ssh-ed25519 AAAA x\nssh-rsa AAAA evil")]),
        "logins.accounts[0].keys[0]",
    );

    // Artifact inputs: only http(s) or rooted URLs, a real hash, a plain file name.
    let art = |url: &str, sha256: &str, name: &str| {
        let mut s = script(1, Phase::Operational);
        s.env[0] = EnvVar {
            name: "ARCHIVE".into(),
            value: EnvValue::Artifact(ArtifactRef {
                url: url.into(),
                sha256: sha256.into(),
                size: 1,
                name: name.into(),
            }),
        };
        ControlMessage::RunScript(s)
    };
    let sha = "a".repeat(64);
    for url in ["file:///etc/shadow", "ftp://x/y", "relative/path", "/has space", ""] {
        invalid_control(art(url, &sha, "a.tgz"), "env[0].value.url");
    }
    invalid_control(
        art(&format!("/{}", "u".repeat(MAX_URL)), &sha, "a.tgz"),
        "env[0].value.url",
    );
    for bad in ["abc", &"A".repeat(64), &"g".repeat(64)] {
        invalid_control(art("/api/v1/artifacts/fetch?x=1", bad, "a.tgz"), "env[0].value.sha256");
    }
    for bad in ["", ".", "..", "a/b", "../../etc/passwd"] {
        invalid_control(art("/api/v1/artifacts/fetch?x=1", &sha, bad), "env[0].value.name");
    }
    let message = "m".repeat(MAX_MESSAGE + 1);
    invalid_agent_file_status(&message);
    invalid_image_preparation(&message);

    let welcome = |heartbeat_secs| {
        ControlMessage::Welcome(Welcome {
            version: 1,
            heartbeat_secs,
            resume: vec![],
        })
    };
    invalid_control(welcome(0), "heartbeat_secs");
    invalid_control(welcome(3601), "heartbeat_secs");
    invalid_control(
        ControlMessage::Welcome(Welcome {
            version: 0,
            heartbeat_secs: 15,
            resume: vec![],
        }),
        "version",
    );
    let message = "m".repeat(MAX_MESSAGE + 1);
    invalid_control(ControlMessage::RequestFailed { request_id: 1, message }, "message");
}

#[test]
fn a_boot_list_too_large_for_one_frame_is_refused_where_it_is_made() {
    let mut boot = Vec::new();
    for i in 0..20 {
        let mut s = script(i, Phase::Boot);
        s.body = "x".repeat(MAX_BODY);
        boot.push(s);
    }
    let msg = ControlMessage::DesiredState(DesiredState {
        generation: Generation(1),
        boot,
        tags: vec![],
        files: vec![],
        logins: None,
    });
    let err = encode_control(&msg).unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::TooLarge {
                max: MAX_CONTROL_FRAME,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A `FileStatus` from an agent is checked like every agent message.
fn invalid_agent_file_status(long: &str) {
    let status = |path: &str, sha256: &str, error: Option<&str>| AgentMessage::FileStatus {
        path: path.into(),
        sha256: sha256.into(),
        applied: false,
        error: error.map(str::to_string),
    };
    let sha = "b".repeat(64);
    for (msg, field) in [
        (status("relative", &sha, None), "path"),
        (status("/etc/../x", &sha, None), "path"),
        (status("/etc/x", "nothex", None), "sha256"),
        (status("/etc/x", &sha, Some(long)), "error"),
    ] {
        invalid_agent(msg, field);
    }
}

/// `PrepareImage` and `ImagePrepared`: bounded lists, no empty secret, no control characters
/// in a path (a hostile file name is escaped by the agent before it is sent), and a found
/// secret only with a refusal.
fn invalid_image_preparation(long: &str) {
    let prepare = |secrets: Vec<&str>| {
        ControlMessage::PrepareImage(PrepareImage {
            secrets: secrets.into_iter().map(SecretString::new).collect(),
        })
    };
    invalid_control(prepare(vec!["ok", ""]), "secrets[1]");
    invalid_control(prepare(vec!["x"; MAX_SECRETS + 1]), "secrets");
    let big = "s".repeat(MAX_ENV_VALUE + 1);
    invalid_control(prepare(vec![&big]), "secrets[0]");
    encode_control(&prepare(vec!["fine"; 3])).expect("within the limits");

    let answer = |error: Option<&str>, found: Vec<&str>, removed: Vec<&str>| {
        AgentMessage::ImagePrepared(ImagePrepared {
            error: error.map(str::to_string),
            secret_found_in: found.into_iter().map(str::to_string).collect(),
            removed: removed.into_iter().map(str::to_string).collect(),
        })
    };
    invalid_agent(answer(Some(long), vec![], vec![]), "error");
    invalid_agent(answer(Some("e"), vec!["/a\nb"], vec![]), "secret_found_in[0]");
    invalid_agent(
        answer(Some("e"), vec!["/x"; MAX_PREPARED_LINES + 1], vec![]),
        "secret_found_in",
    );
    invalid_agent(answer(None, vec![], vec![""]), "removed[0]");
    invalid_agent(answer(None, vec![], vec!["l"; MAX_PREPARED_LINES + 1]), "removed");
    invalid_agent(answer(None, vec!["/etc/app.conf"], vec![]), "secret_found_in");
    encode_agent(&answer(Some("refused"), vec!["/etc/app.conf"], vec![])).expect("a refusal");
    encode_agent(&answer(None, vec![], vec!["ssh host keys: 6"])).expect("done");
}
