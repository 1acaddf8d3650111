//! TLS material shared by the MQTT input, the uplink and the local API.
//! Imports nothing from the rest of the crate, so the config can check
//! certificate files without importing the parts that use them.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The certificates of a PEM file.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}
