"""The context headers every envelope carries in its ``h`` map.

See docs/architecture.md, "Envelope".
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Ids are opaque strings; the bound keeps a hostile header from bloating logs and keys.
_ID = r"^[A-Za-z0-9._:@/+=-]{1,128}$"
# Tenant ids become parts of keys (`t:{tenant}:...`), so they never contain ":".
_TENANT = r"^[A-Za-z0-9._@+=-]{1,128}$"


class Context(BaseModel):
    """Who is asking, on behalf of which tenant, as part of which user action, until when.

    The bridge builds it from a verified JWT; workers pass it (as :meth:`child`) to every
    call they make, so correlation id, deadline and trace context cross every hop.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    tenant: str | None = Field(default=None, pattern=_TENANT)
    user: str | None = Field(default=None, max_length=256)
    roles: tuple[str, ...] = Field(default=(), max_length=64)
    correlation_id: str | None = Field(default=None, pattern=_ID)
    request_id: str | None = Field(default=None, pattern=_ID)
    deadline: int | None = Field(default=None, ge=0, description="Unix epoch milliseconds")
    traceparent: str | None = Field(default=None, max_length=128)
    tracestate: str | None = Field(default=None, max_length=512)
    stream: str | None = Field(
        default=None, description='"chunk" or "end" on streamed reply envelopes'
    )

    def headers(self) -> dict[str, object]:
        """The ``h`` map: set fields only, so an envelope stays small."""
        return self.model_dump(exclude_none=True, exclude_defaults=True)
