"""The Message Batches API as batchops uses it, through the official SDK (see `client`)."""

from batchops.remote.client import (
    RESULT_RETENTION,
    BatchesClient,
    CreateOutcomeUnknown,
    NotFound,
    RemoteBatch,
    encode_request,
)

__all__ = [
    "RESULT_RETENTION",
    "BatchesClient",
    "CreateOutcomeUnknown",
    "NotFound",
    "RemoteBatch",
    "encode_request",
]
