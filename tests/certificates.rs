//! Certificates that name their party and expire, against a running node: the caller's party is
//! the certificate's `urn:hru:party:` name (a certificate with the right common name and no
//! such name is refused), an expired certificate is refused, and a certificate for a party
//! whose directory entry lists its own CA is accepted only from that CA (a certificate for
//! police-hru issued by probation's CA is refused).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::{Path, PathBuf};

use hru_node::tls::{self, CertAndKey};
use hru_tests::{CHESHIRE_PARTIES, World, request, tls_channel};
use hru_wire::v1 as pb;
use pb::case_service_client::CaseServiceClient;

/// What police-hru's node answers a `ListCases` from the holder of `cert`: the gRPC code, or
/// `None` when the TLS handshake itself fails.
fn answer(w: &World, node: &hru_tests::NodeProcess, cert: &CertAndKey, name: &str) -> Option<tonic::Code> {
    let dir = w.dir.path().join("callers");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path): (PathBuf, PathBuf) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The node answers once it is up (the good certificate below proves it is).
        let channel = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tls_channel(node, &w.dir.path().join("ca/ca.pem"), &cert_path, &key_path),
        )
        .await
        .ok()?;
        let reply = CaseServiceClient::new(channel)
            .list_cases(request(
                pb::ListCasesRequest {
                    view: "case-board".into(),
                    purpose: "risk-management".into(),
                },
                "DC 1",
            ))
            .await;
        Some(match reply {
            Ok(_) => tonic::Code::Ok,
            // The connection itself failed: the handshake refused the certificate.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) =>
            {
                println!("{name}: no answer: {:?} {}", s.code(), s.message());
                return None;
            }
            Err(s) => {
                println!("{name}: {:?} {}", s.code(), s.message());
                s.code()
            }
        })
    })
}

fn deployment_ca(w: &World) -> CertAndKey {
    let read = |f: &str| std::fs::read_to_string(w.dir.path().join("ca").join(f)).unwrap();
    CertAndKey {
        cert_pem: read("ca.pem"),
        key_pem: read("ca.key"),
    }
}

/// A certificate with `cn` as its common name and no subject-alternative name naming a party.
fn common_name_only(ca: &CertAndKey, cn: &str) -> CertAndKey {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, rcgen::KeyPair::from_pem(&ca.key_pem).unwrap()).unwrap();
    CertAndKey {
        cert_pem: params.signed_by(&key, &issuer).unwrap().pem(),
        key_pem: key.serialize_pem(),
    }
}

#[test]
fn a_certificate_names_its_party_and_expires() {
    let w = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    let node = w.start_node("police-hru", "");
    let ca = deployment_ca(&w);
    let good = tls::issue(&ca, "police-hru", &["localhost"], tls::DEFAULT_CERT_VALIDITY).unwrap();
    assert_eq!(
        answer(&w, &node, &good, "good"),
        Some(tonic::Code::Ok),
        "police's own certificate"
    );
    let cn = common_name_only(&ca, "police-hru");
    assert_eq!(
        answer(&w, &node, &cn, "common-name-only"),
        Some(tonic::Code::Unauthenticated),
        "the common name names no party"
    );
    let expired = tls::issue_between(&ca, "police-hru", &["localhost"], -7 * 86_400, -86_400).unwrap();
    assert_eq!(
        answer(&w, &node, &expired, "expired"),
        None,
        "an expired certificate fails the handshake"
    );
}

#[test]
fn a_party_listing_its_own_ca_is_accepted_only_from_it() {
    let w = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    let keys = |rel: &str| hru_tests::path(w.dir.path(), rel);
    // Probation runs its own CA and lists it in its directory entry.
    let out = w.run(&["keys", "ca", "--party", "probation", "--out", &keys("probation-ca")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(line.starts_with("tls_ca = \"\"\""), "{line}");
    let file = w.dir.path().join("policies/directory.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let at = text.find("id = \"probation\"\n").unwrap();
    let end = at + text[at..].find('\n').unwrap() + 1;
    std::fs::write(&file, format!("{}{line}{}", &text[..end], &text[end..])).unwrap();

    let node = w.start_node("police-hru", "");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let probation_ca = CertAndKey {
        cert_pem: read(&w.dir.path().join("probation-ca/ca.pem")),
        key_pem: read(&w.dir.path().join("probation-ca/ca.key")),
    };
    let valid = tls::DEFAULT_CERT_VALIDITY;
    // Probation's certificate from its own CA gets through authentication (the agreement then
    // decides: probation may not read police's case board).
    let own = tls::issue(&probation_ca, "probation", &["localhost"], valid).unwrap();
    assert_eq!(
        answer(&w, &node, &own, "probation-own"),
        Some(tonic::Code::PermissionDenied)
    );
    // A certificate for police-hru from probation's CA.
    let forged = tls::issue(&probation_ca, "police-hru", &["localhost"], valid).unwrap();
    assert_eq!(
        answer(&w, &node, &forged, "police-by-probation-ca"),
        Some(tonic::Code::Unauthenticated)
    );
    // A certificate for probation from the deployment CA, now that probation lists its own.
    let other = tls::issue(&deployment_ca(&w), "probation", &["localhost"], valid).unwrap();
    assert_eq!(
        answer(&w, &node, &other, "probation-by-deployment-ca"),
        Some(tonic::Code::Unauthenticated)
    );
}
