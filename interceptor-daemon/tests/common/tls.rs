//! Test certificates for upstream TLS (PostgreSQL and MySQL targets).

use std::net::Ipv4Addr;

/// A CA and a server certificate for `db.internal` and `ips`, as PEM.
pub fn certificates(ips: &[Ipv4Addr]) -> (String, String, String) {
    let (ca, cert, key, _) = certificates_and_client(ips, "client");
    (ca, cert, key)
}

/// [`certificates`], and a client certificate (and key, PEM) with common
/// name `client_cn` from the same CA.
pub fn certificates_and_client(
    ips: &[Ipv4Addr],
    client_cn: &str,
) -> (String, String, String, (String, String)) {
    use rcgen13::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "interceptor test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["db.internal".to_string()]).unwrap();
    for ip in ips {
        server
            .subject_alt_names
            .push(SanType::IpAddress((*ip).into()));
    }
    server
        .distinguished_name
        .push(DnType::CommonName, "db.internal");
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, client_cn);
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
    (
        ca_cert.pem(),
        cert.pem(),
        key.serialize_pem(),
        (client_cert.pem(), client_key.serialize_pem()),
    )
}

/// A CA that signed none of them.
pub fn other_ca() -> String {
    let key = rcgen13::KeyPair::generate().unwrap();
    let mut p = rcgen13::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen13::IsCa::Ca(rcgen13::BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().pem()
}
