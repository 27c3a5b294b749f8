"""The service's typed answers for batches and pages: defined in :mod:`serve_app.api.answers`,
beside the request bodies, so that the Python client reads them without importing the service."""

from __future__ import annotations

from serve_app.api.answers import BatchAccepted, BatchAnswer, ExecutionPage

__all__ = ["BatchAccepted", "BatchAnswer", "ExecutionPage"]
