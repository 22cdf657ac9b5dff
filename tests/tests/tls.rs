//! The functions' HTTPS client over real TLS. Every other test talks plain
//! HTTP to the emulators, so without this one nothing would show that the
//! client the functions ship with (`shared::config::https_client`: rustls on
//! ring, the roots loaded on the first connection) completes a handshake, or
//! that it refuses a certificate it has no root for.
//!
//! Two moto servers on TLS, each with a server certificate from its own CA
//! (made with the `cryptography` package moto itself depends on, in
//! `.venv`); `SSL_CERT_FILE` holds only the first CA, as a function's
//! environment would point at its CA bundle.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xtask::process::{ChildGroup, RunDir};
use xtask::stack::{free_port, workspace_root};
use xtask::venv::Venv;

/// Writes `<name>-ca.pem`, `<name>-cert.pem` and `<name>-key.pem` into
/// `dir`: a CA and a server certificate it signed for 127.0.0.1.
const MAKE_CERTS: &str = r#"
import datetime, ipaddress, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

directory, name = sys.argv[1], sys.argv[2]
now = datetime.datetime.now(datetime.timezone.utc)
def subject(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
ca_key = ec.generate_private_key(ec.SECP256R1())
ca = (x509.CertificateBuilder().subject_name(subject(name + " test CA")).issuer_name(subject(name + " test CA"))
      .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
      .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                   key_encipherment=False, data_encipherment=False, key_agreement=False,
                                   encipher_only=False, decipher_only=False), critical=True)
      .sign(ca_key, hashes.SHA256()))
key = ec.generate_private_key(ec.SECP256R1())
cert = (x509.CertificateBuilder().subject_name(subject("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))
pem = serialization.Encoding.PEM
open(f"{directory}/{name}-ca.pem", "wb").write(ca.public_bytes(pem))
open(f"{directory}/{name}-cert.pem", "wb").write(cert.public_bytes(pem))
open(f"{directory}/{name}-key.pem", "wb").write(key.private_bytes(
    pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
"#;

/// How long moto may take to start (it imports every service first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct TlsMoto {
    _child: ChildGroup,
    endpoint: String,
    ca: PathBuf,
}

fn start_tls_moto(run: &RunDir, venv: &Venv, root: &Path, name: &str) -> Result<TlsMoto> {
    let dir = run.path();
    let status = std::process::Command::new(venv.tool("python"))
        .args(["-c", MAKE_CERTS])
        .arg(dir)
        .arg(name)
        .status()
        .context("running the venv's python")?;
    ensure!(status.success(), "making the {name} certificates failed");
    let port = free_port()?;
    let path = |suffix: &str| dir.join(format!("{name}-{suffix}.pem")).to_string_lossy().into_owned();
    let args = ["-H", "127.0.0.1", "-p", &port.to_string(), "-c", &path("cert"), "-k", &path("key")].map(str::to_owned);
    let mut child = ChildGroup::spawn(run, &format!("moto-{name}"), &venv.tool("moto_server"), &args, &[], root)?;
    // Ready once werkzeug says it serves TLS on our port.
    let banner = format!("Running on https://127.0.0.1:{port}");
    let deadline = Instant::now() + START_TIMEOUT;
    while !child.log_text().contains(&banner) {
        if child.exited() || Instant::now() > deadline {
            bail!("moto on TLS did not start; log:\n{}", child.log_tail(20));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(TlsMoto { _child: child, endpoint: format!("https://127.0.0.1:{port}"), ca: PathBuf::from(path("ca")) })
}

#[test]
fn the_functions_https_client_talks_tls_to_a_trusted_endpoint_and_refuses_an_untrusted_one() -> Result<()> {
    let root = workspace_root();
    let venv = Venv::at(&root);
    venv.ensure()?;
    let run = RunDir::create(&root)?;
    let trusted = start_tls_moto(&run, &venv, &root, "trusted")?;
    let untrusted = start_tls_moto(&run, &venv, &root, "untrusted")?;
    // SAFETY: this test is the only one of its binary and no runtime has
    // started yet: no other thread reads the environment while it changes.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &trusted.ca);
        std::env::remove_var("SSL_CERT_DIR");
        std::env::remove_var("AWS_ENDPOINT_URL");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let sdk = shared::config::aws_sdk_config().await;
        let client = |endpoint: &str| shared::config::s3_client(&sdk.to_builder().endpoint_url(endpoint).build());

        let s3 = client(&trusted.endpoint);
        s3.create_bucket().bucket("tls").send().await.context("CreateBucket over TLS")?;
        s3.put_object().bucket("tls").key("k").body(b"over tls".to_vec().into()).send().await?;
        let body = s3.get_object().bucket("tls").key("k").send().await?.body.collect().await?.into_bytes();
        assert_eq!(&body[..], b"over tls");

        let refused = client(&untrusted.endpoint).create_bucket().bucket("tls").send().await;
        let error = format!("{:?}", refused.expect_err("a certificate from an unknown CA must be refused"));
        assert!(error.contains("UnknownIssuer"), "refused for another reason: {error}");
        anyhow::Ok(())
    })
}
