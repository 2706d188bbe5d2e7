//! Running commands.

use super::*;

/// What a finished command did.
pub struct Out {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout's lines.
    pub fn lines(&self) -> Vec<String> {
        self.stdout().lines().map(str::to_string).collect()
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Out {
        assert!(self.status.success(), "expected success\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Out {
        assert_eq!(self.code(), Some(code), "expected exit status {code}\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_stdout(&self, expected: &str) -> &Out {
        assert_eq!(self.stdout(), expected, "unexpected stdout\n{self}");
        self
    }

    /// The contract for errors of `bundle` and of the runtime: exit status 255, nothing
    /// on stdout, and exactly one line on stderr, `bundle: error: …`, which contains
    /// `needle` (case-insensitive).
    #[track_caller]
    pub fn assert_bundle_error(&self, needle: &str) -> &Out {
        assert_eq!(self.code(), Some(255), "expected exit status 255 (an error of bundle itself)\n{self}");
        let err = self.stderr();
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines.len() == 1 && err.ends_with('\n'),
            "expected exactly one line on stderr, got {}\n{self}",
            lines.len()
        );
        assert!(lines[0].starts_with("bundle: error: "), "stderr must start with `bundle: error: `\n{self}");
        assert!(
            lines[0].to_lowercase().contains(&needle.to_lowercase()),
            "the error line should mention {needle:?}\n{self}"
        );
        assert!(self.stdout.is_empty(), "expected nothing on stdout\n{self}");
        self
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clip = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            match s.char_indices().nth(4000) {
                Some((i, _)) => format!("{}… ({} bytes in all)", &s[..i], b.len()),
                None => s.into_owned(),
            }
        };
        writeln!(f, "  command: {}", self.what)?;
        writeln!(f, "  status:  {} (after {:.2?})", describe_status(self.status), self.elapsed)?;
        writeln!(f, "  stdout:  {:?}", clip(&self.stdout))?;
        write!(f, "  stderr:  {:?}", clip(&self.stderr))
    }
}

pub fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s}"),
    }
}

/// A short description of a command for messages: its environment changes, program and
/// arguments.
pub fn describe(cmd: &Command) -> String {
    format!("{cmd:?}")
}

/// Runs `cmd` (a `Command` or `&mut Command`; stdin empty) with the default timeout.
pub fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Out {
    run_with(cmd.borrow_mut(), None, TIMEOUT)
}

/// Runs `cmd` with `input` on stdin (None: /dev/null), collecting stdout and stderr.
/// Panics if it does not finish within `timeout`, or if its stdout stays open more than
/// a few seconds after it exited (some other process holds it).
pub fn run_with(cmd: &mut Command, input: Option<Vec<u8>>, timeout: Duration) -> Out {
    let mut p = Running::spawn_with(cmd, input.is_some());
    if let Some(input) = input {
        let mut stdin = p.child.as_mut().unwrap().stdin.take().unwrap();
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    p.finish(timeout)
}

/// A running process whose stdout is read line by line. Killed (SIGKILL) on drop if
/// still running.
pub struct Running {
    child: Option<Child>,
    what: String,
    started: Instant,
    lines: mpsc::Receiver<Vec<u8>>,
    stdout: Vec<u8>,
    stderr: Option<mpsc::Receiver<Vec<u8>>>,
    stdout_eof: bool,
}

/// Spawns `cmd`, retrying on ETXTBSY: a file just written by this test can still be open
/// for writing in a child that another test thread forked and has not yet exec'ed.
pub fn spawn_retrying(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        Running::spawn_with(cmd, false)
    }

    fn spawn_with(cmd: &mut Command, piped_stdin: bool) -> Running {
        let what = describe(cmd);
        cmd.stdin(if piped_stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_retrying(cmd).unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (tx, lines) = mpsc::channel();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || loop {
            let mut line = Vec::new();
            match out.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        let mut err = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            let _ = etx.send(buf);
        });
        Running {
            child: Some(child),
            what,
            started: Instant::now(),
            lines,
            stdout: Vec::new(),
            stderr: Some(erx),
            stdout_eof: false,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Waits for a line of stdout equal to `expected` (without its newline).
    #[track_caller]
    pub fn wait_for_line(&mut self, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.extend_from_slice(&line);
                    if line.strip_suffix(b"\n").unwrap_or(&line) == expected.as_bytes() {
                        return;
                    }
                }
                Err(e) => {
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => format!("not within {timeout:?}"),
                        mpsc::RecvTimeoutError::Disconnected => "stdout closed".to_string(),
                    };
                    self.kill();
                    let out = self.collect(Duration::from_secs(5));
                    panic!("waiting for the line {expected:?} from the bundle: {why}\n{out}");
                }
            }
        }
    }

    /// Sends signal `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we own.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}): {}", self.pid(), std::io::Error::last_os_error());
    }

    fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
    }

    /// Waits for the process (killing it after `timeout`) and for its output.
    #[track_caller]
    pub fn finish(mut self, timeout: Duration) -> Out {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        let mut timed_out = false;
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let out = self.collect(Duration::from_secs(5));
        if timed_out {
            panic!("timed out after {timeout:?}; killed\n{out}");
        }
        out
    }

    /// Reaps the process and gathers the rest of its output, which must end (EOF)
    /// within `grace` of its exit.
    fn collect(&mut self, grace: Duration) -> Out {
        let mut child = self.child.take().expect("running");
        let status = child.wait().expect("wait");
        let elapsed = self.started.elapsed();
        let deadline = Instant::now() + grace;
        let mut held = Vec::new();
        while !self.stdout_eof {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.stdout.extend_from_slice(&line),
                Err(mpsc::RecvTimeoutError::Disconnected) => self.stdout_eof = true,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    held.push("stdout");
                    break;
                }
            }
        }
        let stderr =
            match self.stderr.take().map(|r| r.recv_timeout(deadline.saturating_duration_since(Instant::now()))) {
                Some(Ok(b)) => b,
                _ => {
                    held.push("stderr");
                    Vec::new()
                }
            };
        let out = Out { what: self.what.clone(), status, stdout: std::mem::take(&mut self.stdout), stderr, elapsed };
        assert!(
            held.is_empty(),
            "{} still open {grace:?} after the process exited: another process holds it\n{out}",
            held.join(" and ")
        );
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
