"""Wire contracts of the mesh: the context headers, the error body, one module per service.

Pure pydantic v2, no I/O. Service modules are imported by name (``schemas.cache``).
"""

from schemas.context import Context
from schemas.errors import ErrorBody, ErrorCode, ErrorReply

__all__ = ["Context", "ErrorBody", "ErrorCode", "ErrorReply"]
