//! A headless Chromium driven over the DevTools protocol, for testing the
//! dashboard as a person's browser runs it. The protocol goes over the pipe
//! Chromium opens with `--remote-debugging-pipe` (fd 3 in, fd 4 out, messages
//! ended by NUL), so no WebSocket client is needed.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// The Chromium binary, if one is installed.
pub fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("WHARF_TEST_CHROMIUM") {
        return Some(path);
    }
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find_map(|name| {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()
            .filter(|out| out.status.success())?;
        Some(String::from_utf8_lossy(&found.stdout).trim().to_string())
    })
}

pub struct Browser {
    child: std::process::Child,
    to: pipe::Sender,
    from: pipe::Receiver,
    buffered: Vec<u8>,
    next_id: u64,
    session: String,
    /// Exceptions thrown and Content Security Policy violations seen so far.
    pub problems: Vec<String>,
    _profile: tempfile::TempDir,
}

fn pipe_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2 failed");
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Start Chromium with one blank page to drive.
    pub async fn start(binary: &str) -> Self {
        use std::os::fd::AsRawFd;
        let profile = tempfile::tempdir().unwrap();
        let (browser_reads, we_write) = pipe_pair();
        let (we_read, browser_writes) = pipe_pair();
        let (fd_in, fd_out) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let mut command = std::process::Command::new(binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd_in, 3) < 0 || libc::dup2(fd_out, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        drop((browser_reads, browser_writes));
        let to = pipe::Sender::from_owned_fd(we_write).unwrap();
        let from = pipe::Receiver::from_owned_fd(we_read).unwrap();
        let mut browser = Browser {
            child,
            to,
            from,
            buffered: Vec::new(),
            next_id: 0,
            session: String::new(),
            problems: Vec::new(),
            _profile: profile,
        };
        let target = browser.command(None, "Target.createTarget", json!({ "url": "about:blank" })).await;
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached =
            browser.command(None, "Target.attachToTarget", json!({ "targetId": target, "flatten": true })).await;
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.send("Runtime.enable", json!({})).await;
        browser.send("Log.enable", json!({})).await;
        browser
    }

    async fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).await.expect("the browser closed its pipe");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let message = tokio::time::timeout_at(deadline.into(), self.next_message())
                .await
                .unwrap_or_else(|_| panic!("the browser did not answer {method} within 30 s"));
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    panic!("{method} failed: {error}");
                }
                return message["result"].clone();
            }
            self.note_event(&message);
        }
    }

    fn note_event(&mut self, message: &Value) {
        match message["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let details = &message["params"]["exceptionDetails"];
                let text = details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("?");
                self.problems.push(format!("exception: {text}"));
            }
            Some("Log.entryAdded") => {
                let text = message["params"]["entry"]["text"].as_str().unwrap_or_default();
                if text.contains("Content Security Policy") {
                    self.problems.push(format!("CSP: {text}"));
                }
            }
            _ => {}
        }
    }

    async fn next_message(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffered.iter().position(|&b| b == 0) {
                let message: Vec<u8> = self.buffered.drain(..=end).collect();
                return serde_json::from_slice(&message[..end]).expect("the browser sent invalid JSON");
            }
            self.buffered.reserve(64 << 10);
            let n = self.from.read_buf(&mut self.buffered).await.expect("cannot read from the browser");
            assert!(n > 0, "the browser exited");
        }
    }

    /// A command to the page.
    pub async fn send(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.command(Some(&session), method, params).await
    }

    pub async fn navigate(&mut self, url: &str) {
        self.send("Page.navigate", json!({ "url": url })).await;
    }

    /// Evaluate `expression` in the page (awaiting a promise) and return its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .send("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }))
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("evaluating {expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Wait until `expression` is truthy in the page; `what` says what was awaited.
    pub async fn wait_for(&mut self, expression: &str, what: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self
                .eval(&format!("(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()"))
                .await;
            if !matches!(value, Value::Null | Value::Bool(false)) && value != json!("") && value != json!(0) {
                return value;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let text = self.eval("document.body ? document.body.innerText : ''").await;
                panic!("waited 20 s for {what} ({expression}); the page shows:\n{}", text.as_str().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text.
    pub async fn text(&mut self) -> String {
        self.eval("document.body.innerText").await.as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
