//! Mutual TLS between parties: each agency's CA issues its party's certificates, which name the
//! party as a URI subject-alternative name (`urn:hru:party:<id>`; the common name is ignored)
//! and expire; a caller's party is read from that name, and its certificate must have been
//! issued by that party's own CA as the directory lists it.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// The URI prefix of a party's subject-alternative name.
pub const PARTY_URI: &str = "urn:hru:party:";

/// How long a party certificate is valid unless told otherwise.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// How long a CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400);

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM (keep it mode 0600).
    pub key_pem: String,
}

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct CertError(String);

fn cert_err(e: impl std::fmt::Display) -> CertError {
    CertError(e.to_string())
}

/// `now + offset` (negative: in the past), for a certificate's validity.
fn at(offset_s: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_s)
}

/// A new CA (an agency's, or a development deployment's), valid for [`CA_VALIDITY`].
pub fn new_ca(name: &str) -> Result<CertAndKey, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = at(-300);
    params.not_after = at(CA_VALIDITY.as_secs() as i64);
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = params.self_signed(&key).map_err(cert_err)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `party` from `ca`, valid as server for `hosts` and as client, for
/// `valid_for` from now.
pub fn issue(ca: &CertAndKey, party: &str, hosts: &[&str], valid_for: Duration) -> Result<CertAndKey, CertError> {
    issue_between(ca, party, hosts, -300, valid_for.as_secs() as i64)
}

/// A certificate for `party` valid from `from_s` to `until_s` seconds from now (negative: in
/// the past); [`issue`] for the usual case.
pub fn issue_between(
    ca: &CertAndKey,
    party: &str,
    hosts: &[&str],
    from_s: i64,
    until_s: i64,
) -> Result<CertAndKey, CertError> {
    sign(ca, party, Some(party), hosts, from_s, until_s)
}

/// A certificate for a server that is no party (a nats-server of the cluster: `name` is its
/// common name), valid as server and client (cluster routes) for `hosts`, for `valid_for`.
pub fn issue_server(ca: &CertAndKey, name: &str, hosts: &[&str], valid_for: Duration) -> Result<CertAndKey, CertError> {
    sign(ca, name, None, hosts, -300, valid_for.as_secs() as i64)
}

/// A certificate from `ca` named `name`, with `party`'s URI subject-alternative name if given.
fn sign(
    ca: &CertAndKey,
    name: &str,
    party: Option<&str>,
    hosts: &[&str],
    from_s: i64,
    until_s: i64,
) -> Result<CertAndKey, CertError> {
    let mut params =
        CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()).map_err(cert_err)?;
    if let Some(party) = party {
        let uri = format!("{PARTY_URI}{party}").try_into().map_err(cert_err)?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = at(from_s);
    params.not_after = at(until_s);
    let key = KeyPair::generate().map_err(cert_err)?;
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(cert_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(cert_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The party a peer certificate names: its one `urn:hru:party:` URI subject-alternative name
/// (the common name is not read). None when it names none, or more than one.
pub fn party_of(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut parties = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => uri.strip_prefix(PARTY_URI),
        _ => None,
    });
    let party = parties.next()?.to_owned();
    parties.next().is_none().then_some(party)
}

/// Whether the certificate `der` was signed by the CA certificate `ca_der`.
pub fn issued_by(der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(der),
        x509_parser::parse_x509_certificate(ca_der),
    ) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// The DER certificates in a PEM text (a CA bundle may hold several).
pub fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}
