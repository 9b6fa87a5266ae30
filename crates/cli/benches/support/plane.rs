//! A `stratus serve` child process on a temporary data directory, for the benchmarks that run
//! on the local cloud (as root), and the clean-up of the cloud's host-side pieces.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Plane {
    child: Child,
    pub url: String,
    pub data: PathBuf,
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Plane {
    /// `stratus serve` on a free loopback port, with `extra` arguments.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let url = loop {
            let line = lines.next().expect("address").expect("line");
            if let Some(rest) = line.strip_prefix("Stratus control plane listening on ") {
                break rest.split_whitespace().next().expect("url").to_string();
            }
        };
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Self {
            child,
            url,
            data: data.to_path_buf(),
        }
    }

    /// Run `stratus ARGS` against it; its stdout (a failure panics with the output).
    pub fn stratus(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args(args)
            .env("STRATUS_URL", &self.url)
            .env("STRATUS_DATA_DIR", &self.data)
            .env("XDG_CONFIG_HOME", self.data.join("config"))
            .env_remove("STRATUS_TOKEN")
            .output()
            .expect("run stratus");
        assert!(
            out.status.success(),
            "stratus {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn server(&self, key: &str) -> serde_json::Value {
        serde_json::from_str(&self.stratus(&["--json", "server", "show", key])).expect("json")
    }

    /// Poll a server until it is in `state` (bounded: 15 min); a stranded server panics.
    pub fn wait(&self, key: &str, state: &str) -> serde_json::Value {
        for _ in 0..18_000 {
            let s = self.server(key);
            if s["state"] == state {
                return s;
            }
            assert_ne!(s["state"], "stranded", "{s}");
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{key} never became {state}");
    }
}

/// Removes a local cloud's host-side pieces on drop, also when the benchmark panics.
pub struct Cleanup(pub String, pub PathBuf);

impl Cleanup {
    /// For the cloud `cloud` of the control plane whose data directory is `data`.
    pub fn for_cloud(data: &Path, cloud: &str) -> Self {
        Self(
            stratus_server::drivers::network_tag(data, cloud),
            data.join("local/clouds").join(cloud),
        )
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        stratus_local::purge::purge(&self.0, Some(&self.1));
    }
}
