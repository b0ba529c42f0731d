//! An s3s-fs of the test's own, on its own port and data folder.
//!
//! s3s-fs keeps a multipart upload open as files in the root of its data folder
//! (`.upload-<id>.json` and `.upload_id-<id>.part-<n>`), with nothing that tells whose
//! it is: on the shared server of the test script every test's uploads lie side by
//! side. A test that counts or clears open uploads, or that kills the server, runs
//! against one of these instead; the binary is the one the script installed.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::harness::unique;
use super::providers::S3_DATA_DIR;
use super::skip::server;

/// The bucket every private server has.
pub const BUCKET: &str = "private";

pub struct PrivateS3 {
    bin: String,
    port: u16,
    data: PathBuf,
    pub access_key: String,
    pub secret_key: String,
    child: Option<Child>,
}

impl PrivateS3 {
    /// Starts a server with a fresh data folder holding [`BUCKET`], or `None` to skip
    /// when the test script's s3s-fs is not there (outside the script).
    pub fn start(name: &str) -> Option<PrivateS3> {
        let bin = server("SPINOCO_TEST_S3_BIN")?;
        let shared = PathBuf::from(server("SPINOCO_TEST_S3_DATA_DIR")?);
        let data = shared.with_file_name(unique(&format!("private-{name}")));
        std::fs::create_dir_all(data.join(BUCKET)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s3 = PrivateS3 {
            bin,
            port,
            data,
            access_key: server("SPINOCO_TEST_S3_ACCESS_KEY")?,
            secret_key: server("SPINOCO_TEST_S3_SECRET_KEY")?,
            child: None,
        };
        s3.restart();
        Some(s3)
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The connector's variables for [`BUCKET`] under a fresh prefix, as
    /// `providers::target` gives them for the shared server.
    pub fn target(&self, name: &str) -> BTreeMap<String, String> {
        [
            ("SP_TASK_SYNC_STORAGE_PROVIDER", "s3".to_string()),
            ("SP_TASK_SYNC_S3_ENDPOINT", self.endpoint()),
            ("SP_TASK_SYNC_S3_BUCKET", BUCKET.to_string()),
            ("SP_TASK_SYNC_S3_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("SP_TASK_SYNC_SAVE_TO", unique(&format!("rel-{name}"))),
            (S3_DATA_DIR, self.data.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Multipart uploads open on this server.
    pub fn open_uploads(&self) -> Vec<String> {
        std::fs::read_dir(&self.data)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".upload"))
            .collect()
    }

    /// Starts the server again on the same port and data folder (after [`kill`]).
    ///
    /// [`kill`]: PrivateS3::kill
    pub fn restart(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.access_key])
            .args(["--secret-key", &self.secret_key])
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server: every connection to it is cut at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
