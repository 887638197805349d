//! A tenant that leaves: it exports its data, then asks to be erased. What the erasure
//! leaves behind is searched for at the end (`erasure_checks`).

use reqwest::Method;
use serde_json::json;

use crate::api::{Api, As, Busy};
use crate::books::Tenant;

/// Whether the export held the tenant's data and the erasure was taken.
pub async fn erase(api: &Api, tenant: &Tenant) -> Result<bool, Busy> {
    let _gate = tenant.live.gate.write().await;
    let key = tenant.key();
    let export = api.get("GET /v1/tenant/export", &key).await?;
    let exported = export.status == 200 && export.body.to_string().contains(&tenant.email());
    let asked = api
        .call_idempotent(
            "POST /v1/tenant/erasure",
            Method::POST,
            "/v1/tenant/erasure",
            As::Key(&key),
            &json!({}),
        )
        .await
        .map_err(|_| Busy)?;
    if asked.status == 409 {
        return Err(Busy);
    }
    let taken = asked.status == 202;
    if taken {
        tenant.live.state().erased = true;
    }
    Ok(exported && taken)
}
