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
        // What `IdempotencyKey::parse` accepts.
        let idempotency_key = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(255))
            .pattern(Some("^[!-~]+$"))
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
                        parameter.description =
                            Some("1 to 255 visible ASCII characters, unique per change".into());
                        parameter.schema = Some(idempotency_key.clone().into());
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
