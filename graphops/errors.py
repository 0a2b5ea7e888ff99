"""The errors graphops raises. Messages are one line and name the node or tensor at fault."""


class GraphOpsError(Exception):
    """Base of every error raised by graphops."""


class ModelRejected(GraphOpsError):
    """The model is not one we can prune (a user error: retrying will not help)."""


class PlanError(ModelRejected):
    """A pruning plan does not fit the model it is applied to."""


class UnsupportedPattern(GraphOpsError):
    """An op handler declines the pattern it meets: the channels it touches freeze, with this reason.

    The one exception a handler may raise on purpose. Anything else a handler raises is a bug in
    onnxprune (see :class:`AnalysisBug`), never a reason to freeze a group quietly.
    """


class AnalysisBug(GraphOpsError):
    """An op handler failed with something other than :class:`UnsupportedPattern`: our fault, not the
    model's (an internal error for the job, never a frozen group)."""


class DuplicateRegistration(GraphOpsError):
    """Two entries claim one name in a registry (an op handler, a round-trip op): a packaging bug of
    ours or of a plugin's. Refused at registration; silently keeping one would change results."""
