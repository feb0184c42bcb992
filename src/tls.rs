//! AutoMTLS: only the host that started the plugin may talk to it.
//!
//! When the host sets `PLUGIN_CLIENT_CERT` (its one-time certificate, PEM),
//! the plugin
//! 1. trusts exactly that certificate, and requires and verifies a client
//!    certificate on every connection;
//! 2. serves TLS 1.2+ with its own fresh self-signed certificate, and puts
//!    that certificate's DER, base64 (standard alphabet, no padding, Go's
//!    `RawStdEncoding`), in field 6 of the handshake line, which the host
//!    then trusts.
//!
//! Mirrors go-plugin's `mtls.go` and the TLS part of `server.go`, with one
//! change: the key is ECDSA P-256, the only curve gRPC C-core offers (Go
//! uses P-521). The host's P-521 certificate is verified by the system
//! OpenSSL that grpcio is built against here (grpcio's bundled BoringSSL
//! refuses its SHA-512 signature under TLS 1.3).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use grpcio::{
    CertificateRequestType, ChannelCredentials, ChannelCredentialsBuilder, ServerCredentials,
    ServerCredentialsBuilder,
};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};

use crate::env::PLUGIN_CLIENT_CERT;
use crate::error::{Error, Result};

/// One side of mutual TLS: its own certificate and key, and the one
/// certificate it trusts for the other side. The plugin's AutoMTLS (the
/// host's certificate trusted), the host's (the plugin's), or a host's
/// explicit configuration.
#[derive(Clone)]
pub(crate) struct AutoMtls {
    peer_cert_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    handshake_field: String,
}

impl fmt::Debug for AutoMtls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("AutoMtls")
            .field("handshake_field", &self.handshake_field)
            .finish_non_exhaustive()
    }
}

impl AutoMtls {
    /// Checks the host's certificate and makes the plugin's own.
    pub(crate) fn new(host_cert_pem: &str) -> Result<AutoMtls> {
        check_certificate_pem(host_cert_pem)?;
        let (cert_pem, key_pem, cert_der) = generate_certificate().map_err(|e| Error::Tls {
            reason: format!("cannot generate the plugin's certificate: {e}"),
        })?;
        Ok(AutoMtls {
            peer_cert_pem: host_cert_pem.as_bytes().to_vec(),
            cert_pem: cert_pem.into_bytes(),
            key_pem: key_pem.into_bytes(),
            handshake_field: STANDARD_NO_PAD.encode(cert_der),
        })
    }

    /// Field 6 of the handshake line.
    pub(crate) fn handshake_field(&self) -> &str {
        &self.handshake_field
    }

    /// Server credentials: our certificate, and a client certificate that
    /// the host's certificate verifies is required.
    pub(crate) fn server_credentials(&self) -> ServerCredentials {
        ServerCredentialsBuilder::new()
            .root_cert(
                self.peer_cert_pem.clone(),
                CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
            )
            .add_cert(self.cert_pem.clone(), self.key_pem.clone())
            .build()
    }
}

impl AutoMtls {
    /// An explicit configuration: `cert_pem`/`key_pem` presented, only
    /// certificates `trusted_pem` verifies accepted, both ways.
    pub(crate) fn explicit(trusted_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> AutoMtls {
        AutoMtls {
            peer_cert_pem: trusted_pem,
            cert_pem,
            key_pem,
            handshake_field: String::new(),
        }
    }
}

/// The host's side of AutoMTLS, before the plugin answers: a fresh
/// certificate for one launch, passed to the plugin in
/// `PLUGIN_CLIENT_CERT`.
pub(crate) struct HostCertificate {
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for HostCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCertificate").finish_non_exhaustive()
    }
}

impl HostCertificate {
    /// A certificate like go-plugin's host makes for each launch (P-256
    /// here, where Go uses P-521: gRPC's core signs with P-256 keys).
    pub(crate) fn generate() -> Result<HostCertificate> {
        let (cert_pem, key_pem, _) = generate_certificate().map_err(|e| Error::Tls {
            reason: format!("cannot generate the host's certificate: {e}"),
        })?;
        Ok(HostCertificate { cert_pem, key_pem })
    }

    /// The value of `PLUGIN_CLIENT_CERT`.
    pub(crate) fn pem(&self) -> &str {
        &self.cert_pem
    }

    /// Mutual TLS with the plugin whose certificate is `field`, field 6 of
    /// its handshake line (base64 DER, no padding).
    pub(crate) fn trust(self, field: &str) -> Result<AutoMtls> {
        Ok(AutoMtls {
            peer_cert_pem: field_to_pem(field)?,
            cert_pem: self.cert_pem.into_bytes(),
            key_pem: self.key_pem.into_bytes(),
            handshake_field: String::new(),
        })
    }
}

impl AutoMtls {
    /// This configuration with the plugin's certificate from `field`
    /// (handshake field 6) as the one trusted, as go-plugin's host does
    /// with a `TLSConfig` when the plugin sends a certificate.
    pub(crate) fn trusting_field(&self, field: &str) -> Result<AutoMtls> {
        Ok(AutoMtls {
            peer_cert_pem: field_to_pem(field)?,
            ..self.clone()
        })
    }
}

/// Handshake field 6 (base64 DER, no padding) as PEM, checked as X.509.
fn field_to_pem(field: &str) -> Result<Vec<u8>> {
    let der = STANDARD_NO_PAD.decode(field).map_err(|e| Error::Tls {
        reason: format!("error parsing server cert: {e}"),
    })?;
    if let Err(err) = parse_certificate(&der) {
        return Err(Error::Tls {
            reason: format!("the plugin's certificate (handshake field 6) is not X.509: {err}"),
        });
    }
    Ok(der_to_pem(&der).into_bytes())
}

/// `der` as one X.509 certificate, all of it: OpenSSL's parser reads a
/// certificate from the front of its input, so what it read is written
/// back and must be the whole input.
fn parse_certificate(der: &[u8]) -> std::result::Result<X509, String> {
    let cert = X509::from_der(der).map_err(|e| e.to_string())?;
    match cert.to_der() {
        Ok(again) if again.len() == der.len() => Ok(cert),
        Ok(_) => Err("bytes after its certificate".into()),
        Err(err) => Err(err.to_string()),
    }
}

/// A DER certificate as a PEM `CERTIFICATE` block, 64 characters a line.
fn der_to_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Credentials for a listener: AutoMTLS when the host asked for it, plain
/// otherwise. The main server and brokered servers use the same.
pub(crate) fn listener_credentials(tls: Option<&AutoMtls>) -> ServerCredentials {
    match tls {
        Some(tls) => tls.server_credentials(),
        None => ServerCredentials::insecure(),
    }
}

impl AutoMtls {
    /// Client credentials for dialing the other side (the plugin dials the
    /// host's brokered servers, the host the plugin): our certificate as
    /// client certificate, the other side's trusted.
    pub(crate) fn channel_credentials(&self) -> ChannelCredentials {
        ChannelCredentialsBuilder::new()
            .root_cert(self.peer_cert_pem.clone())
            .cert(self.cert_pem.clone(), self.key_pem.clone())
            .build()
    }
}

/// A self-signed certificate like go-plugin's `generateCert`: CN and SAN
/// `localhost`, a CA that may sign certificates, usable for server and
/// client authentication, valid from 30 s ago for 30 years. Returns the
/// certificate PEM, the key PEM (PKCS#8) and the certificate DER.
fn generate_certificate() -> std::result::Result<(String, String, Vec<u8>), ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "localhost")?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "HashiCorp")?;
    let name = name.build();
    let mut serial = [0u8; 16];
    fill_random(&mut serial);
    serial[0] &= 0x7f; // a positive INTEGER
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let now = i64::try_from(now).unwrap_or(i64::MAX - 1_000_000_000);
    let mut cert = X509::builder()?;
    cert.set_version(2)?; // X.509 v3
    cert.set_serial_number(BigNum::from_slice(&serial)?.to_asn1_integer()?.as_ref())?;
    cert.set_subject_name(&name)?;
    cert.set_issuer_name(&name)?;
    cert.set_pubkey(&key)?;
    cert.set_not_before(Asn1Time::from_unix(now - 30)?.as_ref())?;
    cert.set_not_after(Asn1Time::from_unix(now + 262_980 * 3600)?.as_ref())?;
    cert.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    cert.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_encipherment()
            .key_agreement()
            .key_cert_sign()
            .build()?,
    )?;
    cert.append_extension(
        ExtendedKeyUsage::new()
            .server_auth()
            .client_auth()
            .build()?,
    )?;
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&cert.x509v3_context(None, None))?;
    cert.append_extension(san)?;
    cert.sign(&key, MessageDigest::sha256())?;
    let cert = cert.build();
    let pem = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    Ok((
        pem(cert.to_pem()?),
        pem(key.private_key_to_pem_pkcs8()?),
        cert.to_der()?,
    ))
}

/// Fills `buf` from the kernel's random source. Used where uniqueness
/// matters (socket names, certificate serials), so if getrandom fails the
/// clock and the pid stand in.
pub(crate) fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let n = crate::sys::getrandom(&mut buf[filled..]).unwrap_or(0);
        if n == 0 {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                ^ (u128::from(std::process::id()) << 64);
            for (i, byte) in buf[filled..].iter_mut().enumerate() {
                *byte = (seed >> ((i % 16) * 8)) as u8;
            }
            return;
        }
        filled += n;
    }
}

/// Checks that `pem` holds at least one well-formed `CERTIFICATE` block, so
/// a broken `PLUGIN_CLIENT_CERT` stops the plugin at start instead of
/// failing every connection later (go-plugin only logs it).
fn check_certificate_pem(pem: &str) -> Result<()> {
    let invalid = |reason: &str| Error::InvalidEnv {
        var: PLUGIN_CLIENT_CERT,
        value: pem.chars().take(64).collect::<String>() + if pem.len() > 64 { "…" } else { "" },
        reason: format!("{reason}; the host must pass its certificate as PEM (AutoMTLS)"),
    };
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut rest = pem;
    let mut found = false;
    while let Some(start) = rest.find(BEGIN) {
        let body_and_rest = &rest[start + BEGIN.len()..];
        let end = body_and_rest
            .find(END)
            .ok_or_else(|| invalid("a CERTIFICATE block has no END line"))?;
        let body: String = body_and_rest[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = STANDARD
            .decode(body)
            .map_err(|_| invalid("a CERTIFICATE block is not valid base64"))?;
        match parse_certificate(&der) {
            Ok(_) => {}
            Err(err) if err.starts_with("bytes after") => {
                return Err(invalid(
                    "a CERTIFICATE block has bytes after its certificate",
                ));
            }
            Err(err) => {
                return Err(invalid(&format!(
                    "a CERTIFICATE block is not an X.509 certificate ({err})"
                )));
            }
        }
        found = true;
        rest = &body_and_rest[end + END.len()..];
    }
    if found {
        Ok(())
    } else {
        Err(invalid("no CERTIFICATE block found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_certificate_and_handshake_field() {
        let (cert_pem, _, der) = generate_certificate().unwrap();
        check_certificate_pem(&cert_pem).expect("our own certificate is well-formed");
        assert_eq!(
            der_to_pem(&der),
            cert_pem,
            "OpenSSL writes PEM as go-plugin's host does"
        );
        let field = STANDARD_NO_PAD.encode(&der);
        assert!(!field.contains('=') && !field.contains('\n'));
        assert!(
            field.len() > 50,
            "the host decodes field 6 only past 50 characters"
        );
        assert_eq!(STANDARD_NO_PAD.decode(&field).unwrap(), der);
    }

    #[test]
    fn malformed_host_certificates_are_refused() {
        for pem in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            // A DER SEQUENCE holding an INTEGER: the shape of a certificate,
            // not one.
            "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
        ] {
            let err = check_certificate_pem(pem).expect_err(pem).to_string();
            assert!(err.starts_with("PLUGIN_CLIENT_CERT="), "{err}");
            assert!(err.contains("AutoMTLS"), "{err}");
        }
    }
}
