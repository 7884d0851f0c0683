"""Errors a user can act on. The CLI prints them without a traceback and exits with code 2."""


class PriorswapError(Exception):
    """Base class: bad input or a state the user can fix; the message says what to do."""


class RegistryError(PriorswapError):
    """A registry file is malformed, or an id is not in it."""


class IncompatiblePair(PriorswapError):
    """The model and the prior cannot be bridged by any known adapter."""


class WeightsUnavailable(PriorswapError):
    """Weights are not cached (offline) or only pickled weights exist without an opt-in."""


class GuidanceError(PriorswapError, ValueError):
    """A guidance rule cannot be built as asked (unknown method, weights that are not finite, bad rescale)."""


class TaskInputError(PriorswapError, ValueError):
    """Task inputs that do not validate (`Pair.sample`, `Pair.inputs`); the message names each field, the value
    given and what is wrong. The pydantic ValidationError is its `__cause__`."""


class PluginError(PriorswapError):
    """A plugin is missing, or failed to import or register."""


class RegistryMismatchWarning(UserWarning):
    """A registry entry disagrees with the weights it loaded (their scheduler config)."""


class PluginRegistryWarning(UserWarning):
    """A registry file a plugin ships is broken: it (or its broken entries) is skipped, the rest works."""


class MetricUnavailable(Exception):
    """A metric cannot be computed here (a package does not import, weights are not cached); `reason` says
    why. Not a PriorswapError: the evaluation goes on and reports the metric as skipped."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
