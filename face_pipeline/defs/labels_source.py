"""face_labels: the users' decisions (names and "not this person"), an observed source asset.

Nothing in the pipeline produces labels; people do, through the CLI and the HTTP API. Observing them records
a data version (a fingerprint of every (face, person) label and rejection), so the UI marks the training
checkpoint and the prototypes stale when labels changed since they were built.

Who observes: `face_labels_observer`, a sensor the daemon ticks every 30 s, records an observation (with the
new data version) whenever the labels' fingerprint differs from the one it recorded last, so the UI shows
face_labels observed and its dependents stale soon after a label changes, from the CLI or the API, while the
everyday commands themselves import no Dagster. The retrain job observes too, before it trains.
"""

import warnings
from typing import Any

import dagster as dg

from face_pipeline.defs.jobs import LABELS_GROUP
from face_pipeline.defs.resources import DatabaseResource
from face_pipeline.services.label_growth import LabelCounts, count_labels, training_minimum

FACE_LABELS_KEY = dg.AssetKey("face_labels")
DATA_VERSION_TAG = "dagster/data_version"  # where Dagster keeps an observation's data version
OBSERVE_EVERY_SECONDS = 30


def _metadata(counts: LabelCounts) -> dict[str, Any]:
    min_people, min_faces = training_minimum()
    return {
        "labelled_faces": counts.labelled_faces,
        "rejections": counts.rejections,
        "people": counts.people,
        f"people_with_{min_faces}_faces": counts.trainable_people,
        "enough_to_train": counts.enough_to_train,
        "training_minimum": f"{min_people} people x {min_faces} faces",
    }


def observe_face_labels(context: dg.AssetExecutionContext, database: DatabaseResource) -> dg.ObserveResult:
    counts = count_labels(database.database())
    context.log.info(f"labels: {counts.labelled_faces} faces of {counts.people} people, {counts.rejections} rejections")
    return dg.ObserveResult(data_version=dg.DataVersion(counts.fingerprint), metadata=_metadata(counts))


@dg.sensor(
    name="face_labels_observer",
    minimum_interval_seconds=OBSERVE_EVERY_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records an observation of face_labels (its data version: the labels' fingerprint) whenever the "
    "users' labels changed since the last one, so the UI shows what is stale without a run.",
)
def face_labels_observer(
    context: dg.SensorEvaluationContext, database: DatabaseResource
) -> dg.SensorResult | dg.SkipReason:
    counts = count_labels(database.database())
    if counts.fingerprint == context.cursor or counts.fingerprint == _last_observed_version(context.instance):
        return dg.SkipReason(f"labels unchanged ({counts.labelled_faces} faces of {counts.people} people)")
    observation = dg.AssetObservation(
        asset_key=FACE_LABELS_KEY, metadata=_metadata(counts), tags={DATA_VERSION_TAG: counts.fingerprint}
    )
    return dg.SensorResult(asset_events=[observation], cursor=counts.fingerprint)


def _last_observed_version(instance: dg.DagsterInstance) -> str | None:
    """The data version of face_labels' newest observation (the sensor's, or a retrain run's)."""
    records = instance.fetch_observations(FACE_LABELS_KEY, limit=1).records
    if not records or records[0].asset_observation is None:
        return None
    return records[0].asset_observation.tags.get(DATA_VERSION_TAG)


with warnings.catch_warnings():
    # Observable source assets are "beta" in Dagster 1.13; the warning would print on every CLI command.
    warnings.simplefilter("ignore", category=dg.BetaWarning)
    face_labels = dg.observable_source_asset(
        name="face_labels",
        group_name=LABELS_GROUP,
        description="The users' names and 'not this person' decisions; the data version changes with any of them.",
    )(observe_face_labels)
