"""Vector store back ends: the embedded Qdrant engine (default) and qdrant-client (server or local mode).

Import them from here; ``face_pipeline.storage.vectors.open_vector_store`` picks one from settings values.
"""

from typing import TYPE_CHECKING, Any

from face_pipeline.storage.vector_backends.edge import EdgeVectorStore

if TYPE_CHECKING:
    from face_pipeline.storage.vector_backends.qdrant_remote import QdrantClientVectorStore

__all__ = ["EdgeVectorStore", "QdrantClientVectorStore"]


def __getattr__(name: str) -> Any:
    # qdrant-client costs ~0.6 s and ~70 MB to import: only a server or local-mode store pays for it.
    if name == "QdrantClientVectorStore":
        from face_pipeline.storage.vector_backends.qdrant_remote import QdrantClientVectorStore

        return QdrantClientVectorStore
    raise AttributeError(name)
