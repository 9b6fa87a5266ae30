//! The run journal: everything the agent reports is written here first and sent from here, so
//! a run keeps going, and its output keeps accumulating, while the control plane is away.
//!
//! ```text
//! STATE/runs/ID/started        started_at, pid and the process's start time
//! STATE/runs/ID/output         one JSON `Output` per line (masked, numbered from 0)
//! STATE/runs/ID/finished.json  the `RunFinished` (written to a temporary file, then renamed)
//! STATE/runs/ID.done           tombstone once the control plane stored the finish: `ok` or
//!                              `failed`, kept forever, so a run id never runs twice
//! STATE/per-instance/NAME      a per-instance script that succeeded on this instance
//! STATE/state.json             the last desired-state generation and the tags (no runs, no
//!                              secrets)
//! ```
//!
//! Secrets never reach the disk: output is masked before it is written, and a run's script and
//! environment stay in memory. Output is not fsynced chunk by chunk: a crash of the whole
//! instance may lose the last chunks; a restart of the agent loses nothing.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use stratus_agent_proto::{Generation, Outcome, Output, RunFinished};
use stratus_types::RunId;
use stratus_types::tag::Tag;

/// The most output one run keeps on disk; past it output is dropped and one note says how much.
pub const MAX_RUN_OUTPUT: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Journal {
    state: PathBuf,
}

/// Where the journal stands on a run id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Never seen.
    No,
    /// Accepted (its directory exists): running, or finished and not yet acknowledged.
    Open,
    /// The control plane stored its finish; `true` if it succeeded.
    Done(bool),
}

/// The desired state as recorded.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    pub generation: Generation,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl Journal {
    pub fn open(state: &Path) -> std::io::Result<Self> {
        let j = Self {
            state: state.to_path_buf(),
        };
        for d in [j.runs(), state.join("per-instance")] {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d)?;
        }
        Ok(j)
    }

    fn runs(&self) -> PathBuf {
        self.state.join("runs")
    }

    fn dir(&self, run: RunId) -> PathBuf {
        self.runs().join(run.to_string())
    }

    fn tombstone(&self, run: RunId) -> PathBuf {
        self.runs().join(format!("{run}.done"))
    }

    pub fn known(&self, run: RunId) -> Known {
        if let Ok(t) = std::fs::read_to_string(self.tombstone(run)) {
            return Known::Done(t.trim() == "ok");
        }
        if self.dir(run).is_dir() { Known::Open } else { Known::No }
    }

    /// Take a run on: false if this run id was seen before (it is never run again).
    pub fn accept(&self, run: RunId) -> std::io::Result<bool> {
        if self.known(run) != Known::No {
            return Ok(false);
        }
        std::fs::DirBuilder::new().mode(0o700).create(self.dir(run))?;
        Ok(true)
    }

    pub fn mark_started(&self, run: RunId, started: &Started) -> std::io::Result<()> {
        write_atomic(&self.dir(run).join("started"), &serde_json::to_vec(started)?)
    }

    pub fn started(&self, run: RunId) -> Option<Started> {
        let b = std::fs::read(self.dir(run).join("started")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Append one output chunk (already masked).
    pub fn append(&self, out: &Output) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(out)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.dir(out.run).join("output"))?;
        f.write_all(&line)
    }

    /// Output chunks from byte `offset` on, and the offset after the last whole line.
    pub fn read_output(&self, run: RunId, offset: u64) -> std::io::Result<(Vec<Output>, u64)> {
        let mut f = match std::fs::File::open(self.dir(run).join("output")) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], offset)),
            Err(e) => return Err(e),
        };
        f.seek(std::io::SeekFrom::Start(offset))?;
        let mut buf = vec![];
        f.read_to_end(&mut buf)?;
        let mut out = vec![];
        let mut used = 0usize;
        while let Some(n) = buf[used..].iter().position(|b| *b == b'\n') {
            if let Ok(o) = serde_json::from_slice::<Output>(&buf[used..used + n]) {
                out.push(o);
            }
            used += n + 1;
        }
        Ok((out, offset + used as u64))
    }

    pub fn finish(&self, done: &RunFinished) -> std::io::Result<()> {
        write_atomic(&self.dir(done.run).join("finished.json"), &serde_json::to_vec(done)?)
    }

    pub fn finished(&self, run: RunId) -> Option<RunFinished> {
        let b = std::fs::read(self.dir(run).join("finished.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// The control plane stored the finish: keep only the tombstone.
    pub fn close(&self, run: RunId) -> std::io::Result<()> {
        if self.known(run) != Known::Open {
            return Ok(());
        }
        let ok = self.finished(run).is_some_and(|f| succeeded(&f));
        write_atomic(&self.tombstone(run), if ok { b"ok" } else { b"failed" })?;
        std::fs::remove_dir_all(self.dir(run))
    }

    /// Runs with results the control plane has not acknowledged, oldest first.
    pub fn open_runs(&self) -> std::io::Result<Vec<RunId>> {
        let mut ids: Vec<RunId> = std::fs::read_dir(self.runs())?
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// After an agent restart: a run that started and never finished was cut short. Its
    /// process group is killed if it is still there, and it is reported `interrupted` with
    /// what output it had. A run accepted but never started is forgotten: it never ran, and
    /// the control plane sends it again.
    pub fn recover(&self) -> std::io::Result<Vec<RunId>> {
        let mut cut = vec![];
        for run in self.open_runs()? {
            if self.finished(run).is_some() {
                continue;
            }
            let Some(started) = self.started(run) else {
                std::fs::remove_dir_all(self.dir(run))?;
                continue;
            };
            started.kill_if_alive();
            let (chunks, _) = self.read_output(run, 0)?;
            self.finish(&RunFinished {
                run,
                outcome: Outcome::Interrupted,
                exit_code: None,
                signal: None,
                error: Some("the agent restarted while this ran; it was not run again".into()),
                finished_at: chrono::Utc::now(),
                output_chunks: chunks.len() as u64,
                output_bytes: chunks.iter().map(|c| c.data.len() as u64).sum(),
            })?;
            cut.push(run);
        }
        Ok(cut)
    }

    pub fn per_instance_done(&self, script: &str) -> bool {
        self.state.join("per-instance").join(script).exists()
    }

    pub fn mark_per_instance(&self, script: &str) -> std::io::Result<()> {
        write_atomic(&self.state.join("per-instance").join(script), b"")
    }

    pub fn recorded(&self) -> Recorded {
        std::fs::read(self.state.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn record(&self, r: &Recorded) -> std::io::Result<()> {
        write_atomic(&self.state.join("state.json"), &serde_json::to_vec(r)?)
    }
}

/// Succeeded: exited 0, or skipped as already done.
pub fn succeeded(f: &RunFinished) -> bool {
    matches!(f.outcome, Outcome::Skipped) || (f.outcome == Outcome::Exited && f.exit_code == Some(0))
}

/// A run's process as recorded when it started.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Started {
    pub at: chrono::DateTime<chrono::Utc>,
    pub pid: u32,
    /// `/proc/PID/stat` field 22: with the pid, names the process even after pids wrap.
    pub start_time: u64,
}

impl Started {
    pub fn now(pid: u32) -> Self {
        Self {
            at: chrono::Utc::now(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
        }
    }

    /// Kill the run's process group if its leader is still the process that was started.
    fn kill_if_alive(&self) {
        if self.start_time != 0
            && start_time(self.pid) == Some(self.start_time)
            && let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Field 22 of `/proc/PID/stat`: the process's start time in clock ticks since boot.
pub fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time from a `stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first; field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_agent_proto::OutputStream;

    fn chunk(run: RunId, seq: u64, data: &str) -> Output {
        Output {
            run,
            seq,
            stream: OutputStream::Stdout,
            data: data.into(),
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_run_is_accepted_once_and_tombstoned_with_its_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let run = RunId::new();
        assert!(j.accept(run).unwrap());
        assert!(!j.accept(run).unwrap(), "a repeat is refused");
        assert_eq!(j.open_runs().unwrap(), vec![run]);
        j.finish(&RunFinished {
            run,
            outcome: Outcome::Exited,
            exit_code: Some(3),
            signal: None,
            error: None,
            finished_at: chrono::Utc::now(),
            output_chunks: 0,
            output_bytes: 0,
        })
        .unwrap();
        j.close(run).unwrap();
        assert_eq!(j.known(run), Known::Done(false));
        assert!(j.open_runs().unwrap().is_empty());
        assert!(!j.accept(run).unwrap(), "never again, even after it is forgotten");
    }

    #[test]
    fn output_is_read_from_an_offset_by_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let run = RunId::new();
        j.accept(run).unwrap();
        for i in 0..3 {
            j.append(&chunk(run, i, &format!("line {i}\n"))).unwrap();
        }
        let (all, end) = j.read_output(run, 0).unwrap();
        assert_eq!(all.iter().map(|o| o.seq).collect::<Vec<_>>(), [0, 1, 2]);
        // A torn last line (a write in progress) is left for the next read.
        let path = dir.path().join("runs").join(run.to_string()).join("output");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"run\":").unwrap();
        let (more, end2) = j.read_output(run, end).unwrap();
        assert!(more.is_empty());
        assert_eq!(end2, end);
    }

    #[test]
    fn recovery_reports_a_cut_run_interrupted_and_forgets_one_never_started() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let (cut, unstarted) = (RunId::new(), RunId::new());
        j.accept(cut).unwrap();
        j.accept(unstarted).unwrap();
        j.mark_started(
            cut,
            &Started {
                at: chrono::Utc::now(),
                pid: 1,
                start_time: 0,
            },
        )
        .unwrap();
        j.append(&chunk(cut, 0, "half\n")).unwrap();
        assert_eq!(j.recover().unwrap(), vec![cut]);
        let f = j.finished(cut).unwrap();
        assert_eq!(
            (f.outcome, f.output_chunks, f.output_bytes),
            (Outcome::Interrupted, 1, 5)
        );
        assert_eq!(j.known(unstarted), Known::No);
    }

    #[test]
    fn the_start_time_is_field_22_even_with_odd_command_names() {
        let stat = "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
        assert!(start_time(std::process::id()).is_some());
    }
}
