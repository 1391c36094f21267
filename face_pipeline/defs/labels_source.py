"""face_labels: the users' decisions (names and "not this person"), an observed source asset.

Nothing in the pipeline produces labels; people do, through the CLI and the HTTP API. Observing them records
a data version (a fingerprint of every (face, person) label and rejection), so the UI marks the training
checkpoint and the prototypes stale when labels changed since they were built.
"""

import warnings

import dagster as dg

from face_pipeline.defs.jobs import LABELS_GROUP
from face_pipeline.defs.resources import DatabaseResource
from face_pipeline.services.label_growth import count_labels, training_minimum


def observe_face_labels(context: dg.AssetExecutionContext, database: DatabaseResource) -> dg.ObserveResult:
    counts = count_labels(database.database())
    min_people, min_faces = training_minimum()
    context.log.info(f"labels: {counts.labelled_faces} faces of {counts.people} people, {counts.rejections} rejections")
    return dg.ObserveResult(
        data_version=dg.DataVersion(counts.fingerprint),
        metadata={
            "labelled_faces": counts.labelled_faces,
            "rejections": counts.rejections,
            "people": counts.people,
            f"people_with_{min_faces}_faces": counts.trainable_people,
            "enough_to_train": counts.enough_to_train,
            "training_minimum": f"{min_people} people x {min_faces} faces",
        },
    )


with warnings.catch_warnings():
    # Observable source assets are "beta" in Dagster 1.13; the warning would print on every CLI command.
    warnings.simplefilter("ignore", category=dg.BetaWarning)
    face_labels = dg.observable_source_asset(
        name="face_labels",
        group_name=LABELS_GROUP,
        description="The users' names and 'not this person' decisions; the data version changes with any of them.",
    )(observe_face_labels)
