"""The errors graphops raises. Messages are one line and name the node or tensor at fault."""


class GraphOpsError(Exception):
    """Base of every error raised by graphops."""


class ModelRejected(GraphOpsError):
    """The model is not one we can prune (a user error: retrying will not help)."""


class PlanError(ModelRejected):
    """A pruning plan does not fit the model it is applied to."""
