//! Bearer-token admission (SPEC §8.1) for routes with `auth: jwt` or `any`,
//! and the token's effect on the upstream request: `authorization` removed
//! unless `forward_token`, `claims_to_headers` set over the client's values.

use crate::core::auth::ConsumerId;
use crate::core::config::AuthMode;
use crate::core::forward::HeaderEdit;
use crate::core::jwt::{self, Bearer, TokenFault, VerifiedToken};
use crate::core::reply::Refusal;
use crate::tables::jwt::{unix_now, Failure};
use crate::tables::{Gateway, Route, RouteTokens};
use http::header::AUTHORIZATION;
use http::HeaderValue;
use std::sync::Arc;

/// What the credentials of a request on a token route came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TokenAdmission {
    pub consumer: Option<ConsumerId>,
    pub token: Option<Arc<VerifiedToken>>,
    pub refusal: Option<Refusal>,
    /// The token's `kid` is unknown to this issuer: worth one wait for a JWKS fetch.
    pub await_keys: Option<usize>,
}

impl TokenAdmission {
    fn refused(refusal: Refusal) -> TokenAdmission {
        TokenAdmission {
            refusal: Some(refusal),
            ..TokenAdmission::default()
        }
    }
}

/// Judges the credentials of a request on a route that takes tokens. With
/// `auth: any`, a bearer token is judged when sent, else the API key.
///
/// `key` is the API-key header's value, `authorization` that header's.
pub fn admit_credentials(
    gw: &Gateway,
    route: &Route,
    key: Option<&[u8]>,
    authorization: Option<&[u8]>,
) -> TokenAdmission {
    let bearer = jwt::bearer(authorization);
    if route.tokens.mode == AuthMode::Any && bearer == Bearer::Absent {
        let Some(key) = key else {
            return TokenAdmission::refused(Refusal::MissingCredentials);
        };
        let Some(id) = gw.keys.find(key) else {
            return TokenAdmission::refused(Refusal::InvalidApiKey);
        };
        let refusal = forbidden(route, Some(id));
        return TokenAdmission {
            consumer: Some(id),
            refusal,
            ..TokenAdmission::default()
        };
    }
    let token = match bearer {
        // An API key alone on a `jwt` route is still no token.
        Bearer::Absent => return TokenAdmission::refused(Refusal::MissingToken),
        Bearer::Empty => {
            return TokenAdmission::refused(Refusal::InvalidToken(TokenFault::Invalid))
        }
        Bearer::Token(t) => t,
    };
    let Some(issuers) = &gw.jwt else {
        // Validation refuses such a config; stay closed all the same.
        return TokenAdmission::refused(Refusal::InvalidToken(TokenFault::Invalid));
    };
    let verified = match issuers.verify(token, unix_now(), &gw.keys) {
        Ok(v) => v,
        Err(Failure::Fault(f)) => return TokenAdmission::refused(Refusal::InvalidToken(f)),
        Err(Failure::UnknownKey { issuer }) => {
            return TokenAdmission {
                await_keys: Some(issuer),
                ..TokenAdmission::refused(Refusal::InvalidToken(TokenFault::BadSignature))
            }
        }
    };
    let refusal = if !jwt::has_scopes(&verified.scopes, &route.tokens.scopes) {
        Some(Refusal::InsufficientScope {
            scope: route.tokens.scope_text.clone(),
        })
    } else {
        forbidden(route, verified.consumer)
    };
    TokenAdmission {
        consumer: verified.consumer,
        token: Some(verified),
        refusal,
        await_keys: None,
    }
}

/// A route with a `consumers:` list refuses every other caller, an anonymous
/// token's too.
fn forbidden(route: &Route, consumer: Option<ConsumerId>) -> Option<Refusal> {
    let allowed = route.consumers.as_ref()?;
    match consumer {
        Some(id) if allowed.contains(&id) => None,
        _ => Some(Refusal::Forbidden),
    }
}

/// Waits (bounded) for a JWKS fetch an unknown `kid` asked for. True when
/// one happened: admission may be tried once more.
pub async fn await_keys(gw: &Gateway, issuer: usize) -> bool {
    match &gw.jwt {
        Some(issuers) => issuers.await_fetch(issuer).await,
        None => false,
    }
}

/// The token's part of the upstream request on a token route.
pub fn rewrite_upstream_request<H: HeaderEdit>(
    req: &mut H,
    tokens: &RouteTokens,
    token: Option<&VerifiedToken>,
) -> Result<(), H::Error> {
    if !tokens.mode.takes_tokens() {
        return Ok(());
    }
    if !tokens.forward_token {
        req.remove(&AUTHORIZATION);
    }
    for (header, claim) in &tokens.claims_to_headers {
        // The client's own value never passes, whether the claim is there or not.
        req.remove(header);
        let value = token
            .and_then(|t| jwt::claim_text(&t.claims, claim))
            .and_then(|text| HeaderValue::try_from(text).ok());
        if let Some(value) = value {
            req.insert(header.clone(), value)?;
        }
    }
    Ok(())
}
