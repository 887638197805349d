//! The dashboard's sign-in and session, over HTTP. (What the page shows is read from the
//! same API endpoints, through the session.)

use std::time::Duration;

use integration_tests::{TestApp, error_code};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// GET `path` with only a cookie for credentials, as a browser would.
async fn get_as(app: &TestApp, path: &str, cookie: &str) -> reqwest::Response {
    client()
        .get(app.url(path))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

/// The sign-in page's double-submit token (the form field and its cookie).
async fn login_token(app: &TestApp) -> String {
    let page = client().get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let cookie = page.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-saas_login_csrf="), "{cookie}");
    let html = page.text().await.unwrap();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    assert!(cookie.contains(&token));
    token
}

async fn sign_in(app: &TestApp, key: &str) -> reqwest::Response {
    let token = login_token(app).await;
    client()
        .post(app.url("/dashboard/login"))
        .header(COOKIE, format!("__Host-saas_login_csrf={token}"))
        .form(&[("api_key", key), ("csrf", token.as_str())])
        .send()
        .await
        .unwrap()
}

/// Signs in and returns the session cookie (`__Host-saas_session=...`).
async fn session_cookie(app: &TestApp, key: &str) -> String {
    let response = sign_in(app, key).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/dashboard");
    let cookie = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("__Host-saas_session="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains(key), "the key is not the session");
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_key_becomes_a_session_that_reads_what_the_api_reads() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("pro").await;
    let events = json!([{"id": "a", "metric": "queries", "value": 4242}, {"id": "b", "metric": "tokens", "value": 777}]);
    assert_eq!(app.ingest(&tenant.api_key, events).await.status(), 202);
    let session = session_cookie(&app, &tenant.api_key).await;

    let page = get_as(&app, "/dashboard", &session).await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("/dashboard/assets/app.js") && html.contains("id=\"quotas\""));
    for asset in ["/dashboard/assets/app.js", "/dashboard/assets/app.css"] {
        assert_eq!(
            client().get(app.url(asset)).send().await.unwrap().status(),
            200
        );
    }

    for path in [
        "/v1/usage/summary",
        "/v1/tenant",
        "/v1/invoices/upcoming",
        "/v1/usage?metric=queries&granularity=minute",
    ] {
        let by_session: Value = get_as(&app, path, &session).await.json().await.unwrap();
        let by_key = app.get_json(&tenant.api_key, path).await;
        assert_eq!(by_session, by_key, "{path}");
    }

    // Changes need the session's CSRF token.
    let refused = client()
        .post(app.url("/v1/tenant/plan-changes"))
        .header(COOKIE, &session)
        .json(&json!({"plan": "enterprise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(error_code(refused).await, "csrf_failed");
    let csrf: Value = get_as(&app, "/dashboard/session", &session)
        .await
        .json()
        .await
        .unwrap();
    let accepted = client()
        .post(app.url("/v1/tenant/plan-changes"))
        .header(COOKIE, &session)
        .header("x-csrf-token", csrf["csrf_token"].as_str().unwrap())
        .json(&json!({"plan": "enterprise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);

    // A session cannot mint keys or erase the tenant: those want the key itself.
    for path in ["/v1/api-keys", "/v1/tenant/erasure"] {
        let refused = client()
            .post(app.url(path))
            .header(COOKIE, &session)
            .header("x-csrf-token", csrf["csrf_token"].as_str().unwrap())
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{path}");
        assert_eq!(error_code(refused).await, "api_key_required", "{path}");
    }
    // Answers for one caller are never stored by a shared cache.
    let summary = get_as(&app, "/v1/usage/summary", &session).await;
    assert_eq!(summary.headers()["cache-control"], "no-store");

    // Signing out ends it.
    let out = client()
        .post(app.url("/dashboard/logout"))
        .header(COOKIE, &session)
        .header("x-csrf-token", csrf["csrf_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let after = get_as(&app, "/v1/tenant", &session).await;
    assert_eq!(after.status(), 401);
}

#[tokio::test]
async fn wrong_keys_cross_site_posts_and_old_sessions_are_refused() {
    let app = TestApp::spawn_with(|config| config.dashboard.session_ttl_ms = 1500).await;
    let tenant = app.create_tenant("pro").await;

    let wrong = sign_in(&app, "sk_live_not_a_key").await;
    assert_eq!(wrong.status(), 401);
    assert!(
        wrong
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("__Host-saas_session="))
    );
    assert!(wrong.text().await.unwrap().contains("not valid"));

    // A form on another site: refused even with a valid key and token.
    let token = login_token(&app).await;
    for (header, value) in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let response = client()
            .post(app.url("/dashboard/login"))
            .header(COOKIE, format!("__Host-saas_login_csrf={token}"))
            .header(header, value)
            .form(&[
                ("api_key", tenant.api_key.as_str()),
                ("csrf", token.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{header}");
    }
    // Without the double-submit token: refused.
    let response = client()
        .post(app.url("/dashboard/login"))
        .form(&[("api_key", tenant.api_key.as_str()), ("csrf", "guessed")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // The key never travels in a URL: there is no GET sign-in.
    let by_url = client()
        .get(app.url(&format!("/dashboard/login?api_key={}", tenant.api_key)))
        .send()
        .await
        .unwrap();
    assert_eq!(by_url.status(), 405);

    // An expired session is a signed-out browser.
    let session = session_cookie(&app, &tenant.api_key).await;
    assert_eq!(get_as(&app, "/v1/tenant", &session).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let expired = get_as(&app, "/v1/tenant", &session).await;
    assert_eq!(expired.status(), 401);
    assert_eq!(error_code(expired).await, "session_expired");
    let page = get_as(&app, "/dashboard", &session).await;
    assert!(page.text().await.unwrap().contains("session has ended"));

    // Revoking the key ends its sessions.
    let session = session_cookie(&app, &tenant.api_key).await;
    let revoked = app
        .delete(&format!("/v1/api-keys/{}", tenant.key_id))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    assert_eq!(get_as(&app, "/v1/tenant", &session).await.status(), 401);
}

/// The page in a real (headless) browser: sign in, see the API's numbers, see new usage
/// appear within 2 s without a reload, keep a screenshot; a wrong key is refused.
#[tokio::test]
async fn in_a_browser_the_page_shows_the_apis_numbers_and_follows_new_usage() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("starter").await;
    let events = json!([{"id": "a", "metric": "queries", "value": 12345}]);
    assert_eq!(app.ingest(&tenant.api_key, events).await.status(), 202);
    let browser = integration_tests::Browser::start().await;

    browser.goto(&app.url("/dashboard")).await;
    browser.type_into("#api_key", "sk_live_wrong").await;
    browser.click("button[type=submit]").await;
    let refused = browser
        .wait_until(
            ".message",
            |text| text.contains("not valid"),
            Duration::from_secs(10),
        )
        .await;
    assert!(refused, "{}", browser.source().await);

    browser.type_into("#api_key", &tenant.api_key).await;
    browser.click("button[type=submit]").await;
    let used = |n: u64| {
        // The page formats numbers as en-US does.
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let summary = app.get_json(&tenant.api_key, "/v1/usage/summary").await;
    let api_used = summary["metrics"]["queries"]["used"].as_u64().unwrap();
    let selector = ".quota[data-metric=queries] .used";
    assert!(
        browser
            .wait_for_text(selector, &used(api_used), Duration::from_secs(10))
            .await,
        "the page shows {:?}, the API {api_used}",
        browser.text(selector).await
    );
    assert_eq!(browser.text("#plan").await.as_deref(), Some("starter"));

    // New usage shows up within the refresh interval, without a reload.
    let more = json!([{"id": "b", "metric": "queries", "value": 1000}]);
    assert_eq!(app.ingest(&tenant.api_key, more).await.status(), 202);
    assert!(
        browser
            .wait_for_text(selector, &used(api_used + 1000), Duration::from_secs(2))
            .await,
        "new usage did not appear within 2 s"
    );

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-output");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.png"), png).unwrap();
    browser.close().await;
}

#[tokio::test]
async fn the_operator_view_reads_the_overview_with_a_read_only_session() {
    let app = TestApp::spawn().await;
    let active = app.create_tenant("pro").await;
    app.create_tenant_in_state("starter", saas_core::TenantState::Suspended, false)
        .await;
    app.create_tenant_in_state("pro", saas_core::TenantState::Active, true)
        .await;
    let mut tx = app.db.system_tx("test setup").await.unwrap();
    sqlx::query(
        "INSERT INTO invoices (id, tenant_id, period_start, period_end, plan_code, currency, total, status) \
         VALUES ($1, $2, '2026-10-01', '2026-11-01', 'pro', 'usd', 19900, 'paid')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(active.id.as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let overview = app.operator_get("/v1/admin/overview").await;
    let states: Vec<(String, i64)> = overview["tenants_by_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap().to_owned(),
                s["tenants"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![("active".into(), 1), ("suspended".into(), 1)],
        "probes are not counted"
    );
    assert_eq!(overview["revenue_by_month"][0]["month"], "2026-10");
    assert_eq!(overview["revenue_by_month"][0]["paid"], 19900);

    // Sign in with the operator token: a session that reads, and only reads.
    let token = login_token(&app).await;
    let wrong = client()
        .post(app.url("/dashboard/operator/login"))
        .header(COOKIE, format!("__Host-saas_login_csrf={token}"))
        .form(&[
            ("api_key", "not-the-operator-token"),
            ("csrf", token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let token = login_token(&app).await;
    let signed_in = client()
        .post(app.url("/dashboard/operator/login"))
        .header(COOKIE, format!("__Host-saas_login_csrf={token}"))
        .form(&[
            ("api_key", integration_tests::OPERATOR_TOKEN),
            ("csrf", token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("__Host-saas_operator_session="))
        .unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let session = cookie.split(';').next().unwrap().to_owned();
    let read = get_as(&app, "/v1/admin/overview", &session).await;
    assert_eq!(read.status(), 200);
    let write = client()
        .post(app.url("/v1/admin/billing/runs"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403);
    assert_eq!(error_code(write).await, "read_only_session");
    let page = get_as(&app, "/dashboard/operator", &session).await;
    assert!(page.text().await.unwrap().contains("Tenants by state"));

    // A tenant's session is no operator.
    let tenant_session = session_cookie(&app, &active.api_key).await;
    let refused = get_as(&app, "/v1/admin/overview", &tenant_session).await;
    assert!(
        refused.status() == 401 || refused.status() == 403,
        "{}",
        refused.status()
    );

    // And in a browser.
    let browser = integration_tests::Browser::start().await;
    browser.goto(&app.url("/dashboard/operator")).await;
    browser
        .type_into("#api_key", integration_tests::OPERATOR_TOKEN)
        .await;
    browser.click("button[type=submit]").await;
    assert!(
        browser
            .wait_until(
                "#states tbody",
                |text| text.contains("suspended"),
                Duration::from_secs(10)
            )
            .await,
        "{}",
        browser.source().await
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-output");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("operator.png"), browser.screenshot().await).unwrap();
    browser.close().await;
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_address() {
    let app =
        TestApp::spawn_with(|config| config.dashboard.sign_ins_per_minute = 2.try_into().unwrap())
            .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(sign_in(&app, "sk_live_guess").await.status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 429]);
}

/// Signs in to the operator view; returns the session cookie (`name=value`).
async fn operator_session(app: &TestApp) -> String {
    let token = login_token(app).await;
    let signed_in = client()
        .post(app.url("/dashboard/operator/login"))
        .header(COOKIE, format!("__Host-saas_login_csrf={token}"))
        .form(&[
            ("api_key", integration_tests::OPERATOR_TOKEN),
            ("csrf", token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    signed_in
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("__Host-saas_operator_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_copy_of_the_operator_sessions_gives_nothing_to_test_token_guesses_against() {
    use sha2::Digest;

    let app = TestApp::spawn().await;
    let (first, second) = (operator_session(&app).await, operator_session(&app).await);
    for session in [&first, &second] {
        assert_eq!(
            get_as(&app, "/v1/admin/overview", session).await.status(),
            200
        );
    }
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT operator_token_fingerprint FROM operator_sessions")
            .fetch_all(&app.owner_pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 2);
    // Salted by each session's own secret: no two alike, and none is a hash of the token
    // alone (with or without the label it is bound under).
    assert_ne!(stored[0], stored[1]);
    let token = integration_tests::OPERATOR_TOKEN;
    for guess in [token.to_owned(), format!("operator-session:{token}")] {
        let digest = sha2::Sha256::digest(guess.as_bytes()).to_vec();
        assert!(!stored.contains(&digest));
    }
}
