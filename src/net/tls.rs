//! TLS listeners: each handshake reads its certificate from the tables in
//! force, so a reload that reads new files serves them at once.

use crate::tables::Gateway;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::listeners::TlsAccept;
use pingora_core::tls::ext;
use pingora_core::tls::ssl::SslRef;
use std::net::SocketAddr;
use std::sync::Arc;

/// Gives a TLS listener's handshakes the certificate of the tables in force.
pub struct ListenerCerts {
    pub addr: SocketAddr,
    pub tables: Arc<ArcSwap<Gateway>>,
}

#[async_trait]
impl TlsAccept for ListenerCerts {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        let tables = self.tables.load();
        let Some(cert) = tables.certificate_for(self.addr) else {
            log::warn!(
                "no certificate for the TLS listener {}: handshake refused",
                self.addr
            );
            return;
        };
        let mut chain = cert.chain.iter();
        let installed = chain
            .next()
            .map(|leaf| ext::ssl_use_certificate(ssl, leaf))
            .transpose()
            .and_then(|_| ext::ssl_use_private_key(ssl, &cert.key))
            .and_then(|_| chain.try_for_each(|c| ext::ssl_add_chain_cert(ssl, c)));
        if let Err(e) = installed {
            log::warn!("cannot install the certificate of {}: {e}", self.addr);
        }
    }
}
