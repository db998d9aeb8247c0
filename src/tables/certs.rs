//! TLS listeners' certificates, read with the config (so `--test` and a reload
//! check them) and kept in the tables.

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

/// A listener's certificate chain and key, read from its files.
pub struct CertifiedKey {
    /// Leaf first, then the intermediates.
    pub(crate) chain: Vec<X509>,
    pub(crate) key: PKey<Private>,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertifiedKey")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Which of the two files failed, and why.
pub enum LoadError {
    Cert(String),
    Key(String),
}

impl CertifiedKey {
    /// Reads a PEM chain and its PEM private key; they must belong together.
    pub fn load(cert_path: &str, key_path: &str) -> Result<CertifiedKey, LoadError> {
        let cert_pem = std::fs::read(cert_path)
            .map_err(|e| LoadError::Cert(format!("cannot read {cert_path:?}: {e}")))?;
        let chain = X509::stack_from_pem(&cert_pem)
            .map_err(|_| LoadError::Cert(format!("{cert_path:?} holds no PEM certificate")))?;
        let Some(leaf) = chain.first() else {
            return Err(LoadError::Cert(format!(
                "{cert_path:?} holds no PEM certificate"
            )));
        };
        // The key is never put in a message, only its file's name.
        let key_pem = std::fs::read(key_path)
            .map_err(|e| LoadError::Key(format!("cannot read {key_path:?}: {e}")))?;
        let key = PKey::private_key_from_pem(&key_pem)
            .map_err(|_| LoadError::Key(format!("{key_path:?} holds no PEM private key")))?;
        let matches = leaf.public_key().is_ok_and(|public| public.public_eq(&key));
        if !matches {
            return Err(LoadError::Key(format!(
                "the key in {key_path:?} does not belong to the certificate in {cert_path:?}"
            )));
        }
        Ok(CertifiedKey { chain, key })
    }
}
