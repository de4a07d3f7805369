//! The real binary: a clean environment, bounded runs, signals sent with the `kill` command.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::WAIT_LIMIT;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_runner");

/// The binary with a clean environment (no OPENAI_* or RUNNER_* from the developer's shell),
/// run in `dir`.
pub fn runner(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    clean_env(&mut cmd);
    cmd
}

/// Removes the variables the runner reads from a command's environment.
pub fn clean_env(cmd: &mut Command) {
    for var in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "RUNNER_BUSY_TIMEOUT_MS",
        "RUNNER_DB",
        "RUNNER_LOG",
    ] {
        cmd.env_remove(var);
    }
}

/// Runs `cmd` to the end within [`WAIT_LIMIT`].
pub async fn output(cmd: Command) -> Output {
    output_within(cmd, WAIT_LIMIT).await
}

/// Runs `cmd` to the end within `limit`: for the few runs that read a file of hundreds of
/// thousands of lines in a debug build, on a machine that runs the rest of the suite beside them.
pub async fn output_within(mut cmd: Command, limit: Duration) -> Output {
    tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(move || cmd.output().expect("binary runs")),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out after {limit:?}: the binary"))
    .expect("join")
}

/// Lossy UTF-8, for messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running binary whose stderr is collected as it comes. Killed (SIGKILL) if dropped while
/// still running, so a failing test leaves no process behind.
pub struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Running {
    /// Spawns `cmd` with stdout discarded and stderr collected.
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the binary");
        let pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().expect("stderr lock");
                all.push_str(&line);
                all.push('\n');
            }
        });
        Running {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` ("INT", "TERM", "KILL") with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// The exit status if the process has ended (and reaps it), without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Waits until stderr contains `needle`, within [`WAIT_LIMIT`].
    pub async fn wait_for_stderr(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        while !self.stderr().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {needle:?} on stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the process to exit, within [`WAIT_LIMIT`]; returns its status and its stderr.
    pub async fn wait(mut self) -> (ExitStatus, String) {
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for pid {} to exit; stderr so far:\n{}",
                self.pid(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some(reader) = self.reader.take() {
            // The pipe closed with the process: the reader ends.
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
        (status, self.stderr())
    }

    /// SIGKILL, then reap (so that `/proc/PID` is gone, as after a real crash whose parent
    /// waited).
    pub async fn kill_9(self) {
        self.signal("KILL");
        let (status, _) = self.wait().await;
        assert_eq!(status.code(), None, "killed by a signal");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
