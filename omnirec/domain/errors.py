"""Domain exceptions; each knows the gRPC status it maps to, so one interceptor can translate them.

Status codes are named by string so this module stays free of grpc imports.
"""


class OmnirecError(Exception):
    """Base of every error omnirec raises on purpose."""

    status_code: str = "INTERNAL"

    def grpc_status_code(self) -> str:
        return self.status_code


class InvalidArgument(OmnirecError, ValueError):
    """The caller sent something wrong; the message names the offending field."""

    status_code = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.description = message
        super().__init__(f"{field}: {message}")


class DataError(InvalidArgument):
    """A malformed row in an input file: names the file, the line (1-based) and the field."""

    def __init__(self, path: str, line: int, field: str, message: str) -> None:
        self.path = path
        self.line = line
        OmnirecError.__init__(self, f"{path}:{line}: field {field!r}: {message}")
        self.field = field
        self.description = message


class NotFound(OmnirecError, KeyError):
    status_code = "NOT_FOUND"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class PermissionDenied(OmnirecError):
    status_code = "PERMISSION_DENIED"


class Unauthenticated(OmnirecError):
    status_code = "UNAUTHENTICATED"


class FailedPrecondition(OmnirecError):
    status_code = "FAILED_PRECONDITION"


class Unavailable(OmnirecError):
    """A dependency (Redis, a model bundle) cannot answer; callers may degrade or retry."""

    status_code = "UNAVAILABLE"


class AlreadyExists(OmnirecError):
    """An idempotency key (a send id, a request id) was reused for a different request."""

    status_code = "ALREADY_EXISTS"
