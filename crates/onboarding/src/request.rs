//! The rules a signup must meet. Pure: no I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tenancy::plans::Plan;
use unicode_normalization::UnicodeNormalization;

pub const MAX_EMAIL_LEN: usize = 254;
pub const MAX_COMPANY_CHARS: usize = 100;
pub const MAX_PAYMENT_METHOD_LEN: usize = 255;

/// A signup as sent.
#[derive(Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    pub email: String,
    pub company: String,
    /// `free`, `starter`, `pro` or `enterprise`.
    pub plan: String,
    /// A payment method id at the payment provider (`pm_...`); required for paid plans.
    pub payment_method: Option<String>,
}

/// A signup that passed every rule, normalised.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ValidSignup {
    pub email: String,
    pub company: String,
    pub plan_code: String,
    pub payment_method: Option<String>,
    pub paid: bool,
}

impl ValidSignup {
    /// Identifies the request's content, to tell an Idempotency-Key replay from a reuse.
    pub fn digest(&self) -> Vec<u8> {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(canonical).to_vec()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidSignup {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> InvalidSignup {
    InvalidSignup {
        code,
        message: message.into(),
    }
}

pub fn validate(request: SignupRequest, plans: &[Plan]) -> Result<ValidSignup, InvalidSignup> {
    let email = normalise_email(&request.email)
        .ok_or_else(|| invalid("invalid_email", "email is not a valid address"))?;
    let company = normalise_company(&request.company).ok_or_else(|| {
        invalid(
            "invalid_company",
            format!("company must be 1 to {MAX_COMPANY_CHARS} printable characters"),
        )
    })?;
    let plan = plans
        .iter()
        .find(|plan| plan.code == request.plan)
        .ok_or_else(|| {
            invalid(
                "unknown_plan",
                format!("there is no plan {:?}", request.plan),
            )
        })?;
    let paid = plan.base_fee > 0;
    let payment_method = match request.payment_method.map(|pm| pm.trim().to_owned()) {
        Some(pm) if is_payment_method_id(&pm) => Some(pm),
        Some(_) => {
            return Err(invalid(
                "invalid_payment_method",
                "payment_method must be a pm_... id",
            ));
        }
        None if paid => {
            return Err(invalid(
                "payment_method_required",
                "paid plans need a payment_method",
            ));
        }
        None => None,
    };
    Ok(ValidSignup {
        email,
        company,
        plan_code: plan.code.clone(),
        payment_method,
        paid,
    })
}

fn is_payment_method_id(id: &str) -> bool {
    id.len() <= MAX_PAYMENT_METHOD_LEN
        && id.strip_prefix("pm_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// Trims, checks the shape (one `@`, a plausible local part, a dotted domain of
/// letters, digits and hyphens) and lower-cases the domain.
fn normalise_email(email: &str) -> Option<String> {
    let email = email.trim();
    if email.len() > MAX_EMAIL_LEN {
        return None;
    }
    let (local, domain) = email.split_once('@')?;
    let local_ok = (1..=64).contains(&local.len())
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
    (local_ok && domain_ok).then(|| format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// Trims, collapses runs of white space into one space, and refuses control and
/// text-direction characters (which can make a name display as something else).
/// NFC-normalises (so that composed and decomposed spellings of one name are the same
/// name, for the one-live-signup rule too), collapses whitespace, and refuses control
/// and format characters, which can reorder or hide text where the name is shown.
fn normalise_company(company: &str) -> Option<String> {
    let composed: String = company.nfc().collect();
    let collapsed = composed.split_whitespace().collect::<Vec<_>>().join(" ");
    let forbidden = |c: char| c.is_control() || is_format_character(c);
    let count = collapsed.chars().count();
    ((1..=MAX_COMPANY_CHARS).contains(&count) && !collapsed.chars().any(forbidden))
        .then_some(collapsed)
}

/// Unicode's format characters (general category Cf, Unicode 15): bidi controls and
/// isolates, zero-width characters, invisible operators, the soft hyphen, tags.
fn is_format_character(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

// Email and company are personal data: kept out of logs and panics.
impl std::fmt::Debug for SignupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignupRequest")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ValidSignup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidSignup")
            .field("plan_code", &self.plan_code)
            .field("paid", &self.paid)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use saas_core::Currency;

    use super::*;

    #[test]
    fn composed_and_decomposed_names_are_one_name_and_format_characters_are_refused() {
        let company = |name: &str| {
            validate(
                SignupRequest {
                    email: "a@example.com".into(),
                    company: name.into(),
                    plan: "free".into(),
                    payment_method: None,
                },
                &plans(),
            )
            .map(|valid| valid.company)
        };
        assert_eq!(
            company("Caf\u{e9} Noir").unwrap(),
            company("Cafe\u{301} Noir").unwrap()
        );
        for hidden in [
            "Acme\u{61C}Corp",
            "Acme\u{2061}Corp",
            "Ac\u{AD}me",
            "Acme\u{E0041}",
            "\u{202E}emcA",
            "Acme\u{2068}Corp",
        ] {
            let refused = company(hidden).unwrap_err();
            assert_eq!(refused.code, "invalid_company", "{hidden:?}");
        }
    }

    #[test]
    fn debug_output_holds_no_personal_data() {
        let request = SignupRequest {
            email: "jane@example.com".into(),
            company: "Jane's Bakery".into(),
            plan: "pro".into(),
            payment_method: Some("pm_secret_card".into()),
        };
        let valid = ValidSignup {
            email: request.email.clone(),
            company: request.company.clone(),
            plan_code: "pro".into(),
            payment_method: request.payment_method.clone(),
            paid: true,
        };
        let printed = format!("{request:?} {valid:?} {request:#?}");
        for private in ["jane@example.com", "Bakery", "pm_secret_card"] {
            assert!(!printed.contains(private), "{private} in {printed}");
        }
        assert!(printed.contains("pro"));
    }

    fn plans() -> Vec<Plan> {
        [("free", 0), ("pro", 19_900)]
            .into_iter()
            .map(|(code, base_fee)| Plan {
                code: code.into(),
                name: code.into(),
                currency: Currency::new("usd").unwrap(),
                base_fee,
                rank: 0,
                metrics: BTreeMap::new(),
            })
            .collect()
    }

    fn request(email: &str, company: &str, plan: &str, pm: Option<&str>) -> SignupRequest {
        SignupRequest {
            email: email.into(),
            company: company.into(),
            plan: plan.into(),
            payment_method: pm.map(Into::into),
        }
    }

    fn code(r: SignupRequest) -> &'static str {
        validate(r, &plans()).unwrap_err().code
    }

    #[test]
    fn good_signups_are_normalised() {
        let valid = validate(
            request(
                "  Ada.L+x@Example.COM ",
                "  Acme \t  Widgets  ",
                "pro",
                Some("pm_card_visa"),
            ),
            &plans(),
        )
        .unwrap();
        assert_eq!(valid.email, "Ada.L+x@example.com");
        assert_eq!(valid.company, "Acme Widgets");
        assert!(valid.paid);
        let free = validate(request("a@b.io", "Ünïcödé GmbH", "free", None), &plans()).unwrap();
        assert!(!free.paid);
        assert_eq!(free.payment_method, None);
    }

    #[test]
    fn bad_signups_get_stable_codes() {
        for email in [
            "",
            "no-at",
            "a@b",
            "a@@b.io",
            ".a@b.io",
            "a..b@c.io",
            "a b@c.io",
            "a@-b.io",
            "a@b.i1",
            &format!("{}@b.io", "x".repeat(65)),
        ] {
            assert_eq!(
                code(request(email, "Acme", "free", None)),
                "invalid_email",
                "{email:?}"
            );
        }
        for company in ["", "   ", "bell\u{7}", "rtl\u{202E}txet", &"x".repeat(101)] {
            assert_eq!(
                code(request("a@b.io", company, "free", None)),
                "invalid_company",
                "{company:?}"
            );
        }
        assert_eq!(
            code(request("a@b.io", "Acme", "platinum", None)),
            "unknown_plan"
        );
        assert_eq!(
            code(request("a@b.io", "Acme", "pro", None)),
            "payment_method_required"
        );
        for pm in [
            "card",
            "pm_",
            "pm_x y",
            "tok_visa",
            &format!("pm_{}", "x".repeat(300)),
        ] {
            assert_eq!(
                code(request("a@b.io", "Acme", "pro", Some(pm))),
                "invalid_payment_method",
                "{pm:?}"
            );
        }
    }

    #[test]
    fn the_digest_tells_different_requests_apart() {
        let a = validate(
            request("a@b.io", "Acme", "pro", Some("pm_card_visa")),
            &plans(),
        )
        .unwrap();
        let b = validate(
            request("a@b.io", "Acme  ", "pro", Some("pm_card_visa")),
            &plans(),
        )
        .unwrap();
        let c = validate(request("a@b.io", "Acme", "free", None), &plans()).unwrap();
        assert_eq!(
            a.digest(),
            b.digest(),
            "normalised forms are the same request"
        );
        assert_ne!(a.digest(), c.digest());
    }
}
