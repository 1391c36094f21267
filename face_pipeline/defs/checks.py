"""Asset checks: the pipeline's promises, checked after the step that could break them.

- regenerated_embeddings (the last writer of the active space's vectors): vectors_match_sql (blocking),
  promoted_space_beats_raw.
- supervised_assignments and unknown_clusters: one_cluster_per_face, user_labels_kept (both blocking).

Blocking checks stop the run before downstream assets read a bad state; a failing check names the
offending face ids. The queries live in services/integrity.py.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from face_pipeline.defs.cluster_assets import supervised_assignments, unknown_clusters
from face_pipeline.defs.resources import VECTOR_STORE_POOL, DatabaseResource, VectorStoreResource
from face_pipeline.defs.training_assets import regenerated_embeddings
from face_pipeline.domain.naming import PERSON_PREFIX
from face_pipeline.services.integrity import (
    Finding,
    cluster_id_problems,
    promotion_evidence,
    user_label_overrides,
    vector_store_sync,
)

ONE_CLUSTER_PER_FACE = "one_cluster_per_face"
USER_LABELS_KEPT = "user_labels_kept"
VECTORS_MATCH_SQL = "vectors_match_sql"
PROMOTED_SPACE_BEATS_RAW = "promoted_space_beats_raw"


def check_result(finding: Finding, asset: dg.AssetKey | None = None, name: str | None = None) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {**finding.counts, **finding.facts}
    for problem, ids in finding.examples.items():
        metadata[f"{problem}_ids"] = dg.MetadataValue.text(", ".join(map(str, ids)))
    return dg.AssetCheckResult(
        passed=finding.passed, asset_key=asset, check_name=name, description=finding.description, metadata=metadata
    )


def assignment_checks(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """After an automatic step that names or groups faces: cluster ids stay consistent and no user decision
    was overridden. One op for both (one process instead of two under the multiprocess executor)."""
    key = asset.key

    @dg.multi_asset_check(
        name=f"{key.to_python_identifier()}_assignment_checks",
        specs=[
            dg.AssetCheckSpec(
                ONE_CLUSTER_PER_FACE,
                asset=key,
                blocking=True,
                description=f"Every face has exactly one cluster id: {PERSON_PREFIX}{{uuid}} if and only if a person "
                "is set.",
            ),
            dg.AssetCheckSpec(
                USER_LABELS_KEPT,
                asset=key,
                blocking=True,
                description="No automatic run changed a face a user confirmed (audit events after the user's).",
            ),
        ],
    )
    def _checks(database: DatabaseResource) -> Iterator[dg.AssetCheckResult]:
        db = database.database()
        yield check_result(cluster_id_problems(db), key, ONE_CLUSTER_PER_FACE)
        yield check_result(user_label_overrides(db), key, USER_LABELS_KEPT)

    return _checks


@dg.asset_check(
    asset=regenerated_embeddings,
    name=VECTORS_MATCH_SQL,
    blocking=True,
    pool=VECTOR_STORE_POOL,  # it opens the embedded store
    description="The active embedding space's collection holds exactly one point per face row in SQL.",
)
def vectors_match_sql(database: DatabaseResource, vector_store: VectorStoreResource) -> dg.AssetCheckResult:
    with vector_store.open() as vectors:
        return check_result(vector_store_sync(database.database(), vectors))


@dg.asset_check(
    asset=regenerated_embeddings,
    name=PROMOTED_SPACE_BEATS_RAW,
    description="The active trained projection's promotion-gate figures show it beating the raw space on held-out "
    "people (passes when the raw space is active).",
)
def promoted_space_beats_raw(database: DatabaseResource) -> dg.AssetCheckResult:
    return check_result(promotion_evidence(database.database()))


ALL_CHECKS = [
    vectors_match_sql,
    promoted_space_beats_raw,
    assignment_checks(supervised_assignments),
    assignment_checks(unknown_clusters),
]
