//! Drives Debian's Chromium from integration tests: a headless browser with
//! a fresh profile, opened on pages the daemon serves on loopback, clicked and
//! read the way a parent or an operator would.
//!
//! Why WebDriver (`fantoccini` + Debian's `chromium-driver`) and not CDP
//! (`chromiumoxide`): neither has an entry in the RustSec advisory database
//! (checked 2026-11-23) and both run on tokio. fantoccini (jonhoo, 0.22.1)
//! without its TLS features adds 23 small crates to Cargo.lock on top of the
//! hyper 1 / hyper-util we already build. chromiumoxide (0.6) brings a
//! second reqwest (0.12, we use 0.13), a WebSocket stack and its generated
//! CDP bindings, a very large crate to compile on a 2-core CI, and defaults
//! to async-std. WebDriver is also a W3C standard, so a test reads as "find,
//! click, read" and does not follow Chromium's internal protocol versions.
//!
//! Process hygiene: chromedriver runs in its own process group, and every
//! process of the browser names the test's temporary folder on its command
//! line. `close()` ends the session (chromedriver quits Chromium and reaps
//! it); `Drop`, which also runs when a test panics, ends the session
//! synchronously, then signals the group and any process naming the folder,
//! and waits until none is left, so no Chromium outlives the test.
//!
//! ```ignore
//! let Some(browser) = Browser::start().await else { return };
//! browser.goto(&format!("{}/a/{token}", app.base)).await;
//! browser.click("input[value=bus]").await;
//! browser.submit("form").await;
//! browser.wait_for(Until::Text("Gracias"), Duration::from_secs(5)).await;
//! browser.close().await;
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Flags for a quiet, reproducible, offline browser. The machine's network is
/// closed: anything that phones home would only add timeouts and noise.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--window-size=1280,900",
];

/// What `wait_for` waits for.
#[derive(Debug, Clone, Copy)]
pub enum Until<'a> {
    /// An element matching this CSS selector exists.
    Css(&'a str),
    /// The page's visible text contains this.
    Text(&'a str),
}

pub struct Browser {
    /// `None` once `close()` has handed the session back.
    client: Option<Client>,
    session_id: String,
    driver: Child,
    driver_addr: SocketAddr,
    /// Holds the Chromium profile and chromedriver's log; removed after the
    /// processes are gone.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    /// Returns `None` (after saying why) when Chromium is not installed and
    /// `CI` is unset, so `cargo test` still runs on a developer machine
    /// without it; in CI a missing browser is a failure.
    pub async fn start() -> Option<Browser> {
        let missing: Vec<&str> = [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")]
            .into_iter()
            .filter(|(path, _)| !Path::new(path).exists())
            .map(|(_, package)| package)
            .collect();
        if !missing.is_empty() {
            let msg = format!(
                "{CHROMIUM} or {CHROMEDRIVER} is missing; install the Debian packages with `apt-get install {}` (.ci/run does this)",
                missing.join(" ")
            );
            if std::env::var_os("CI").is_some() {
                panic!("Browser tests need Chromium in CI: {msg}.");
            }
            eprintln!("Skipping a browser test: {msg}.");
            return None;
        }
        Some(Self::launch().await)
    }

    async fn launch() -> Browser {
        let dir = tempfile::tempdir().expect("a temporary folder for the browser");
        let profile = dir.path().join("profile");
        let log = dir.path().join("chromedriver.log");
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            // Chromium's crash handler keeps its database under the config
            // home, not the profile: keep it in the temporary folder too, so
            // nothing is written to ~/.config and every process the browser
            // starts names that folder on its command line.
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so Drop can signal chromedriver and every
            // Chromium process it started in one call.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("Cannot start {CHROMEDRIVER}: {e}."));
        let driver_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut browser = Browser {
            client: None,
            session_id: String::new(),
            driver,
            driver_addr,
            dir,
        };
        browser.wait_for_driver(&log);

        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{driver_addr}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Chromium did not start through chromedriver: {e}.\nchromedriver log:\n{}",
                    tail(&log)
                )
            });
        browser.session_id = client
            .session_id()
            .await
            .ok()
            .flatten()
            .expect("chromedriver returned a session id");
        browser.client = Some(client);
        browser
    }

    /// Polls chromedriver's port until it accepts connections (it takes a
    /// few hundred milliseconds), or fails with its log.
    fn wait_for_driver(&mut self, log: &Path) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&self.driver_addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!(
                    "chromedriver exited at start ({status}).\nLog:\n{}",
                    tail(log)
                );
            }
            assert!(
                Instant::now() < until,
                "chromedriver did not listen on {} within 10 s.\nLog:\n{}",
                self.driver_addr,
                tail(log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The temporary folder holding the profile; every process of this
    /// browser names it (see `processes_using`).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the browser is open")
    }

    /// Where the browser is now, for failure messages.
    async fn here(&self) -> String {
        self.client()
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_else(|_| "(unknown page)".into())
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("Cannot open {url}: {e}."));
    }

    /// The current page's URL.
    pub async fn url(&self) -> String {
        self.here().await
    }

    /// The element matching `css`; fails naming the selector and the page.
    pub async fn find(&self, css: &str) -> Element {
        match self.client().find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!("No element matches `{css}` on {}: {e}.", self.here().await),
        }
    }

    /// How many elements match `css` (0 is an answer, not a failure).
    pub async fn count(&self, css: &str) -> usize {
        self.client()
            .find_all(Locator::Css(css))
            .await
            .map(|v| v.len())
            .unwrap_or(0)
    }

    /// The visible text of the first element matching `css`, as a person sees it.
    pub async fn text_of(&self, css: &str) -> String {
        let el = self.find(css).await;
        el.text()
            .await
            .unwrap_or_else(|e| panic!("Cannot read the text of `{css}`: {e}."))
    }

    /// The visible text of the whole page.
    pub async fn page_text(&self) -> String {
        self.text_of("body").await
    }

    /// The value of an attribute of the first element matching `css`.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css)
            .await
            .attr(name)
            .await
            .unwrap_or_else(|e| panic!("Cannot read `{name}` of `{css}`: {e}."))
    }

    /// Clicks the first element matching `css` (a real pointer click: the
    /// element must be visible and not covered).
    pub async fn click(&self, css: &str) {
        let el = self.find(css).await;
        if let Err(e) = el.click().await {
            panic!("Cannot click `{css}` on {}: {e}.", self.here().await);
        }
    }

    /// Types `value` into the input or textarea matching `css`, replacing
    /// what was there.
    pub async fn fill(&self, css: &str, value: &str) {
        let el = self.find(css).await;
        el.clear()
            .await
            .unwrap_or_else(|e| panic!("Cannot clear `{css}`: {e}."));
        el.send_keys(value)
            .await
            .unwrap_or_else(|e| panic!("Cannot type into `{css}`: {e}."));
    }

    /// Picks the option with `value` in the `<select>` matching `css`.
    pub async fn select(&self, css: &str, value: &str) {
        let el = self.find(css).await;
        el.select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("Cannot select `{value}` in `{css}`: {e}."));
    }

    /// Submits the form matching `css` by clicking its submit button, as a
    /// person would (so `required` fields are enforced by the browser), and
    /// waits for the next page to load.
    pub async fn submit(&self, css: &str) {
        let before = self.here().await;
        let form = self
            .client()
            .form(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("No form matches `{css}` on {before}: {e}."));
        form.submit()
            .await
            .unwrap_or_else(|e| panic!("Cannot submit `{css}` on {before}: {e}."));
        // chromedriver waits for a navigation the click started; a page that
        // refuses to submit (a required field left empty) stays put, and
        // the caller's next wait_for says so.
    }

    /// Waits until `what` appears, polling every 50 ms; fails after
    /// `timeout` with the page's URL and text.
    pub async fn wait_for(&self, what: Until<'_>, timeout: Duration) {
        let until = Instant::now() + timeout;
        loop {
            let found = match what {
                Until::Css(css) => self.count(css).await > 0,
                Until::Text(text) => self
                    .client()
                    .execute(
                        "return document.body ? document.body.innerText : ''",
                        vec![],
                    )
                    .await
                    .ok()
                    .and_then(|v| v.as_str().map(|s| s.contains(text)))
                    .unwrap_or(false),
            };
            if found {
                return;
            }
            if Instant::now() >= until {
                let text = self
                    .client()
                    .execute(
                        "return document.body ? document.body.innerText : ''",
                        vec![],
                    )
                    .await
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                panic!(
                    "Waited {timeout:?} for {what:?} on {}; the page says:\n{text}",
                    self.here().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resizes the window (e.g. 390×844 for a phone, 768×1024 for a tablet).
    pub async fn resize(&self, width: u32, height: u32) {
        self.client()
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("Cannot resize the window to {width}×{height}: {e}."));
    }

    /// Saves a PNG of the visible page to `path` (folders are created) and
    /// returns the path.
    pub async fn screenshot(&self, path: &Path) -> PathBuf {
        let png = self
            .client()
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("Cannot take a screenshot: {e}."));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("screenshot folder");
        }
        std::fs::write(path, &png)
            .unwrap_or_else(|e| panic!("Cannot write {}: {e}.", path.display()));
        path.to_path_buf()
    }

    /// Runs JavaScript in the page and returns its result (for checks the
    /// helpers above don't cover, such as running axe-core).
    pub async fn script(&self, js: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client()
            .execute(js, args)
            .await
            .unwrap_or_else(|e| panic!("Script failed: {e}."))
    }

    /// Ends the session cleanly: chromedriver quits Chromium and reaps it.
    /// Dropping the browser does the same without waiting on tokio.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
        // Drop stops chromedriver.
    }

    /// DELETE /session/{id} over a plain socket: Drop cannot await, and may
    /// run while the test's runtime is unwinding from a panic.
    fn end_session_blocking(&self) {
        let Ok(mut s) = TcpStream::connect_timeout(&self.driver_addr, Duration::from_secs(1))
        else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session_id, self.driver_addr
        );
        if s.write_all(req.as_bytes()).is_err() {
            return;
        }
        // Read until the whole response is in: chromedriver keeps the
        // connection open whatever `Connection: close` says, so waiting for
        // EOF would wait for the read timeout.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if response_complete(&buf) {
                break;
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.client.take().is_some() && !self.session_id.is_empty() {
            self.end_session_blocking();
        }
        let marker = self.dir.path().to_path_buf();
        let group = -(self.driver.id() as libc::pid_t);
        signal(group, libc::SIGTERM);
        for pid in processes_using(&marker) {
            signal(pid, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(3);
        loop {
            let driver_gone = matches!(self.driver.try_wait(), Ok(Some(_)));
            let left = processes_using(&marker);
            if driver_gone && left.is_empty() {
                break;
            }
            if Instant::now() >= until {
                signal(group, libc::SIGKILL);
                for pid in left {
                    signal(pid, libc::SIGKILL);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.driver.wait();
        let until = Instant::now() + Duration::from_secs(1);
        while !processes_using(&marker).is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        // `dir` (profile, log) is removed after this, with the processes gone.
    }
}

fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) only sends a signal; `pid` is chromedriver's process
    // group (negative) or a process found by `processes_using`.
    unsafe { libc::kill(pid, sig) };
}

/// Live (not zombie) processes whose command line names `dir`: chromedriver
/// (its log), every Chromium process (the profile) and the crash handler (its
/// database), even those that left chromedriver's process group. Tests use
/// it to assert that no browser outlived them.
pub fn processes_using(dir: &Path) -> Vec<libc::pid_t> {
    let marker = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            if !cmdline.windows(marker.len()).any(|w| w == marker) {
                return false;
            }
            // The state follows the command name, which is in parentheses.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        })
        .collect()
}

/// Whether `buf` holds a whole HTTP/1.1 response (headers and a
/// `Content-Length` body; chromedriver always sends the length).
fn response_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + len
}

/// A port nobody listens on now. chromedriver binds it a moment later; on a
/// test machine nothing else races for ephemeral ports in between.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The last lines of a log, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
