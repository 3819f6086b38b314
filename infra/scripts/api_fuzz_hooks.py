"""Schemathesis hooks for `infra/scripts/api-fuzz`.

A client sends a new `Idempotency-Key` with every change it means to make; sent again
with another body, a key is refused (422 `idempotency_key_reused`), as the document
says. A schema cannot say "unique", and the generator draws short keys that repeat, so
each request that carries a well-formed key gets one of its own here. Malformed keys
(negative cases) are sent as drawn.
"""

import re
import uuid

import schemathesis

WELL_FORMED = re.compile(r"^[!-~]{1,200}$")


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str):
            if WELL_FORMED.match(headers[name]):
                headers[name] = f"fuzz-{uuid.uuid4()}"
