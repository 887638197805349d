//! API-key rotation in a tenant's life: a new key, and the old one revoked with it.

use reqwest::Method;
use serde_json::json;

use crate::api::{Api, As, Busy, until_answered};
use crate::books::Tenant;

/// A new key, the old one revoked with it; whether the new key works and the old one is
/// refused at once.
pub async fn rotate_key(api: &Api, tenant: &Tenant) -> Result<bool, Busy> {
    let _gate = tenant.live.gate.write().await;
    let (old_key, old_id) = (tenant.key(), tenant.key_id());
    let created = api
        .answered(
            "POST /v1/api-keys",
            Method::POST,
            "/v1/api-keys",
            As::Key(&old_key),
            Some(&json!({"name": "rotated by saas-sim"})),
        )
        .await?;
    if created.status != 201 {
        return Ok(false);
    }
    let (Some(new_key), Some(new_id)) =
        (created.body["secret"].as_str(), created.body["id"].as_str())
    else {
        return Ok(false);
    };
    // From here on the tenant uses the new key, whatever becomes of the old one.
    {
        let mut state = tenant.live.state();
        state.api_key = new_key.to_owned();
        state.key_id = new_id.to_owned();
    }
    // Revoking is sent until answered; a retry after a lost answer finds it revoked.
    let path = format!("/v1/api-keys/{old_id}");
    let revoked = until_answered(|| {
        api.answered(
            "DELETE /v1/api-keys/{id}",
            Method::DELETE,
            &path,
            As::Key(new_key),
            None,
        )
    })
    .await?;
    if !(revoked.status.is_success() || revoked.status == 404) {
        return Ok(false);
    }
    let old = until_answered(|| api.get("GET /v1/tenant", &old_key)).await?;
    let new = until_answered(|| api.get("GET /v1/tenant", new_key)).await?;
    Ok(old.status == 401 && new.status == 200 && new.body["id"] == json!(tenant.tenant_id))
}
