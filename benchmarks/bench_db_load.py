"""Database load of a search: many worker processes run the real worker loop (`work()`) with a
stand-in trainer that sleeps, against one PostgreSQL server on this host; the statements,
transactions and rows per second the server serves, and the CPU seconds its processes spend.

The trainer stand-in sleeps a uniform LOW-HIGH seconds per trial in four "epochs", reporting
each epoch like the real objective does (report + a user attr), so the database sees a trial's
writes but no CPU goes to training. Workers are forked from this process (imports paid once)
and open their own storage with heartbeats, as `stl-tune worker` does. --straggler-s makes the
budget's last trial (number N-1) that long: the tail of a real search, where trials last minutes
and the workers that find the budget all claimed wait for the last ones.

Figures, from the server's own counters (deltas over the run):
  statements/s  pg_stat_statements calls (when the extension is loaded: shared_preload_libraries)
  xacts/s       pg_stat_database xact_commit + xact_rollback (one Optuna storage call is one)
  rows/s        pg_stat_database tup_returned + tup_fetched (rows the server read, table and index)
                (backends flush these two up to 10 s late: over a short window they are approximate)
  db CPU        user + system seconds of the postmaster and all its children, from /proc
                (children that exited are counted through the postmaster's cutime/cstime)
for the whole run and while the workers wait: from the end of the last trial but one to the end of
the last (all workers but one wait for it; with --straggler-s, for most of that time). Also how
long after the last trial the last worker exited: how soon waiting workers notice the end.

  python benchmarks/bench_db_load.py --storage postgresql+psycopg://user:pass@127.0.0.1:5432/db
  python benchmarks/bench_db_load.py --storage URL --straggler-s 60
The server must run on this host (its CPU is read from /proc, as root or as the server's user),
the role must read pg_stat_* (a superuser, or pg_read_all_stats), and the database should hold
nothing else (rows/s counts whole-table scans). The study is deleted at the end. Results go to
docs/BENCHMARKS.md ("Database load").
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import time
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

import optuna
import psycopg
import sqlalchemy
from optuna.trial import TrialState

from stl_tune.search import mask_url, open_storage
from stl_tune.search.worker.workers import work

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the server's counters
@dataclass
class Sample:
    at: datetime
    statements: int  # -1 without pg_stat_statements
    xacts: int
    rows: int
    cpu_s: float

    def __sub__(self, other: Sample) -> dict[str, float]:
        return {f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self) if f.name != "at"}


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # the fields after "(comm)", from field 3 on


def server_cpu_s(postmaster: int) -> float:
    """CPU seconds of the server: the postmaster, its reaped children, and its live children."""
    f = _stat(postmaster)
    ticks = sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                g = _stat(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile: the postmaster's cutime has it (or will, once reaped)
            if int(g[1]) == postmaster:
                ticks += int(g[11]) + int(g[12])
    return ticks / CLK_TCK


class Monitor:
    """One connection that reads the server's counters (its own reads are a few rows a sample)."""

    def __init__(self, url: str):
        u = sqlalchemy.make_url(url)
        self.db = u.database
        self.conn = psycopg.connect(
            host=u.host, port=u.port or 5432, user=u.username, password=u.password, dbname=u.database, autocommit=True
        )
        backend = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.postmaster = int(_stat(backend)[1])
        try:
            self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.conn.execute("SELECT 1 FROM pg_stat_statements LIMIT 1")
            self.statements = True
        except psycopg.Error:
            self.statements = False

    def sample(self) -> Sample:
        xacts, rows = self.conn.execute(
            "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database WHERE datname = %s",
            (self.db,),
        ).fetchone()
        calls = -1
        if self.statements:
            calls = self.conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE d.datname = %s",
                (self.db,),
            ).fetchone()[0]
        return Sample(datetime.now(), int(calls), int(xacts), int(rows), server_cpu_s(self.postmaster))

    def statement_calls(self) -> dict[str, tuple[int, int]]:
        """(calls, rows) of each statement so far: which ones the load is made of."""
        if not self.statements:
            return {}
        rows = self.conn.execute(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g'), sum(calls), sum(rows) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s GROUP BY 1",
            (self.db,),
        ).fetchall()
        return {q: (int(c), int(r)) for q, c, r in rows}

    def settle(self, baseline_children: int, timeout: float = 30) -> None:
        """Wait until the workers' backends have exited and been reaped, so their CPU is counted
        (and their statistics flushed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.children() > baseline_children:
            time.sleep(0.2)
        time.sleep(1.5)  # backends flush their statistics on exit; the next sample must see them

    def children(self) -> int:
        n = 0
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    n += int(_stat(int(entry.name))[1]) == self.postmaster
                except (FileNotFoundError, ProcessLookupError):
                    pass
        return n


# ----------------------------------------------------------------------------------- the workers
def stand_in(low: float, high: float, last: int, straggler_s: float, epochs: int = 4):
    """A trainer that sleeps LOW-HIGH s (trial `last`: straggler_s), reporting each of `epochs`
    epochs like the objective."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        seconds = straggler_s if straggler_s and trial.number == last else random.uniform(low, high)
        curve = []
        for epoch in range(1, epochs + 1):
            time.sleep(seconds / epochs)
            curve.append(x)
            trial.set_user_attr("curve", curve)
            trial.report(x, epoch)
        return x

    return objective


def worker(url: str, name: str, n_trials: int, low: float, high: float, straggler_s: float, index: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    random.seed(index)
    study = optuna.load_study(
        study_name=name, storage=open_storage(url), sampler=optuna.samplers.RandomSampler(seed=index)
    )
    work(study, stand_in(low, high, n_trials - 1, straggler_s), n_trials)


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", required=True, help="PostgreSQL URL of a server on this host")
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--trial-s", default="1,2", help="LOW,HIGH seconds a stand-in trial sleeps")
    ap.add_argument("--straggler-s", type=float, default=0, help="seconds the budget's last trial takes")
    ap.add_argument("--top", type=int, default=0, help="also print the N most frequent statements")
    args = ap.parse_args()
    low, high = map(float, args.trial_s.split(","))
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    url, name = args.storage, f"load-{time.time_ns()}"
    optuna.create_study(study_name=name, storage=open_storage(url, heartbeat=False))
    mon = Monitor(url)
    baseline = mon.children()
    print(
        f"{os.cpu_count()} cores, optuna {optuna.__version__}, {mask_url(url)}: {args.workers} workers, "
        f"{args.trials} trials of {low:g}-{high:g} s"
        + (f", the last {args.straggler_s:g} s" if args.straggler_s else "")
    )

    ctx = multiprocessing.get_context("fork")  # the imports above are paid once, not per worker
    before = mon.statement_calls()
    samples = [mon.sample()]
    procs = [
        ctx.Process(target=worker, args=(url, name, args.trials, low, high, args.straggler_s, i))
        for i in range(args.workers)
    ]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        time.sleep(1.0)
        samples.append(mon.sample())
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    end = samples[-1].at  # rates over the time workers ran, counters once their backends are gone
    mon.settle(baseline)
    samples[-1] = mon.sample()
    samples[-1].at = end

    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    surplus = sum(t.user_attrs.get("fail_reason") == "surplus" for t in trials)
    assert len(done) == args.trials, (len(done), args.trials)
    ends = sorted(t.datetime_complete for t in done)
    first, last = samples[0], samples[-1]
    wait_from = next(s for s in samples if s.at >= ends[-2])  # all workers but one wait from here ...
    wait_to = next(s for s in reversed(samples) if s.at <= ends[-1])  # ... to the last trial's end

    print(
        f"{len(done)} finished, {surplus} surplus claims; run {(last.at - first.at).total_seconds():.0f} s, "
        f"the last worker exited {(last.at - ends[-1]).total_seconds():.1f} s after the last trial ended\n"
    )
    print("| phase | seconds | statements/s | xacts/s | rows/s | db CPU s | db CPU % of a core |")
    print("|---|---|---|---|---|---|---|")
    for phase, a, b in (("whole run", first, last), ("waiting for the last trial", wait_from, wait_to)):
        d, s = b - a, (b.at - a.at).total_seconds()
        if s < 2:  # between two samples: give the last trial time with --straggler-s
            print(f"| {phase} | under 2 s: not measured (--straggler-s) | | | | | |")
            continue
        stmts = f"{d['statements'] / s:.0f}" if mon.statements else "-"
        print(
            f"| {phase} | {s:.0f} | {stmts} | {d['xacts'] / s:.0f} | {d['rows'] / s:.0f} | "
            f"{d['cpu_s']:.1f} | {100 * d['cpu_s'] / s:.0f} |"
        )
    after = mon.statement_calls()
    top = sorted(after, key=lambda q: after[q][0] - before.get(q, (0, 0))[0], reverse=True)[: args.top]
    for q in top:
        calls, rows = (a - b for a, b in zip(after[q], before.get(q, (0, 0))))
        print(f"{calls:8d} calls {rows:9d} rows  {q[:150]}")
    optuna.delete_study(study_name=name, storage=url)


if __name__ == "__main__":
    main()
