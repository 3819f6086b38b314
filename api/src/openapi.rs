//! The OpenAPI 3.1 description, generated from the handlers and body types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, Required, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    carts, catalogue, events, mandates, merchants, offers, ops, orders, reconciliation, runs,
};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "shopagent", description = "Backend for agent-powered shopping. Every POST takes an `Idempotency-Key`; GETs return the aggregate version as `ETag`, which writes may send back as `If-Match`. Errors are `application/problem+json` with a stable `code`."),
    paths(
        mandates::create, mandates::read, mandates::revoke, mandates::approve, mandates::deny,
        carts::create, carts::read, carts::add_line, carts::change_quantity, carts::remove_line,
        carts::set_address, carts::record_quote, carts::fetch_quote, carts::checkout, events::export,
        runs::start, runs::read, runs::ledger, runs::events, runs::record_action, runs::record_decision,
        runs::request_approval, runs::grant, runs::deny, runs::complete, runs::fail, runs::cancel,
        orders::list, orders::read, orders::cancel, orders::request_return, orders::read_payment,
        merchants::register, merchants::read, merchants::update_profile, merchants::report_health, merchants::set_headless,
        ops::list, ops::pause, ops::resume, ops::rebuild, reconciliation::daily, reconciliation::exceptions,
        offers::extract_page, offers::search, offers::compare, offers::run_search, offers::run_compare,
        catalogue::sync, catalogue::search,
    ),
    components(schemas(crate::problem::Problem)),
    modifiers(&BearerAuth),
    tags((name = "mandates"), (name = "carts"), (name = "runs"), (name = "orders"), (name = "payments"), (name = "merchants"), (name = "offers"), (name = "finance"), (name = "ops")),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // Every operation behind the bearer token can answer 401 (no token, or one that
        // does not verify) before its handler runs: said once, here, for all of them.
        let unauthorized = ResponseBuilder::new()
            .description("No bearer token, or one that does not verify")
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        // What the idempotency layer accepts: visible ASCII, with room left for the
        // suffixes it derives per command.
        let idempotency_key = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(crate::idempotency::MAX_KEY))
            .pattern(Some("^[!-~]+$"))
            .build();
        // What `routes::if_match` accepts: an ETag from a GET, a version number.
        let if_match = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^(W/)?\"[0-9]{1,18}\"$"))
            .examples(["\"3\""])
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let parameters = operation.parameters.iter_mut().flatten();
                for parameter in parameters.filter_map(|p| match p {
                    RefOr::T(parameter) => Some(parameter),
                    RefOr::Ref(_) => None,
                }) {
                    if parameter.name == "Idempotency-Key" {
                        parameter.required = Required::True;
                        parameter.description = Some(format!(
                            "1 to {} visible ASCII characters, unique per change",
                            crate::idempotency::MAX_KEY
                        ));
                        parameter.schema = Some(idempotency_key.clone().into());
                    }
                    if parameter.name == "If-Match" {
                        parameter.description = Some(
                            "The `ETag` of the GET the change is based on: refused with 412 \
                             when the resource has changed since"
                                .into(),
                        );
                        parameter.schema = Some(if_match.clone().into());
                    }
                }
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    operation
                        .responses
                        .responses
                        .entry("401".to_owned())
                        .or_insert_with(|| unauthorized.clone().into());
                }
            }
        }
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Schemas of the fields whose rules their Rust type does not carry, for the body and
/// query types to name with `schema_with`: the document then allows what the handlers
/// accept and no more, and a client can check a request before sending it. Rules that
/// tie fields together (a merchant's checkout paths and their endpoints, a mandate's
/// expiry in the future) are in the descriptions, and listed for the API fuzzer in
/// `infra/schemathesis.toml`.
pub mod fields {
    use shopagent_domain::ids::{Category, MerchantId, OfferId};
    use shopagent_domain::money::Currency;
    use utoipa::openapi::schema::{Array, ArrayBuilder, Object, ObjectBuilder, Type};

    fn string(min: usize, max: usize, pattern: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(max))
            .pattern(Some(pattern))
    }

    /// A string that is one of `values`.
    pub fn one_of<'a>(values: impl IntoIterator<Item = &'a str>) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(values))
    }

    /// An ISO 4217 code of a currency in circulation.
    pub fn currency() -> Object {
        one_of(
            Currency::circulating()
                .iter()
                .map(|currency| currency.code()),
        )
        .examples(["USD"])
        .build()
    }

    /// Lowercase ASCII letters, digits and `-_.:/` (`shopagent_domain::ids`).
    const SLUG: &str = "^[a-z0-9._:/-]+$";

    pub fn merchant_id() -> Object {
        string(1, MerchantId::MAX_LEN, SLUG)
            .examples(["acme-outdoor"])
            .build()
    }

    pub fn offer_id() -> Object {
        string(1, OfferId::MAX_LEN, SLUG)
            .examples(["sku:tent-2p"])
            .build()
    }

    pub fn category() -> Object {
        string(1, Category::MAX_LEN, SLUG)
            .examples(["outdoor/tents"])
            .build()
    }

    pub fn merchant_ids() -> Array {
        ArrayBuilder::new().items(merchant_id()).build()
    }

    pub fn categories() -> Array {
        ArrayBuilder::new().items(category()).build()
    }

    /// Up to 50 alphanumeric ids of at most 64 characters.
    pub fn card_acceptor_ids() -> Array {
        ArrayBuilder::new()
            .items(string(1, 64, "^[A-Za-z0-9]+$"))
            .max_items(Some(50))
            .build()
    }

    /// SHA-256, as 64 lowercase hexadecimal digits.
    pub fn sha256_hex() -> Object {
        string(64, 64, "^[0-9a-f]{64}$").build()
    }

    /// An http or https URL.
    pub fn http_url() -> Object {
        string(8, 2048, "^https?://[^\\s]+$")
            .format(Some(utoipa::openapi::SchemaFormat::Custom("uri".into())))
            .build()
    }

    /// ISO 3166-1 alpha-2.
    pub fn country() -> Object {
        string(2, 2, "^[A-Z]{2}$").examples(["US"]).build()
    }

    /// No control characters; at least one that is not white space.
    const LINE: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$";

    /// A required address field: 1 to 200 characters on one line.
    pub fn address_line() -> Object {
        string(1, 200, LINE).build()
    }

    /// A line's title: 1 to 300 characters on one line.
    pub fn title() -> Object {
        string(1, shopagent_domain::cart::MAX_TITLE, LINE).build()
    }

    /// An optional address field: up to 200 characters on one line.
    pub fn optional_address_line() -> Object {
        string(0, 200, "^[^\\u0000-\\u001F\\u007F-\\u009F]*$").build()
    }

    /// Free text (`shopagent_domain::text`): no control characters but line breaks and
    /// tabs; at least one character that is not white space.
    const TEXT: &str = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$";

    macro_rules! text {
        ($($(#[$doc:meta])* $name:ident: $max:expr),* $(,)?) => {$(
            $(#[$doc])*
            pub fn $name() -> Object {
                string(1, $max, TEXT).build()
            }
        )*};
    }

    text!(
        text_200: 200,
        text_500: 500,
        text_2000: 2000,
        prompt: shopagent_domain::run::MAX_PROMPT,
    );
}
