//! Accepting a signup: the one way a signup enters the system, for the API and for the
//! readiness probe alike. Stores it with its token's hash and sealed first key, and
//! queues its workflow, in one transaction; a request retried under the same
//! idempotency scope gets the first signup back.

use saas_core::{SignupId, TenantId};
use tenancy::{Db, StoreError};

use crate::request::ValidSignup;
use crate::secrets::{FirstKey, IdempotencyScope};
use crate::store::{self, NewSignup};

/// A signup to accept.
pub struct Application {
    pub id: SignupId,
    pub signup: ValidSignup,
    /// The client's idempotency key and address, when it sent a key.
    pub scope: Option<IdempotencyScope>,
    /// A readiness probe's signup (never billed, never mailed).
    pub synthetic: bool,
}

/// The accepted signup and the token that reads it (shown only to its requester).
#[derive(Debug)]
pub struct Accepted {
    pub id: SignupId,
    pub token: String,
    /// Whether this is the first answer given again to a retried request.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The same person and company signed up already (and it did not fail).
    #[error("a signup for this email and company is already under way or complete")]
    Exists,
    #[error("this Idempotency-Key was used for a different signup")]
    KeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn accept(db: &Db, application: Application) -> Result<Accepted, AcceptError> {
    let digest = application.signup.digest();
    if let Some(scope) = &application.scope
        && let Some(first) = replay(db, scope, &digest).await?
    {
        return Ok(first);
    }
    let id = application.id;
    let token = store::new_token();
    let first_key = FirstKey::new(&token);
    let new = NewSignup {
        id,
        signup: &application.signup,
        token_hash: store::hash_token(&token),
        first_key: &first_key,
        idempotency: application
            .scope
            .as_ref()
            .map(|scope| store::IdempotentRequest {
                scope_digest: scope.digest(),
                token_sealed: scope.seal_token(&token),
            }),
        synthetic: application.synthetic,
    };
    // Under the wall of the tenant the signup becomes.
    let mut tx = db.tenant_tx(TenantId::from_uuid(id.as_uuid())).await?;
    match store::insert(&mut tx, new).await {
        Ok(()) => {}
        // Another request with the same key got there first: answer as it did.
        Err(StoreError::Conflict { constraint }) if constraint == "signups_idempotency_scope" => {
            drop(tx);
            return match &application.scope {
                Some(scope) => replay(db, scope, &digest).await?.ok_or(AcceptError::Exists),
                None => Err(AcceptError::Exists),
            };
        }
        // The first signup's token is not handed out again: only its holder may read it.
        Err(StoreError::Conflict { constraint })
            if constraint == "signups_one_live_per_email_and_company" =>
        {
            return Err(AcceptError::Exists);
        }
        Err(other) => return Err(other.into()),
    }
    crate::job::enqueue(&mut tx, id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    if !application.synthetic {
        metrics::counter!("signups_created_total").increment(1);
    }
    tracing::info!(signup = %id, plan = %application.signup.plan_code, "signup accepted");
    Ok(Accepted {
        id,
        token,
        replayed: false,
    })
}

/// The first signup accepted under `scope`, if any. A key older than the idempotency
/// window is forgotten and may be used afresh.
async fn replay(
    db: &Db,
    scope: &IdempotencyScope,
    digest: &[u8],
) -> Result<Option<Accepted>, AcceptError> {
    let mut tx = db.system_tx("signup idempotency").await?;
    let found = store::find_by_idempotency_scope(&mut tx, &scope.digest()).await?;
    let Some(found) = found else {
        return Ok(None);
    };
    if found.expired {
        store::forget_idempotency_scope(&mut tx, found.id).await?;
        tx.commit().await.map_err(StoreError::from)?;
        return Ok(None);
    }
    tx.commit().await.map_err(StoreError::from)?;
    if found.request_hash != digest {
        return Err(AcceptError::KeyReused);
    }
    // The first answer was always `pending` with the token; the token is opened with the
    // scope the retry proves it shares.
    match found
        .token_sealed
        .as_deref()
        .and_then(|sealed| scope.open_token(sealed))
    {
        Some(token) => Ok(Some(Accepted {
            id: SignupId::from_uuid(found.id),
            token,
            replayed: true,
        })),
        None => Err(AcceptError::Exists),
    }
}
