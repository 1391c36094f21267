"""Move a library to another face model (`faces reembed --model buffalo_s`) without losing users' decisions.

Three steps, each safe to interrupt:

1. Staging (`stage_library`): every photo of the library (status done) is detected and embedded again by the
   new model through detection's worker pool (`processed_photos`), into tables of its own
   (reembed_staged_images: the resume point; reembed_staged_faces: boxes, landmarks, scores), a staging
   vector collection keyed by staged-face id, and a staging thumbnail folder. One transaction per batch, so
   Ctrl-C loses at most the batch in flight and a rerun resumes. Nothing live is touched: the old space keeps
   serving backfill, clustering and labelling. A photo whose content changed since it was staged is staged
   again; photos that arrive meanwhile are staged before the switch.
2. The switch (`reembed_library`, once everything is staged), one SQL transaction: each photo's staged faces
   are matched to its faces by box overlap (`match_faces`). A matched face keeps its row and id, so its name,
   user_confirmed flag, "not this person" rejections, merges and audit history carry over; it takes the new
   box, landmarks, score, quality and space. Automatic assignments are cleared to singletons (the next
   cluster-dual recomputes them in the new space). A staged face without a match becomes a new face; a face
   without one is removed with an audit event, and those carrying a user decision are listed (report, CSV).
   Vectors go into the new space's collection under the final face ids before the commit; the new raw space
   becomes active and the old one, with the projections trained on it, retired in the same transaction.
3. Clean-up (`finish_switched_runs`): thumbnails moved into place, the CSV written, staging rows, collection
   and folder removed, the retired spaces' collections dropped. A crash after the commit leaves the run
   marked switched, and the next `faces reembed` finishes it first.

Modules: records.py (the run, its report), moves.py (which model; the use cases), staging.py (step 1),
switch.py (step 2), cleanup.py (step 3).
"""

from face_pipeline.services.reembed.moves import (
    MODELS,
    check_reembed,
    finish_switched_runs,
    parse_model,
    reembed_library,
    stage_library,
    target_space_name,
)
from face_pipeline.services.reembed.records import LostDecision, ReembedReport, SameModel

__all__ = [
    "MODELS",
    "LostDecision",
    "ReembedReport",
    "SameModel",
    "check_reembed",
    "finish_switched_runs",
    "parse_model",
    "reembed_library",
    "stage_library",
    "target_space_name",
]
