"""Wire contracts of the mesh: the context headers, the error body, one module per service.

Pure pydantic v2, no I/O. Service modules are imported by name (``schemas.cache``).
"""

from schemas.context import Context
from schemas.errors import HTTP_STATUS, ErrorBody, ErrorCode, ErrorReply

__all__ = ["HTTP_STATUS", "Context", "ErrorBody", "ErrorCode", "ErrorReply"]
