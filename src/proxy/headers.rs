//! Pingora's request and response heads as the forwarding policy's
//! [`HeaderEdit`]: the policy lives in the pure core, the heads here.

use crate::core::forward::HeaderEdit;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_core::Error;
use pingora_http::{RequestHeader, ResponseHeader};

macro_rules! header_edit {
    ($head:ty) => {
        impl HeaderEdit for $head {
            type Error = Box<Error>;

            fn headers(&self) -> &HeaderMap {
                &self.headers
            }

            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }

            fn reserve(&mut self, additional: usize) {
                // Capacity only: an insert past `http`'s limit reports the error.
                let _ = self.reserve_headers(additional);
            }

            fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), Box<Error>> {
                self.insert_header(name, value)
            }

            fn insert_str(&mut self, name: HeaderName, value: &str) -> Result<(), Box<Error>> {
                self.insert_header(name, value)
            }
        }
    };
}

header_edit!(RequestHeader);
header_edit!(ResponseHeader);
