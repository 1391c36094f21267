"""Dagster resources: the pipeline's settings and services, built from FACE_* variables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import PrivateAttr

from face_pipeline.services.context import PipelineContext
from face_pipeline.settings import Settings, load_settings

# Ops that write the embedded vector store take this pool; dagster.yaml limits it to one at a time.
VECTOR_STORE_POOL = "face_vector_store"


class FacePipelineResource(dg.ConfigurableResource):
    """Settings come from the environment; fields set here (e.g. in tests) override them."""

    photos_dir: str | None = None
    data_dir: str | None = None
    database_url: str | None = None
    qdrant_url: str | None = None

    _context: PipelineContext | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        overrides = {k: v for k, v in self.model_dump().items() if v is not None}
        return load_settings(**overrides)

    def context(self) -> PipelineContext:
        if self._context is None:
            self._context = PipelineContext.from_settings(self.settings())
        return self._context

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[FacePipelineResource]:
        try:
            yield self
        finally:
            if self._context is not None:
                self._context.close()
                self._context = None
