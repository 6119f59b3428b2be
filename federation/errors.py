"""The error vocabulary of the federation library.

Every error the library raises on purpose derives from :class:`FederationError`, so
callers (the control plane's API, the silo agent) can map them to clear messages.
"""


class FederationError(Exception):
    """Base class of every deliberate error in the federation library."""


class InvalidUpdateError(FederationError):
    """A model update (or its serialized bytes) does not match what was expected."""


class UpdateTooLargeError(InvalidUpdateError):
    """A serialized update exceeds the configured size cap."""


class NonFiniteValueError(InvalidUpdateError):
    """A tensor holds NaN or infinity."""


class ConfigurationError(FederationError):
    """A strategy, model, data schema or partitioner was configured with bad values."""


class DataSchemaError(FederationError):
    """Local data does not match its declared schema."""


class SecureAggregationError(FederationError):
    """A secure-aggregation round cannot go on safely: bad input, a broken rule, too few sites."""


class ProtocolError(FederationError):
    """A message between the control plane and an agent does not follow the protocol."""


class BaseModelError(FederationError):
    """A site's copy of a study's base model is missing or differs from the pinned files."""
