//! An Azurite blob service of the test's own with OAuth on. Azurite takes bearer tokens
//! only over https, so it serves a certificate of a private CA (`super::pki`); it
//! checks a token's audience, issuer and lifetime, not its signature, and refuses a
//! token for another audience. The binary is the one the test script installed.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use super::harness::wait_until;
use super::pki::Pki;
use super::skip::server;

pub struct OAuthAzurite {
    child: Child,
    port: u16,
    pki: Pki,
}

impl OAuthAzurite {
    /// Starts one on a free port with nothing stored; `None` (the test skipped) without
    /// the script's Azurite or the openssl command.
    pub fn start() -> Option<OAuthAzurite> {
        let bin = server("SPINOCO_TEST_AZURITE_BIN")?;
        let pki = Pki::new("azurite")?;
        pki.server("server", "IP:127.0.0.1", 30);
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(pki.dir.join("azurite.log")).unwrap();
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--loose"])
            .args(["--disableTelemetry", "--oauth", "basic"])
            .arg("--cert")
            .arg(pki.dir.join("server.pem"))
            .arg("--key")
            .arg(pki.dir.join("server.key"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let azurite = OAuthAzurite { child, port, pki };
        wait_until(
            "azurite with OAuth listens",
            Duration::from_secs(30),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        Some(azurite)
    }

    /// `https://127.0.0.1:PORT/devstoreaccount1`
    pub fn blob_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    /// The CA that signed its certificate (`ca.pem`).
    pub fn ca(&self) -> PathBuf {
        self.pki.ca()
    }
}

impl Drop for OAuthAzurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
