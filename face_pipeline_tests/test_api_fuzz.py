"""Fuzz every operation of the API's OpenAPI schema with schemathesis: no input may cause a 5xx.

Bounded so the whole test stays under two minutes on two cores: at most MAX_EXAMPLES per operation and
generation mode (valid and invalid inputs), a fixed seed (derandomized, so a failure reproduces), and a
time budget after which the remaining examples are generated but not sent. The figures (requests, status
classes, failures) are printed and written to test-artifacts/fuzz-report.json.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from face_pipeline.api.app import create_app
from face_pipeline.services.library import Library
from face_pipeline_tests.test_api import group_faces, sqlite_library

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

MAX_EXAMPLES = 100
BUDGET_S = 80.0
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
BASE_URL = "http://127.0.0.1"  # the app admits loopback host names only


@pytest.fixture(scope="module")
def fuzzed_library(lfw_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    context = sqlite_library(tmp_path_factory, lfw_mini)
    group_faces(context)
    yield context
    context.close()


def test_no_request_makes_the_api_fail_with_a_5xx(fuzzed_library: Library):
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Ok
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    app = create_app(fuzzed_library.settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Host": "127.0.0.1"})
    started = time.monotonic()
    statuses: Counter[str] = Counter()
    per_operation: dict[str, int] = Counter()
    failures: list[str] = []
    skipped_for_time = 0
    without_negative: list[str] = []

    def run(operation: Any, mode: GenerationMode) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            nonlocal skipped_for_time
            if time.monotonic() - started > BUDGET_S:
                skipped_for_time += 1
                return
            response = case.call(base_url=BASE_URL)
            statuses[f"{response.status_code // 100}xx"] += 1
            per_operation[operation.label] += 1
            try:
                case.validate_response(response, checks=checks)
            except (Exception, BaseExceptionGroup) as exc:  # collect every failure, then fail once with all
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:600]}")

        try:
            fuzz()
        except Unsatisfiable:  # no invalid input exists for an operation without parameters or body
            assert mode is GenerationMode.NEGATIVE, operation.label
            without_negative.append(operation.label)

    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the app's own OpenAPI schema is invalid: {result}"
        operations.append(result.ok())
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(operation, mode)

    requests = sum(statuses.values())
    report = {
        "operations": len(operations),
        "requests": requests,
        "statuses": dict(statuses),
        "requests_per_operation": dict(per_operation),
        "failures": len(failures),
        "examples_not_sent_for_time": skipped_for_time,
        "operations_without_invalid_inputs": without_negative,
        "seconds": round(time.monotonic() - started, 1),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fuzz-report.json").write_text(json.dumps(report | {"failure_details": failures}, indent=2))
    print("fuzz:", json.dumps(report))
    assert not failures, "\n".join(failures[:20])
    assert statuses["5xx"] == 0
    assert requests >= 10 * len(operations)
