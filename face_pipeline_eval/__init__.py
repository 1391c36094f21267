"""Evaluation of face_pipeline, not part of it: `faces evaluate` (a folder-per-person photo set replayed as a
growing library with a simulated user, every stage scored), the baselines it compares with (the seed's plain
HDBSCAN, Immich's rule), clustering figures, threshold choice and seeded synthetic libraries for tests and
benchmarks.

Installed with the `eval` extra (`pip install -e ".[eval]"`, which brings the `hdbscan` package for the plain
HDBSCAN baseline). It imports face_pipeline freely; face_pipeline never imports it: the `faces evaluate`
command reaches the CLI through the `face_pipeline.cli` entry point group (`face_pipeline_eval.cli:register`).

    evaluation.py      the evaluation run: phases, rounds, optional training, the report
    dataset.py         the photo set, its two arrival phases and anonymous library names
    simulated_user.py  the user who names the largest unknown clusters
    scoring.py         one stage's library state against the truth, and the baselines' figures
    main_face.py       a photo's main face (its largest): the one the folder names
    table.py           the report's markdown table
    baselines.py       plain HDBSCAN (the seed) and Immich's facial-recognition rule
    cluster_metrics.py BCubed and pair-counting F, group counts, strangers in clusters
    thresholds.py      a match threshold from labelled pairs and its error rates
    synthetic.py       seeded synthetic face embeddings with a photo library's statistics
    cli.py             registers `faces evaluate`
"""
