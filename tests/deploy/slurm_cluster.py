"""A real single-node Slurm cluster for the tests: Debian's munged, slurmctld and slurmd started as root in a
private directory (own ports, own munge key and socket), with proctrack/cgroup on the host's cgroup v1 freezer
hierarchy and the shipped prolog and epilog (deploy/slurm/impact-slurm) pointed at a test exporter's socket.

Jobs are submitted as ``nobody`` with the script on standard input; what the job's user must reach (slurm.conf,
munged's socket, slurmd's spool, the jobs' output) is in a directory of its own that everyone may traverse.
Starting the three daemons took 0.3 s (by hand) to 1.2 s (at a load of 17 on 2 cores); ``stop`` stops them, kills
what is left of the jobs and removes the node's cgroups, which Slurm keeps.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.servers import IN_CI, REPO_ROOT, require_binary, wait_for

PROLOG = REPO_ROOT / "deploy" / "slurm" / "impact-slurm"
NODE = "iet1"
CLUSTER = "testc"
FREEZER = Path("/sys/fs/cgroup/freezer")
HINT = "apt-get install slurmctld slurmd slurm-client munge"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}


def free_ports(count: int) -> list[int]:
    """Loopback ports free a moment ago, all different."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def slurm_conf(directory: Path, public: Path, ports: list[int], prolog: Path) -> str:
    """slurm.conf of the one-node cluster: the shipped lines (deploy/slurm/slurm.conf) and what a test node needs."""
    shipped = (REPO_ROOT / "deploy" / "slurm" / "slurm.conf").read_text()
    shipped = shipped.replace("/usr/local/sbin/impact-slurm", str(prolog))
    return f"""\
ClusterName={CLUSTER}
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={public / "munge.socket"}
CredType=cred/munge
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
StateSaveLocation={directory / "state"}
SlurmdSpoolDir={public / "spool"}
SlurmctldPidFile={directory / "slurmctld.pid"}
SlurmdPidFile={directory / "slurmd.pid"}
SlurmctldLogFile={directory / "slurmctld.log"}
SlurmdLogFile={directory / "slurmd.log"}
SchedulerType=sched/builtin
SelectType=select/cons_tres
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=2
MinJobAge=300
NodeName={NODE} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=gpu Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
{shipped}"""


CGROUP_CONF = """\
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainRAMSpace=no
"""


class SlurmCluster:
    """munged, slurmctld and slurmd of one node, running until ``stop``."""

    def __init__(self, directory: Path, exporter_socket: Path) -> None:
        binaries = {name: require_binary(name, HINT) for name in ("munged", "slurmctld", "slurmd", "sbatch")}
        if os.geteuid() != 0 or not FREEZER.is_dir():
            message = (
                f"a Slurm node needs root (slurmd runs jobs as their users) and {FREEZER} (Slurm's proctrack/cgroup "
                "with cgroup/v1 uses the v1 freezer)"
            )
            pytest.fail(message) if IN_CI else pytest.skip(message)
        self.directory = directory
        (directory / "state").mkdir(parents=True)
        # What the job's user must reach: munged's socket (srun in the job asks it for credentials), slurm.conf
        # and slurmd's spool, where the job's script is.
        self.public = Path(tempfile.mkdtemp(prefix="iet-slurm-"))
        self.public.chmod(0o755)
        (self.public / "spool").mkdir(mode=0o755)
        (self.public / "out").mkdir()
        (self.public / "out").chmod(0o1777)  # the jobs' output, written as their user
        key = directory / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        prolog = directory / "prolog"  # slurmd gives a prolog no settings: the site's wrapper sets them
        prolog.write_text(
            "#!/bin/sh\n"
            f"export IMPACT_EXPORTER_SOCKET={exporter_socket}\n"
            "export IMPACT_SLURM_CGROUP='freezer:/slurm_%n/uid_%u/job_%j'\n"
            f'exec {PROLOG} "$@"\n'
        )
        prolog.chmod(0o755)
        self.config = self.public / "slurm.conf"  # srun in the job reads it
        self.config.write_text(slurm_conf(directory, self.public, free_ports(2), prolog))
        (self.public / "cgroup.conf").write_text(CGROUP_CONF)
        self.environment = {**os.environ, "SLURM_CONF": str(self.config)}
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            self._start(
                binaries["munged"],
                "-F",
                "-f",
                f"--socket={self.public / 'munge.socket'}",
                f"--key-file={key}",
                f"--pid-file={directory / 'munged.pid'}",
                f"--log-file={directory / 'munged.log'}",
                f"--seed-file={directory / 'munge.seed'}",
            )
            wait_for(lambda: (self.public / "munge.socket").exists(), 10, "munged to listen")
            self._start(binaries["slurmctld"], "-D", "-i", "-f", str(self.config))
            self._start(binaries["slurmd"], "-D", "-N", NODE, "-f", str(self.config))
            wait_for(self._node_idle, 30, f"slurmd to register (logs in {directory})")
        except BaseException:  # pytest's failures too: what started is stopped
            self.stop()
            raise

    def _start(self, *argv: str) -> None:
        with (self.directory / "daemons.log").open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.environment)
        self.processes.append(process)

    def _node_idle(self) -> bool:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited with {process.returncode}: see {self.directory}")
        shown = self.command("sinfo", "-h", "-n", NODE, "-o", "%T", check=False)
        return shown.strip() == "idle"

    def command(self, *argv: str, check: bool = True, stdin: str | None = None) -> str:
        """A Slurm client command's output, talking to this cluster."""
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=30, env=self.environment, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        return result.stdout

    def submit(self, script: str, *options: str) -> int:
        """Submit ``script`` as user nobody; its job id."""
        shown = self.command(
            "sbatch",
            "--parsable",
            "--uid=nobody",
            "--gid=nogroup",
            "-o",
            str(self.public / "out" / "job-%j.out"),
            "-D",
            "/",
            *options,
            stdin=script,
        )
        return int(shown.strip().split(";")[0])

    def output(self, job_id: int) -> str:
        """What the job wrote, and slurmd's log: why it failed."""
        job = self.public / "out" / f"job-{job_id}.out"
        return f"{job.read_text() if job.exists() else ''}\n{(self.directory / 'slurmd.log').read_text()[-3000:]}"

    def job_state(self, job_id: int) -> str:
        shown = self.command("scontrol", "show", "job", "-o", str(job_id))
        match = re.search(r"JobState=(\w+)", shown)
        return match.group(1) if match else ""

    def wait_finished(self, job_id: int, timeout: float) -> str:
        """Wait until the job has ended and its epilog has run; its final state."""
        state = wait_for(
            lambda: (s := self.job_state(job_id)) in FINAL_STATES and s, timeout, f"Slurm job {job_id} to end"
        )
        wait_for(
            lambda: "COMPLETING" not in self.command("scontrol", "show", "job", "-o", str(job_id)),
            timeout,
            f"the epilog of job {job_id}",
        )
        return state

    def stop(self) -> None:
        """Stop the daemons (slurmd first), kill what is left of the jobs (a slurmstepd outlives slurmd) and remove
        the node's cgroups, which Slurm keeps."""
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for procs in FREEZER.glob(f"slurm_{NODE}/**/cgroup.procs"):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        wait_for(
            lambda: not any(p.read_text().strip() for p in FREEZER.glob(f"slurm_{NODE}/**/cgroup.procs")),
            10,
            "the jobs' processes to die",
        )
        for directory in sorted(FREEZER.glob(f"slurm_{NODE}/**/"), key=lambda path: -len(path.parts)):
            with contextlib.suppress(OSError):  # one still holding a process stays; the others go
                directory.rmdir()
        shutil.rmtree(self.public, ignore_errors=True)
