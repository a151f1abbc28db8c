//! TLS for the test services (a hop whose payload the agent can neither
//! read nor change): rustls on ring. A TLS service makes a self-signed
//! certificate for its listening address at start (rcgen) and writes it,
//! PEM, where the chain tells it; its callers trust exactly the
//! certificates in that file (no "accept any certificate" path exists).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned};

/// A byte stream the services speak HTTP/1.1 on: TCP, or TLS over TCP.
pub trait Stream: Read + Write + Send {}
impl Stream for TcpStream {}
impl Stream for StreamOwned<ServerConnection, TcpStream> {}
impl Stream for StreamOwned<ClientConnection, TcpStream> {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server identity: a new key and a self-signed certificate naming `ip`.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// The certificate, PEM (what callers are given to trust).
    pub pem: String,
}

impl Identity {
    /// # Errors
    /// When the key or certificate cannot be made.
    pub fn self_signed(ip: IpAddr) -> anyhow::Result<Identity> {
        let ck = rcgen::generate_simple_self_signed(vec![ip.to_string()])
            .with_context(|| format!("failed to make a self-signed certificate for {ip}"))?;
        Ok(Identity {
            cert: ck.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()),
            pem: ck.cert.pem(),
        })
    }

    /// Write the certificate (PEM) to `path`, whole or not at all (a
    /// caller reading it meanwhile never sees half of it).
    ///
    /// # Errors
    /// When the file cannot be written, naming it.
    pub fn write_cert(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("pem.tmp");
        std::fs::write(&tmp, &self.pem).with_context(|| format!("failed to write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("failed to rename {} to {}", tmp.display(), path.display()))
    }

    /// The server side's configuration (TLS 1.2 and 1.3, no client certificates).
    ///
    /// # Errors
    /// When rustls refuses the key.
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("rustls: protocol versions")?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key()))
            .context("rustls refused the generated key")?;
        Ok(Arc::new(cfg))
    }
}

/// A client configuration trusting exactly the certificates in `pem_file`.
///
/// # Errors
/// When the file cannot be read, holds no certificate, or one is refused.
pub fn client_config(pem_file: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_file_iter(pem_file).with_context(|| format!("failed to read {}", pem_file.display()))? {
        let cert = cert.with_context(|| format!("{}: bad PEM", pem_file.display()))?;
        roots.add(cert).with_context(|| format!("{}: certificate refused", pem_file.display()))?;
        n += 1;
    }
    if n == 0 {
        bail!("{}: no certificate in it", pem_file.display());
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("rustls: protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The server side of a TLS connection (the handshake happens on first use).
///
/// # Errors
/// When rustls cannot start a connection.
pub fn accept(cfg: &Arc<ServerConfig>, tcp: TcpStream) -> anyhow::Result<StreamOwned<ServerConnection, TcpStream>> {
    Ok(StreamOwned::new(ServerConnection::new(cfg.clone()).context("rustls server connection")?, tcp))
}

/// The client side of a TLS connection to `ip`, whose certificate must name
/// it (the handshake happens on first use: on the thread that writes first).
///
/// # Errors
/// When rustls cannot start a connection.
pub fn connect(cfg: &Arc<ClientConfig>, ip: IpAddr, tcp: TcpStream) -> anyhow::Result<StreamOwned<ClientConnection, TcpStream>> {
    let conn = ClientConnection::new(cfg.clone(), ServerName::IpAddress(ip.into())).context("rustls client connection")?;
    Ok(StreamOwned::new(conn, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A TLS echo-a-line server on loopback; its address.
    fn echo_server(id: &Identity) -> std::net::SocketAddr {
        let cfg = id.server_config().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let cfg = cfg.clone();
                std::thread::spawn(move || {
                    let mut s = BufReader::new(accept(&cfg, c).unwrap());
                    let mut line = String::new();
                    if s.read_line(&mut line).is_ok() {
                        let _ = s.get_mut().write_all(line.as_bytes());
                        let _ = s.get_mut().flush();
                    }
                });
            }
        });
        addr
    }

    fn echo(cfg: &Arc<ClientConfig>, addr: std::net::SocketAddr) -> anyhow::Result<String> {
        let tcp = TcpStream::connect(addr)?;
        let mut s = BufReader::new(connect(cfg, addr.ip(), tcp)?);
        s.get_mut().write_all(b"hello over tls\n")?;
        s.get_mut().flush()?;
        let mut line = String::new();
        s.read_line(&mut line)?;
        Ok(line)
    }

    #[test]
    fn a_client_trusts_exactly_the_written_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let id = Identity::self_signed(ip).unwrap();
        let addr = echo_server(&id);
        let pem = dir.path().join("server.pem");
        id.write_cert(&pem).unwrap();
        assert!(std::fs::read_to_string(&pem).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!dir.path().join("server.pem.tmp").exists());
        let cfg = client_config(&pem).unwrap();
        assert_eq!(echo(&cfg, addr).unwrap(), "hello over tls\n");

        // another service's certificate is not trusted for this one
        let other = dir.path().join("other.pem");
        Identity::self_signed(ip).unwrap().write_cert(&other).unwrap();
        let err = echo(&client_config(&other).unwrap(), addr).unwrap_err();
        assert!(format!("{err:#}").to_lowercase().contains("certificate"), "{err:#}");

        // the certificate names its address only
        let elsewhere = Identity::self_signed("127.0.0.2".parse().unwrap()).unwrap();
        let addr2 = echo_server(&elsewhere);
        let p2 = dir.path().join("elsewhere.pem");
        elsewhere.write_cert(&p2).unwrap();
        let err = echo(&client_config(&p2).unwrap(), addr2).unwrap_err();
        assert!(format!("{err:#}").to_lowercase().contains("certificate"), "{err:#}");
    }

    #[test]
    fn bad_trust_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(format!("{:#}", client_config(&missing).unwrap_err()).contains("missing.pem"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = format!("{:#}", client_config(&empty).unwrap_err());
        assert!(e.contains("empty.pem") && e.contains("no certificate"), "{e}");
    }

    #[test]
    fn the_first_bytes_of_a_client_are_what_the_kernel_takes_for_a_client_hello() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::self_signed("127.0.0.1".parse().unwrap()).unwrap();
        let pem = dir.path().join("s.pem");
        id.write_cert(&pem).unwrap();
        let mut client =
            ClientConnection::new(client_config(&pem).unwrap(), ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into())).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        assert!(tclab_datapath::propagation::tls::is_client_hello(&hello), "{:02x?}", &hello[..8]);
        // the server's first flight is TLS, but no ClientHello
        let mut server = ServerConnection::new(id.server_config().unwrap()).unwrap();
        server.read_tls(&mut hello.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        let mut flight = Vec::new();
        server.write_tls(&mut flight).unwrap();
        assert_eq!(tclab_datapath::propagation::tls::record_type(&flight), Some(0x16));
        assert!(!tclab_datapath::propagation::tls::is_client_hello(&flight));
    }
}
