//! A private CA made at test time by the `openssl` command, and server certificates
//! signed by it: the HTTPS emulator, the TLS fronts of the storage tests and the OAuth
//! Azurite use them. Without `openssl` the tests skip (`super::skip`).

use std::path::{Path, PathBuf};
use std::process::Command;

use spinoco_connector::EmulatorTls;

use super::harness::scratch;
use super::skip::skip;

/// A private CA and server certificates signed by it, in a temp folder.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A new CA; `None` (the test skipped) without the `openssl` command.
    pub fn new(name: &str) -> Option<Pki> {
        if Command::new("openssl").arg("version").output().is_err() {
            skip(
                "the openssl command is not installed (the tests make their certificates with it)",
            );
            return None;
        }
        let dir = scratch(&format!("pki-{name}"));
        std::fs::write(
            dir.join("ca.cnf"),
            "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n\
             [dn]\nCN = Spinoco Test Private CA\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier = hash\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-config",
                "ca.cnf",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "3650",
            ],
        );
        Some(Pki { dir })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `sans` (`DNS:localhost,IP:127.0.0.1`), valid for
    /// `days` (negative: already expired).
    pub fn server(&self, name: &str, sans: &str, days: i32) -> EmulatorTls {
        let d = &self.dir;
        std::fs::write(
            d.join(format!("{name}.ext")),
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n"
            ),
        )
        .unwrap();
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=emulator",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                &days.to_string(),
                "-extfile",
                &ext,
            ],
        );
        EmulatorTls {
            cert_chain_pem: std::fs::read(d.join(&pem)).unwrap(),
            key_pem: std::fs::read(d.join(&key)).unwrap(),
        }
    }
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
