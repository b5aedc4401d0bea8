"""Property-based fuzzing of the run API against one real exporter process, over the real Unix socket and TCP.

Whatever a client sends (random JSON, wrong types, invalid and reserved label names, oversized values and
bodies, unicode and lone surrogates, quotes, backslashes and newlines, malformed run ids), it gets an expected
4xx/2xx status with a JSON body, the exporter lives on, and only valid runs reach the store and ``/metrics``,
whose exposition stays valid for ``promtool``. The oracle for "valid" is the project's own validator
(exporter/runs.py), checked independently by what comes back out of SQLite, ``/metrics`` and the API.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from experiment_impact_tracker.client import ExporterClient, UnixHTTPConnection
from impact_exporter.api import MAX_BODY_BYTES, RESERVED_LABELS, RUN_ID, parse_start_request, validate_run_id
from impact_exporter.run import InvalidRequest, StartRequest
from tests.fakes.powercap import FakePowercap
from tests.servers import ExporterProcess, require_binary

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token-0123456789"
TRICKY_CHARACTERS = [
    '"',
    "\\",
    "\n",
    "\r",
    "\t",
    "\x00",
    "{",
    "}",
    "=",
    ",",
    " ",
    "\u2028",
    "\ufeff",
    "é",
    "\U0001f642",
    "\ud800",
    "\udfff",
]
INJECTIONS = ["\\n", '"} 1\nimpact_fake 1', 'x",user="root', "# HELP x y\n", '\\"', "a\\"]
LINT_PROBLEMS = 3  # promtool's exit code for style problems; a format error exits 1
CAMEL_CASE_LINT = "impact_run_info label names should be written in 'snake_case' not 'camelCase'"  # users' labels
RUN_ID_POOL = ["fz-1", "fz:2", "fz.3_x", "7"]  # reused across examples with other fields: conflicts happen
JOB_IDS = ["job-1", "job:2"]  # reused with the same fields: joins happen


@dataclass
class ModelRun:
    """What the test expects a run to be: as requested, and whether it was stopped."""

    experiment: str
    set: str
    labels: dict[str, str]
    stopped: bool = False
    on_sleeper_only: bool = True  # every pid is one of the test's long-lived children: the run cannot end by itself
    pids: set[int] = field(default_factory=set)


@dataclass
class Target:
    """The one exporter under fuzzing, live processes to register (``sleeper`` for the ranks of a job, the others
    for runs of their own: a process counts in one run at a time), and the runs it must hold."""

    exporter: ExporterProcess
    sleeper: subprocess.Popen[bytes]
    sleepers: list[subprocess.Popen[bytes]]
    dead_pid: int
    state_dir: Path
    runs: dict[str, ModelRun] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)  # answers so far, to show the fuzzing's reach

    @property
    def live_pids(self) -> list[int]:
        """The ranks' process first, then the others."""
        return [self.sleeper.pid, *(process.pid for process in self.sleepers)]

    def holder(self, pid: int) -> str | None:
        """The active run that holds ``pid`` (one of the live processes), if any."""
        return next((run_id for run_id, run in self.runs.items() if not run.stopped and pid in run.pids), None)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("fuzz")
    powercap = FakePowercap(workdir / "sys")
    powercap.add_zone("intel-rapl:0", "package-0", energy_uj=1_000_000)
    token_file = workdir / "token"
    token_file.write_text(TOKEN)
    state_dir = workdir / "state"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sleeper, *sleepers = (subprocess.Popen(["sleep", "600"]) for _ in range(6))
    exporter = ExporterProcess(
        workdir,
        [
            f"--path.sysfs={powercap.sysfs}",
            "--sample-interval=0.5",
            f"--api.token-file={token_file}",
            f"--state-dir={state_dir}",
            "--runs.retain-finished=1h",
        ],
    )
    yield Target(exporter, sleeper, sleepers, dead.pid, state_dir)
    exporter.stop()
    for process in (sleeper, *sleepers):
        process.kill()
        process.wait()


# --- strategies ---------------------------------------------------------------------------------------------------

characters = st.one_of(st.characters(codec=None), st.sampled_from(TRICKY_CHARACTERS))
short_text = st.one_of(st.text(characters, max_size=12), st.sampled_from(INJECTIONS))
long_text = st.builds(
    lambda c, n: c * n, st.sampled_from(["a", '"', "\\", "\n", "é", "\U0001f642"]), st.integers(250, 262)
)
text_values = st.one_of(short_text, long_text)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | short_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
    max_leaves=8,
)
label_names = st.one_of(
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True),
    st.sampled_from([*sorted(RESERVED_LABELS), "__name__", "__x", "le", "9a", "a-b", "a b", "", "é", "a\n", "a.b"]),
    short_text,
)
label_sets = st.one_of(
    st.dictionaries(label_names, st.one_of(text_values, json_values), max_size=4),
    st.dictionaries(st.from_regex(r"l[0-9]{1,2}", fullmatch=True), st.just("v"), min_size=30, max_size=36),
    json_values,
)
run_ids = st.one_of(
    st.sampled_from(RUN_ID_POOL),
    st.from_regex(RUN_ID, fullmatch=True),
    st.sampled_from(["../../etc/passwd", "a/b", 'a"}', "a\nb", "x" * 129, "-a", ".", "%2e%2e", "a%3Ab"]),
    short_text,
    json_values,
)


plain_text = st.one_of(st.text(characters, min_size=1, max_size=30), st.sampled_from(INJECTIONS))
plain_labels = st.dictionaries(
    st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,15}", fullmatch=True).filter(lambda name: name not in RESERVED_LABELS),
    st.one_of(plain_text, st.just("")),
    max_size=5,
)


@st.composite
def start_bodies(draw: st.DrawFn, live_pids: list[int], dead_pid: int) -> dict[str, Any]:
    """A POST /api/v1/runs body: one of the right shape (valid unless a text holds a lone surrogate), or one with a
    field (or two) made wrong or left out. The ranks of a job register ``live_pids[0]``, other runs the others."""
    body = draw(
        st.fixed_dictionaries(
            {"experiment": plain_text, "pid": st.sampled_from(live_pids[1:])},
            optional={
                "set": plain_text,
                "labels": plain_labels,
                "run_id": st.one_of(st.sampled_from(RUN_ID_POOL), st.from_regex(RUN_ID, fullmatch=True)),
            },
        )
    )
    if draw(st.integers(0, 5)) == 0:  # the ranks of a job: all but the first join its run
        body = {"experiment": "ranks", "pid": live_pids[0], "run_id": draw(st.sampled_from(JOB_IDS))}
    wrong = {
        "experiment": st.one_of(text_values, json_values),
        "set": st.one_of(text_values, json_values),
        "labels": label_sets,
        "pid": st.one_of(  # not a real low pid: a run on PID 1 would make every sample walk the whole machine
            st.sampled_from([*live_pids, dead_pid]),
            st.integers(max_value=0),
            st.integers(min_value=2**22),
            json_values.filter(lambda value: value is not None),
        ),
        "run_id": run_ids,
        draw(short_text): json_values,  # an unknown field (or, by chance, a known one)
    }
    for name in draw(st.lists(st.sampled_from(sorted(wrong)), max_size=2, unique=True)):
        if name == "pid" or draw(st.integers(0, 4)):  # without a pid the run would be this test process's tree
            body[name] = draw(wrong[name])
        else:
            body.pop(name, None)
    return body


raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.integers(1, 30_000).map(lambda n: b"[" * n),
    st.integers(1, 12_000).map(lambda n: b'{"a":' * n),
    st.integers(MAX_BODY_BYTES - 2, MAX_BODY_BYTES + 4).map(lambda n: b'{"experiment": "' + b"x" * (n - 18) + b'"}'),
    st.builds(
        lambda body, cut: json.dumps(body).encode()[:cut], st.dictionaries(short_text, json_values), st.integers(0, 40)
    ),
)


# --- requests and the oracle --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its status, Content-Type and body (decoded JSON, else the raw bytes)."""

    status: int
    content_type: str | None
    body: Any


def send(
    target: Target, method: str, path: str, raw: bytes | None, tcp_auth: str | None = None, over_tcp: bool = False
) -> Answer:
    """One request over the Unix socket, or over TCP with the given Authorization header."""
    if over_tcp:
        host, port = target.exporter.address.rsplit(":", 1)
        connection: http.client.HTTPConnection = http.client.HTTPConnection(host, int(port), timeout=15)
    else:
        connection = UnixHTTPConnection(str(target.exporter.socket_path), timeout=15)
    headers = {"Authorization": tcp_auth} if tcp_auth else {}
    try:
        connection.request(method, path, body=raw, headers=headers)
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as failure:
        pytest.fail(
            f"{method} {path} {raw[:100] if raw else raw!r}: no answer ({failure!r}); exporter log:\n"
            f"{target.exporter.log()[-3000:]}"
        )
    finally:
        connection.close()
    try:
        decoded = json.loads(data)
    except ValueError:
        decoded = data
    target.statuses[response.status] += 1
    return Answer(response.status, response.getheader("Content-Type"), decoded)


def validated(raw: bytes) -> StartRequest | None:
    """The StartRequest the project's validator makes of ``raw``, or None when it must be refused with 400."""
    try:
        return parse_start_request(json.loads(raw or b"null"))
    except (ValueError, RecursionError, InvalidRequest):
        return None


def encodes_as_utf8(*texts: str) -> bool:
    """Whether every text is Unicode that UTF-8 can encode (no lone surrogate)."""
    try:
        for text in texts:
            text.encode()
    except UnicodeEncodeError:
        return False
    return True


def expected_start(target: Target, raw: bytes, caller_pid_known: bool) -> set[int]:
    """Statuses a start request may get, from the documented rules and the runs started so far."""
    if len(raw) > MAX_BODY_BYTES:
        return {413}
    request = validated(raw)
    if request is None:
        return {400}
    if request.pid is None and not caller_pid_known:
        return {400}  # TCP: the pid is required
    if request.pid not in target.live_pids:
        return {200, 201, 400, 409}  # some other pid: running or not, by chance
    holder = target.holder(request.pid)
    known = target.runs.get(request.run_id or "")
    if known is None:
        return {201} if holder is None else {409}  # a process counts in one run at a time
    same = (request.experiment, request.set, dict(request.labels)) == (known.experiment, known.set, known.labels)
    if known.stopped or not same or holder not in (None, request.run_id):
        return {409}
    return {200} if known.on_sleeper_only else {200, 409}


def record_start(target: Target, raw: bytes, answer: Answer) -> None:
    """Check a successful start against its request and remember the run."""
    request = validated(raw)
    run = answer.body
    assert (run["experiment"], run["set"], run["labels"]) == (request.experiment, request.set, dict(request.labels))
    assert run["status"] == "active"
    assert request.run_id in (None, run["run_id"])
    assert request.pid is None or request.pid in run["pids"]
    model = target.runs.setdefault(run["run_id"], ModelRun(run["experiment"], run["set"], run["labels"]))
    model.on_sleeper_only &= set(run["pids"]) <= set(target.live_pids)
    model.pids |= set(run["pids"])


def check_answer(answer: Answer, allowed: set[int], what: object) -> None:
    assert answer.status in allowed, (what, answer)
    assert answer.content_type == "application/json", (what, answer)
    assert isinstance(answer.body, dict), (what, answer)
    if answer.status >= 400:
        assert isinstance(answer.body.get("error"), str) and answer.body["error"], (what, answer)


def expected_read_or_stop(target: Target, segment: str) -> set[int]:
    """Statuses of GET /api/v1/runs/<segment> and its stop: the run id is the percent-decoded path segment."""
    if "/" in segment:
        return {200, 400, 404, 405}  # another route, or none; the read, not the stop, may hit the list or a run
    try:
        run_id = validate_run_id(unquote(segment))
    except InvalidRequest:
        return {400}
    return {200} if run_id in target.runs else {404}


# --- the exporter's state after fuzzing ---------------------------------------------------------------------------


def stored_runs(target: Target) -> dict[str, dict[str, Any]]:
    """The runs in the exporter's SQLite store, read through a read-only connection."""
    uri = f"file:{target.state_dir / 'runs.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute("SELECT run_id, experiment, run_set, labels, end_time FROM runs").fetchall()
    return {
        run_id: {"experiment": experiment, "set": run_set, "labels": json.loads(labels), "end_time": end_time}
        for run_id, experiment, run_set, labels, end_time in rows
    }


def exposed_runs(metrics: str) -> dict[str, dict[str, str]]:
    """impact_run_info's labels per run id, as a Prometheus text parser reads them."""
    return {
        sample.labels["run_id"]: sample.labels
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "impact_run_info"
    }


def assert_exporter_sound(target: Target) -> None:
    """Alive; /metrics valid for promtool and showing exactly the runs started; the store holds only those, valid."""
    assert target.exporter.process.poll() is None, target.exporter.log()[-3000:]
    metrics = target.exporter.metrics_text()
    promtool = require_binary("promtool", "apt-get install prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True)
    problems = [line for line in (lint.stdout + lint.stderr).splitlines() if line and line != CAMEL_CASE_LINT]
    assert lint.returncode in (0, LINT_PROBLEMS) and not problems, lint.stdout + lint.stderr

    expected = {
        run_id: {"experiment": run.experiment, "set": run.set, "labels": run.labels}
        for run_id, run in target.runs.items()
    }
    exposed = exposed_runs(metrics)
    assert {
        run_id: {
            "experiment": labels["experiment"],
            "set": labels["set"],
            "labels": {k: v for k, v in labels.items() if k not in RESERVED_LABELS},
        }
        for run_id, labels in exposed.items()
    } == expected

    stored = stored_runs(target)
    assert {run_id: {k: row[k] for k in ("experiment", "set", "labels")} for run_id, row in stored.items()} == expected
    for run_id, row in stored.items():
        validate_run_id(run_id)
        parse_start_request({"experiment": row["experiment"], "set": row["set"], "labels": row["labels"]})
        assert encodes_as_utf8(run_id, row["experiment"], row["set"], *row["labels"], *row["labels"].values())
        model = target.runs[run_id]
        if model.stopped:
            assert row["end_time"] is not None, run_id
        elif model.on_sleeper_only:
            assert row["end_time"] is None, run_id
    listed = send(target, "GET", "/api/v1/runs", None)
    assert {run["run_id"] for run in listed.body["runs"]} == set(expected)


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the tests ----------------------------------------------------------------------------------------------------


def test_random_start_requests_get_their_status_and_store_only_valid_runs(
    target: Target, record_property: Callable[[str, object], None]
) -> None:
    @settings(FUZZ, max_examples=200)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        if data.draw(st.integers(0, 3)):
            raw = json.dumps(data.draw(start_bodies(target.live_pids, target.dead_pid))).encode()
        else:
            raw = data.draw(raw_bodies)
        answer = send(target, "POST", "/api/v1/runs", raw)
        check_answer(answer, expected_start(target, raw, caller_pid_known=True), raw[:200])
        if answer.status in (200, 201):
            record_start(target, raw, answer)

    fuzz()
    print(f"answers by status: {dict(target.statuses)}")
    record_property("answers_by_status", json.dumps(dict(sorted(target.statuses.items()))))
    assert {200, 201, 400, 409} <= set(target.statuses), "the strategies miss an outcome"
    assert_exporter_sound(target)


def test_random_run_ids_in_paths_are_validated_and_stops_reach_only_their_run(target: Target) -> None:
    segments = st.one_of(
        st.sampled_from(RUN_ID_POOL).map(lambda run_id: quote(run_id, safe="")),
        st.builds(quote, st.from_regex(RUN_ID, fullmatch=True), st.sampled_from(["", ":"])),
        st.builds(
            quote,
            st.text(characters, min_size=1, max_size=20).filter(encodes_as_utf8),
            st.sampled_from(["", "/", "/.%"]),
        ),
    )

    @FUZZ
    @given(segment=segments, stop=st.booleans())
    def fuzz(segment: str, stop: bool) -> None:
        path = f"/api/v1/runs/{segment}" + ("/stop" if stop else "")
        answer = send(target, "POST" if stop else "GET", path, None)
        allowed = expected_read_or_stop(target, segment)
        check_answer(answer, allowed - {200} if stop and "/" in segment else allowed, path)
        if answer.status == 200 and "/" not in segment:
            run_id = unquote(segment)
            assert answer.body["run_id"] == run_id
            if stop:
                assert answer.body["status"] == "finished"
                target.runs[run_id].stopped = True

    body = json.dumps({"experiment": "paths", "pid": target.sleepers[0].pid, "run_id": RUN_ID_POOL[1]}).encode()
    answer = send(target, "POST", "/api/v1/runs", body)
    if answer.status == 201:
        record_start(target, body, answer)
    fuzz()
    assert_exporter_sound(target)


def test_tcp_requests_need_the_token_and_then_follow_the_same_rules(target: Target) -> None:
    @settings(FUZZ, max_examples=60)
    @given(
        data=st.data(),
        auth=st.sampled_from(
            [None, f"Bearer {TOKEN}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", f"bearer  {TOKEN} "]
        ),
    )
    def fuzz(data: st.DataObject, auth: str | None) -> None:
        raw = json.dumps(data.draw(start_bodies(target.live_pids, target.dead_pid))).encode()
        answer = send(target, "POST", "/api/v1/runs", raw, tcp_auth=auth, over_tcp=True)
        authorized = (
            auth is not None and auth.split(None, 1)[0].lower() == "bearer" and auth.split(None, 1)[-1].strip() == TOKEN
        )
        allowed = expected_start(target, raw, caller_pid_known=False) if authorized else {401}
        check_answer(answer, allowed, (auth, raw[:200]))
        if answer.status in (200, 201):
            record_start(target, raw, answer)

    fuzz()
    assert_exporter_sound(target)


def test_a_run_id_with_a_colon_can_be_read_and_stopped_through_the_client(target: Target) -> None:
    client = ExporterClient(f"unix://{target.exporter.socket_path}")
    sleeper = subprocess.Popen(["sleep", "600"])  # a process of its own: the target's may be in runs already
    try:
        run = client.start_run("colon", pid=sleeper.pid, run_id="job:7.rank-0")
        target.runs[run["run_id"]] = ModelRun("colon", "", {}, on_sleeper_only=False)
        assert client.get_run("job:7.rank-0")["status"] == "active"
        stopped = client.stop_run("job:7.rank-0")
        target.runs[run["run_id"]].stopped = True
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (stopped["run_id"], stopped["status"]) == ("job:7.rank-0", "finished")
    assert_exporter_sound(target)


@pytest.mark.parametrize("over_tcp", [False, True], ids=["unix", "tcp"])
def test_an_oversized_body_gets_its_413_rather_than_a_broken_pipe(target: Target, over_tcp: bool) -> None:
    body = json.dumps({"experiment": "big", "labels": {"a": "x" * MAX_BODY_BYTES * 16}}).encode()  # 1 MiB
    answer = send(target, "POST", "/api/v1/runs", body, tcp_auth=f"Bearer {TOKEN}", over_tcp=over_tcp)
    check_answer(answer, {413}, len(body))
    assert target.exporter.process.poll() is None
