"""Cgroup runs: parsing cgroup names, reading membership from a cgroupfs tree laid out as Slurm lays it out, and a
cgroup run's energy through the real sampler, registry and API on fake procfs, cgroupfs and powercap trees."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from impact_exporter.api import Caller, RunAPI
from impact_exporter.cgroups import UNIFIED, Cgroup, CgroupFS, Operators, parse_cgroup, parse_proc_cgroup
from impact_exporter.groups import ProcessGroups
from impact_exporter.ledger import Ledger
from impact_exporter.runs import RunRegistry, user_name
from impact_exporter.sampler import Sampler
from impact_exporter.sources.rapl import RaplSource
from impact_exporter.store import RunStore
from tests.fakes.cgroups import FakeCgroups
from tests.fakes.powercap import FakePowercap
from tests.fakes.procfs import FakeProc

PACKAGE = "intel-rapl:0"
STEPD, SHELL, CHILD, DAEMON, OUTSIDER = 300, 301, 302, 303, 400
ALICE = 1000
JOB = "/slurm_node1/uid_1000/job_42"
OPERATOR = Caller(uid=0, pid=None, operator=True)
USER = Caller(uid=ALICE, pid=None)

PROC_CGROUP_HYBRID = """\
9:name=systemd:/
6:freezer:/slurm_vm/uid_65534/job_1/step_0
4:memory:/process_api/56d9
1:cpu,cpuacct:/
0::/
"""


def test_proc_cgroup_lines_give_each_hierarchy_its_path() -> None:
    assert parse_proc_cgroup(PROC_CGROUP_HYBRID) == {
        "name=systemd": "/",
        "freezer": "/slurm_vm/uid_65534/job_1/step_0",
        "memory": "/process_api/56d9",
        "cpu": "/",
        "cpuacct": "/",
        UNIFIED: "/",
    }
    assert parse_proc_cgroup("0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\ngarbage\n") == {
        UNIFIED: "/system.slice/slurmstepd.scope/job_7/step_0/user/task_0"
    }


@pytest.mark.parametrize(
    ("text", "cgroup"),
    [
        ("/system.slice/slurmstepd.scope/job_7", Cgroup(UNIFIED, "/system.slice/slurmstepd.scope/job_7")),
        ("freezer:/slurm_vm/uid_0/job_1//", Cgroup("freezer", "/slurm_vm/uid_0/job_1")),
        ("name=systemd:/user.slice/user@1000.service", Cgroup("name=systemd", "/user.slice/user@1000.service")),
        ("/", Cgroup(UNIFIED, "/")),
    ],
)
def test_a_cgroup_is_named_as_proc_names_it(text: str, cgroup: Cgroup) -> None:
    assert parse_cgroup(text) == cgroup
    assert parse_cgroup(str(cgroup)) == cgroup


@pytest.mark.parametrize(
    "text",
    ["", "relative/path", "freezer:relative", "/a/../../etc", "/a/./b", "Freezer:/x", "a:b:/x", "/a b", "/" * 2000],
)
def test_a_cgroup_that_could_leave_the_cgroupfs_or_is_no_path_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="cgroup"):
        parse_cgroup(text)


def test_nested_cgroups_overlap_only_within_one_hierarchy() -> None:
    job, step = Cgroup("freezer", JOB), Cgroup("freezer", JOB + "/step_0")
    assert job.contains(step) and not step.contains(job) and step.overlaps(job)
    assert not job.overlaps(Cgroup("cpuacct", JOB))
    assert not job.overlaps(Cgroup("freezer", JOB + "0")), "job_420 is not below job_42"


def test_membership_is_read_from_the_cgroup_and_every_cgroup_below_it(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    for pid in (SHELL, CHILD, OUTSIDER):
        proc.spawn(pid, 1, start=10)
    cgroups = FakeCgroups(tmp_path / "cgroup", proc)
    job = cgroups.slurm_job(ALICE, 42, ("batch", "0", "extern"))
    cgroups.place(SHELL, f"{job}/step_batch")
    cgroups.place(CHILD, f"{job}/step_0")
    cgroupfs = CgroupFS(cgroups.root)
    assert sorted(cgroupfs.processes(parse_cgroup(f"freezer:{job}"))) == [SHELL, CHILD]
    assert cgroupfs.processes(parse_cgroup(f"cpuacct:{job}/step_0")) == [CHILD]
    assert cgroupfs.processes(parse_cgroup("freezer:/slurm_node1/uid_1000/job_43")) is None
    assert "6:cpuacct" not in proc.root.joinpath(str(SHELL), "cgroup").read_text()
    assert f"freezer:{job}/step_batch" in proc.root.joinpath(str(SHELL), "cgroup").read_text()


def test_the_unified_hierarchy_is_the_root_on_a_v2_host_and_unified_on_a_hybrid_one(tmp_path: Path) -> None:
    hybrid, pure = tmp_path / "hybrid", tmp_path / "pure"
    (hybrid / "unified").mkdir(parents=True)
    pure.mkdir()
    (pure / "cgroup.controllers").write_text("cpu memory\n")
    job = Cgroup(UNIFIED, "/system.slice/slurmstepd.scope/job_7")
    assert CgroupFS(hybrid).directory(job) == hybrid / "unified/system.slice/slurmstepd.scope/job_7"
    assert CgroupFS(pure).directory(job) == pure / "system.slice/slurmstepd.scope/job_7"
    assert CgroupFS(pure).directory(Cgroup("name=systemd", "/x")) == pure / "systemd/x"


def test_operators_are_root_and_the_group_by_effective_gid() -> None:
    assert Operators().includes(0, 0)
    assert not Operators().includes(ALICE, 0)
    assert Operators(group=4242).includes(ALICE, 4242)
    assert not Operators(group=4242).includes(ALICE, 1000)


@dataclass
class Machine:
    """A fake node: processes, a Slurm cgroup tree and a package counter, read by the exporter's real sampler,
    registry and API."""

    proc: FakeProc
    cgroups: FakeCgroups
    powercap: FakePowercap
    registry: RunRegistry
    sampler: Sampler
    api: RunAPI

    def sample(self) -> None:
        self.sampler.sample_once()

    def burn(self, joules: float, busy_ticks: int, running: dict[int, int]) -> None:
        """The machine spends ``busy_ticks``, ``running`` says whose, and the package uses ``joules``."""
        self.proc.advance(busy_ticks, 0, running)
        self.powercap.advance(PACKAGE, joules)

    def run(self, caller: Caller, body: dict) -> tuple[int, dict]:
        reply = self.api.handle("POST", "/api/v1/runs", json.dumps(body).encode(), caller)
        return reply.status, reply.body


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    proc = FakeProc(tmp_path / "proc")
    proc.spawn(STEPD, 1, start=proc.uptime_ticks - 500, uid=0, comm="slurmstepd")
    proc.spawn(SHELL, STEPD, start=proc.uptime_ticks - 400, uid=ALICE, comm="sh")
    proc.spawn(OUTSIDER, 1, start=proc.uptime_ticks - 300, uid=ALICE)
    cgroups = FakeCgroups(tmp_path / "cgroup", proc)
    job = cgroups.slurm_job(ALICE, 42, ("0",))
    cgroups.place(SHELL, f"{job}/step_0")
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone(PACKAGE, "package-0", energy_uj=1_000_000)
    procfs, cgroupfs, ledger = proc.procfs(), CgroupFS(cgroups.root), Ledger()
    groups = ProcessGroups(procfs)
    store = RunStore(tmp_path / "state" / "runs.sqlite")
    registry = RunRegistry(procfs, store, ledger=ledger, groups=groups, cgroupfs=cgroupfs)
    sampler = Sampler(
        procfs,
        energy=RaplSource(powercap.sysfs),
        ledger=ledger,
        groups=groups,
        cgroupfs=cgroupfs,
        on_sample=lambda snapshot: registry.settle(snapshot.timestamp),
    )
    sampler.sample_once()
    yield Machine(proc, cgroups, powercap, registry, sampler, RunAPI(registry, lambda: sampler.snapshot))
    store.close()


def test_a_cgroup_run_keeps_the_energy_of_a_process_that_double_forks_out_of_the_tree(machine: Machine) -> None:
    status, run = machine.run(
        OPERATOR,
        {"experiment": "train", "run_id": "slurm-c-42", "cgroup": f"freezer:{JOB}", "uid": ALICE},
    )
    assert status == 201, run
    assert (run["user"], run["cgroup"], run["pids"]) == (user_name(ALICE), f"freezer:{JOB}", [])
    machine.sample()
    # The shell forks a child that forks the daemon and exits: the daemon, reparented to init, leaves the tree but
    # not the cgroup. All of it happens between two samples.
    born = machine.proc.uptime_ticks + 1
    machine.proc.spawn(CHILD, SHELL, start=born, uid=ALICE)
    machine.proc.spawn(DAEMON, CHILD, start=born, uid=ALICE)
    machine.cgroups.place(CHILD, f"{JOB}/step_0")
    machine.cgroups.place(DAEMON, f"{JOB}/step_0")
    machine.burn(20.0, busy_ticks=200, running={SHELL: 10, CHILD: 20, DAEMON: 60, OUTSIDER: 100})
    machine.proc.reap(CHILD)
    machine.cgroups.drop(CHILD)
    machine.proc.update(DAEMON, ppid=1)
    machine.sample()
    # The shell exits too: only the daemon is left, and it goes on.
    machine.burn(10.0, busy_ticks=100, running={DAEMON: 50, OUTSIDER: 50})
    machine.proc.reap(SHELL)
    machine.cgroups.drop(SHELL)
    machine.sample()
    [held] = [r for r in machine.registry.runs() if r.run_id == "slurm-c-42"]
    assert held.active, "a cgroup run does not end while its cgroup exists"
    assert held.cpu_seconds == pytest.approx((10 + 20 + 60 + 50) / 100)
    assert held.energy_joules["cpu"] == pytest.approx(20.0 * 90 / 200 + 10.0 * 50 / 100)
    unattributed = machine.sampler.snapshot.unattributed_joules["package"]
    assert held.energy_joules["cpu"] + unattributed == pytest.approx(30.0), "energy is conserved"


def test_a_task_that_runs_before_the_runs_first_sample_and_exits_before_the_next_is_counted_whole(
    machine: Machine,
) -> None:
    """slurmd starts a step's task right after the prolog registered the job, and the task's slurmstepd, outside the
    cgroup, reaps it: the task's time before any sample saw the run, and after the last sample that saw the task, is
    the run's (it was born in the cgroup; its reaper's cutime holds its final total)."""
    status, _ = machine.run(OPERATOR, {"experiment": "train", "run_id": "slurm-c-42", "cgroup": f"freezer:{JOB}"})
    assert status == 201
    machine.proc.spawn(CHILD, STEPD, start=machine.proc.uptime_ticks, uid=ALICE)
    machine.cgroups.place(CHILD, f"{JOB}/step_0")
    machine.burn(10.0, busy_ticks=100, running={SHELL: 10, CHILD: 40, OUTSIDER: 50})
    machine.sample()
    machine.burn(10.0, busy_ticks=100, running={CHILD: 30, OUTSIDER: 70})
    machine.proc.reap(CHILD)
    machine.cgroups.drop(CHILD)
    machine.sample()
    [held] = [r for r in machine.registry.runs() if r.run_id == "slurm-c-42"]
    assert held.cpu_seconds == pytest.approx((10 + 40 + 30) / 100)
    assert held.energy_joules["cpu"] == pytest.approx(10.0 * 50 / 100 + 10.0 * 30 / 100)


def test_a_non_operator_gets_403_and_an_operator_group_member_gets_the_run(machine: Machine) -> None:
    body = {"experiment": "train", "run_id": "mine", "cgroup": f"freezer:{JOB}"}
    status, reply = machine.run(USER, body)
    assert status == 403 and "--runs.cgroup-operators" in reply["error"]
    status, reply = machine.run(Caller(uid=ALICE, pid=None, operator=True), body)
    assert status == 201 and reply["user"] == user_name(ALICE)


def test_a_process_counts_in_one_run_whether_its_cgroup_or_its_tree_was_registered_first(machine: Machine) -> None:
    status, _ = machine.run(OPERATOR, {"experiment": "job", "run_id": "job", "cgroup": f"freezer:{JOB}"})
    assert status == 201
    status, reply = machine.run(Caller(uid=ALICE, pid=None), {"experiment": "mine", "pid": SHELL})
    assert status == 409 and "cgroup" in reply["error"] and "run" not in reply, "root's run is not shown to alice"
    status, reply = machine.run(Caller(uid=0, pid=None), {"experiment": "stepd", "pid": STEPD})
    assert status == 409 and f"descendant, process {SHELL}" in reply["error"], reply
    assert (reply["run"]["run_id"], reply["run"]["cgroup"]) == ("job", f"freezer:{JOB}"), "its own run is named"
    status, reply = machine.run(OPERATOR, {"experiment": "x", "run_id": "step", "cgroup": f"freezer:{JOB}/step_0"})
    assert status == 409 and "overlaps" in reply["error"]
    status, reply = machine.run(Caller(uid=0, pid=None), {"experiment": "tree", "pid": OUTSIDER})
    assert status == 201
    machine.cgroups.make("cpuacct", "/other")
    machine.cgroups.place(OUTSIDER, "/other", ("cpuacct",))
    status, reply = machine.run(OPERATOR, {"experiment": "x", "run_id": "other", "cgroup": "cpuacct:/other"})
    assert status == 409 and f"process {OUTSIDER}" in reply["error"], reply


def test_a_cgroup_run_ends_when_its_cgroup_goes_and_not_while_it_is_not_made_yet(machine: Machine) -> None:
    later = "/slurm_node1/uid_1000/job_43"
    status, _ = machine.run(OPERATOR, {"experiment": "e", "run_id": "job43", "cgroup": f"freezer:{later}"})
    assert status == 201
    machine.sample()
    [run] = [r for r in machine.registry.runs() if r.run_id == "job43"]
    assert run.active, "Slurm makes a job's cgroup after its prolog registered it"
    machine.cgroups.slurm_job(ALICE, 43, ("0",))
    machine.proc.spawn(CHILD, STEPD, start=machine.proc.uptime_ticks, uid=ALICE)
    machine.cgroups.place(CHILD, f"{later}/step_0")
    machine.sample()
    machine.proc.reap(CHILD)
    machine.cgroups.drop(CHILD)
    for controller in ("freezer", "cpuacct", "memory"):
        machine.cgroups.remove(controller, later)
    machine.sample()
    [run] = [r for r in machine.registry.runs() if r.run_id == "job43"]
    assert not run.active


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"experiment": "e", "cgroup": f"freezer:{JOB}", "pid": SHELL}, "not both"),
        ({"experiment": "e", "uid": ALICE, "pid": SHELL}, "owner of a cgroup run"),
        ({"experiment": "e", "cgroup": "freezer:/../../etc"}, "'..'"),
        ({"experiment": "e", "cgroup": 7}, "must be a string"),
        ({"experiment": "e", "cgroup": f"freezer:{JOB}", "uid": -1}, "uid must be"),
        ({"experiment": "e", "cgroup": f"freezer:{JOB}", "uid": True}, "uid must be"),
    ],
)
def test_a_careless_cgroup_request_is_a_400_naming_the_rule(machine: Machine, body: dict, message: str) -> None:
    status, reply = machine.run(OPERATOR, body)
    assert status == 400 and message in reply["error"], reply


def test_a_process_moved_into_a_cgroup_run_counts_there_only_and_every_joule_once(machine: Machine) -> None:
    """The cgroup run (the operator's) comes first: a process run's child moved into the job's cgroup leaves the
    process run, counts in the cgroup run from the next sample, and when its old parent reaps it only the time
    after the cgroup run's last sample of it lands in the process run. The interval of the move is nobody's."""
    kid = OUTSIDER + 1
    machine.proc.spawn(kid, OUTSIDER, start=machine.proc.uptime_ticks - 200, uid=ALICE)
    status, _ = machine.run(Caller(uid=ALICE, pid=None), {"experiment": "mine", "run_id": "mine", "pid": OUTSIDER})
    assert status == 201
    status, _ = machine.run(OPERATOR, {"experiment": "job", "run_id": "job", "cgroup": f"freezer:{JOB}"})
    assert status == 201
    machine.sample()
    every_burn = {SHELL: 10, OUTSIDER: 20, kid: 30}
    machine.burn(10.0, busy_ticks=100, running=every_burn)
    machine.sample()  # mine: 20 + 30, job: 10
    machine.cgroups.place(kid, f"{JOB}/step_0")
    machine.burn(10.0, busy_ticks=100, running=every_burn)
    machine.sample()  # mine: 20 (the kid left it); job: 10 (the kid counts from this sample)
    machine.burn(10.0, busy_ticks=100, running=every_burn)
    machine.sample()  # mine: 20, job: 10 + 30
    machine.burn(10.0, busy_ticks=100, running={SHELL: 10, OUTSIDER: 20, kid: 5})
    machine.proc.reap(kid)
    machine.cgroups.drop(kid)
    machine.sample()  # mine: 20 + the kid's last 5, through its cutime; job: 10
    runs = {run.run_id: run for run in machine.registry.runs()}
    assert runs["mine"].cpu_seconds == pytest.approx((50 + 20 + 20 + 25) / 100)
    assert runs["job"].cpu_seconds == pytest.approx((10 + 10 + 40 + 10) / 100)
    assert runs["mine"].energy_joules["cpu"] == pytest.approx(10.0 * (50 + 20 + 20 + 25) / 100)
    assert runs["job"].energy_joules["cpu"] == pytest.approx(10.0 * (10 + 10 + 40 + 10) / 100)
    unattributed = machine.sampler.snapshot.unattributed_joules["package"]
    total = runs["mine"].energy_joules["cpu"] + runs["job"].energy_joules["cpu"] + unattributed
    assert total == pytest.approx(40.0), "energy is conserved exactly"


def test_a_cgroup_run_whose_cgroup_went_while_the_exporter_was_down_ends_after_a_restart(
    machine: Machine, tmp_path: Path
) -> None:
    """That the cgroup has held processes is kept in the store: after a restart a gone cgroup ends its run, and a
    cgroup that was never made (the prolog ran, the job had not started) keeps its run active."""
    later = "/slurm_node1/uid_1000/job_43"
    for run_id, cgroup in (("job42", JOB), ("job43", later)):
        status, _ = machine.run(OPERATOR, {"experiment": "e", "run_id": run_id, "cgroup": f"freezer:{cgroup}"})
        assert status == 201
    machine.sample()
    machine.burn(1.0, busy_ticks=100, running={SHELL: 10})
    machine.sample()
    machine.registry.close()
    machine.proc.reap(SHELL)  # the job ends while the exporter is down, and Slurm removes its cgroups
    machine.cgroups.drop(SHELL)
    for controller in ("freezer", "cpuacct", "memory"):
        machine.cgroups.remove(controller, JOB)
    procfs, cgroupfs, ledger = machine.proc.procfs(), CgroupFS(machine.cgroups.root), Ledger()
    groups = ProcessGroups(procfs)
    store = RunStore(tmp_path / "state" / "runs.sqlite")
    registry = RunRegistry(procfs, store, ledger=ledger, groups=groups, cgroupfs=cgroupfs)
    sampler = Sampler(
        procfs,
        energy=RaplSource(machine.powercap.sysfs),
        ledger=ledger,
        groups=groups,
        cgroupfs=cgroupfs,
        on_sample=lambda snapshot: registry.settle(snapshot.timestamp),
    )
    sampler.sample_once()
    sampler.sample_once()
    runs = {run.run_id: run for run in registry.runs()}
    assert not runs["job42"].active and runs["job42"].cpu_seconds == pytest.approx(0.1)
    assert runs["job43"].active
    store.close()


def test_a_process_of_the_job_that_joins_the_job_run_by_its_id_is_told_the_run_measures_it(machine: Machine) -> None:
    """impact-run in a Slurm job hands the job's run id to the code it runs: joining by that id is answered with the
    run (a 409 the client records as the run), whatever experiment the code names; a process outside the cgroup
    cannot join it by id."""
    status, _ = machine.run(
        OPERATOR, {"experiment": "train", "run_id": "slurm-c-42", "cgroup": f"freezer:{JOB}", "uid": ALICE}
    )
    assert status == 201
    for body in ({"experiment": "inner", "pid": SHELL}, {"experiment": "inner", "run_id": "slurm-c-42", "pid": SHELL}):
        status, reply = machine.run(USER, body)
        assert status == 409 and reply["run"]["run_id"] == "slurm-c-42", reply
    status, reply = machine.run(USER, {"experiment": "train", "run_id": "slurm-c-42", "pid": OUTSIDER})
    assert status == 409 and "run" not in reply and "by being in that cgroup" in reply["error"], reply
    [run] = [run for run in machine.registry.runs() if run.run_id == "slurm-c-42"]
    assert run.processes == (), "joining did not make it a process run too"
