"""Exception types a user of the API can catch. The CLI turns each into one line and exit code 2."""


class KernelgenError(Exception):
    """Base class of every error kernelgen raises on purpose."""


class SpecError(KernelgenError, ValueError):
    """A spec.toml (or an OpSpec built in code) is malformed: names the file, the field and the expectation."""


class OpNotFound(KernelgenError, KeyError):
    """No op of that name in any library folder."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else "op not found"


class BackendError(KernelgenError, ValueError):
    """Unknown backend name, or the backend is not available on this machine."""
