//! A real IMAP server: Debian's Dovecot (`dovecot-imapd`) on a free loopback
//! port, with its own config, passwd-file login and maildir in a temporary
//! folder. Messages are put in the mailbox the maildir way (written to
//! `tmp/`, renamed into `new/`), and the maildir shows afterwards what the
//! client flagged or expunged. The server is stopped when dropped.
//!
//! Dovecot refuses to serve mail as uid 0, so the mail processes run as
//! `nobody`; that needs root. Without root or without Dovecot the caller
//! skips with a message, unless `CI` is set (`.ci/run` installs Dovecot).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DOVECOT: &str = "/usr/sbin/dovecot";
const MAIL_UID: u32 = 65534;

pub struct Dovecot {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// Why no Dovecot could be started (the test says so and skips).
pub fn unavailable() -> Option<String> {
    if !Path::new(DOVECOT).exists() {
        return Some(format!(
            "{DOVECOT} is missing (apt-get install dovecot-imapd)"
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("Dovecot serves mail as `nobody`, which needs root".into());
    }
    None
}

impl Dovecot {
    /// Starts Dovecot with one account. `None` (with a message printed) when
    /// it cannot run here and `CI` is not set.
    pub fn start(user: &str, password: &str) -> Option<Dovecot> {
        if let Some(why) = unavailable() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the IMAP tests: {why}"
            );
            eprintln!("skipping: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // The mail processes (as nobody) must reach the maildir.
        set_mode(root, 0o755);
        for d in ["run", "state", "mail"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = root.display();
        std::fs::write(
            root.join("dovecot.conf"),
            format!(
                r#"base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{r}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/users
}}
userdb {{
  driver = static
  args = uid={MAIL_UID} gid={MAIL_UID} home={r}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"#
            ),
        )
        .unwrap();
        std::fs::write(root.join("users"), format!("{user}:{{PLAIN}}{password}\n")).unwrap();
        let maildir = root.join("mail").join(user);
        for d in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(maildir.join(d)).unwrap();
        }
        chown_tree(&root.join("mail"));
        let child = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(root.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dovecot starts");
        let server = Dovecot { child, port, dir };
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "dovecot did not listen: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    fn maildir(&self) -> PathBuf {
        // One account per server.
        let mail = self.dir.path().join("mail");
        std::fs::read_dir(&mail)
            .unwrap()
            .next()
            .expect("the account's maildir")
            .unwrap()
            .path()
    }

    /// Puts a message in the mailbox, unseen.
    pub fn deliver(&self, name: &str, raw: &[u8]) {
        let md = self.maildir();
        let tmp = md.join("tmp").join(name);
        std::fs::write(&tmp, raw).unwrap();
        chown_tree(&tmp);
        std::fs::rename(&tmp, md.join("new").join(name)).unwrap();
    }

    /// The messages still in the mailbox: (name, maildir flags such as "S").
    pub fn messages(&self) -> Vec<(String, String)> {
        let md = self.maildir();
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            for e in std::fs::read_dir(md.join(sub)).unwrap() {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                let (base, flags) = match n.split_once(":2,") {
                    Some((b, f)) => (b.to_string(), f.to_string()),
                    None => (n.clone(), String::new()),
                };
                out.push((base, flags));
            }
        }
        out.sort();
        out
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its children; then reap it.
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_tree(p: &Path) {
    std::os::unix::fs::chown(p, Some(MAIL_UID), Some(MAIL_UID)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    }
}
