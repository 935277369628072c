#!/usr/bin/env bash
# The device check: everything a lent H200 should tell us, in at most 8 minutes, in one call.
#
#   1. Here, once, with network (the GPU machine reaches none): the packages it lacks, as Python 3.12
#      wheels of the versions this checkout's .venv runs, into the git-ignored .whl/ (about 30 MB):
#        bash benchmarks/device_check.sh --fetch-wheels
#   2. The device tool, from the repository root (whole call: the 8 minutes + start + transfers):
#        run(command='bash benchmarks/device_check.sh "$OUT"', carry=[".whl"], timeout_s=560)
#      then give_back, unless it is rerun at once.
#   On a CPU: bash benchmarks/device_check.sh --dry-run DIR runs every command once at tiny sizes
#   (the tests only collected, the rest on the CPU, no wheels: ~2 minutes on 2 cores);
#   tests/test_device_check.py runs it.
#
# The machine has its own Python 3.12 and torch 2.11 / torchvision 0.26 (not our pins, too big to
# carry) and most of what stl-tune needs; the carried wheels go to /tmp/site with --no-deps, the
# project is read from the checkout (PYTHONPATH), and results.json records every version it ran with.
#
# Steps, in order, each under its own time limit and all under one deadline (a step that fails or
# runs out of time is recorded as such, and the rest go on):
#   setup       nvidia-smi; install the wheels; versions; fake STL-10 (5,000 labelled 96-px images)
#   tests       the cuda-marked tests, one at a time, and alongside them the rest of the suite
#               (-m "not cuda", in 8 processes where pytest-xdist is installed): the whole suite
#   bench       benchmarks/bench_trainer.py --device cuda: the default recipe (width 64, batch 64),
#               then width 32 / batch 256: img/s, 200-epoch projection, share of the bf16 peak
#               (--peak-tflops 790: an H200's bf16 matrix product measured in this workplace)
#   search      stl-tune run of a small study (width 32, batch 256, 15 epochs, no pruner; what varies
#               leaves the compiled graph alone, so the bench's compile cache serves it) on the fake
#               data with --gpus all --workers-per-gpu 1, then 2, each under a time budget: trials
#               per hour, each trial's seconds, peak GPU memory (nvidia-smi, sampled every 0.5 s)
#   nvidia-smi  again, after
#
# Writes into OUT (or the folder given; at most 8 files come back from a device machine):
#   results.json   versions, each step's exit code and seconds, test counts and failures, the
#                  benchmark figures, the search figures, the GPU before and after
#   setup.log tests-cuda.log tests-all.log bench.log search.log nvidia-smi.log
# Scratch (data, databases, checkpoints) stays in a temporary folder that does not come back.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=run
case "${1:-}" in
  --fetch-wheels) MODE=fetch ;;
  --dry-run) MODE=dry; shift ;;
  -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

# --------------------------------------------------------------------------- wheels (here)
# What the machine lacks (KINDS.md's package list), by distribution name; their own needs are there.
WHEELS=(optuna optuna-dashboard sqlalchemy alembic mako colorlog plotly psycopg psycopg-binary bottle)
if [[ $MODE == fetch ]]; then
  py=${PYTHON:-$ROOT/.venv/bin/python}
  specs=$("$py" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' "${WHEELS[@]}") || exit 2
  rm -rf "$ROOT/.whl"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$ROOT/.whl" $specs || exit 2
  du -sh "$ROOT/.whl"
  exit 0
fi

# --------------------------------------------------------------------------- the check
OUT=${1:-${OUT:-}}
[[ -n $OUT ]] || { echo "usage: $0 [--dry-run] OUT_DIR | --fetch-wheels" >&2; exit 2; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")
cd "$ROOT"
PY=${PYTHON:-python3}
START=$(date +%s)
if [[ $MODE == run ]]; then DEADLINE=$((START + 470)); else DEADLINE=$((START + 900)); fi  # s; 10 for the summary
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
: > "$WORK/steps.tsv"

# step NAME LIMIT LOG CMD...: CMD under min(LIMIT, time to the deadline) seconds, its output
# appended to OUT/LOG, and one line "name, exit code (124: timed out), milliseconds, limit" in steps.tsv.
step() {
  local name=$1 limit=$2 log=$3; shift 3
  # A dry run shares its CPU with the rest of the parallel test suite: each step gets 4 times the
  # limit sized for the GPU machine (tiny sizes, but a Python start alone can take half a minute).
  [[ $MODE == dry ]] && limit=$((limit * 4))
  local left=$((DEADLINE - $(date +%s)))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    printf '%s\tskipped\t0\t0\n' "$name" >> "$WORK/steps.tsv"
    echo "=== $name: skipped, the deadline is near" >> "$OUT/$log"
    return
  fi
  echo "=== $name (limit ${limit}s): $*" >> "$OUT/$log"
  local t0 rc
  t0=$(date +%s%N)
  timeout -k 10 "$limit" "$@" >> "$OUT/$log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $((($(date +%s%N) - t0) / 1000000)) "$limit" >> "$WORK/steps.tsv"
  echo "=== $name: exit $rc" >> "$OUT/$log"
}

smi() {  # nvidia-smi's state of the GPU, or a line saying there is none
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu --format=csv
  else
    echo "no nvidia-smi on this machine"
  fi
}

sample_memory() {  # every 0.5 s until killed: GPU memory used in MiB, whole GPU and per process
  command -v nvidia-smi > /dev/null || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$WORK/mem-$1.csv" 2>&1 &
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits -lms 500 > "$WORK/apps-$1.csv" 2>&1 &
}

cat > "$WORK/versions.py" << 'EOF'  # what ran: JSON to stdout
import json, platform, subprocess, sys
import torch, torchvision
pip = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
    "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version() if cuda else None, "gpus": torch.cuda.device_count(),
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
    "packages": {p["name"].lower(): p["version"] for p in json.loads(pip.stdout or "[]")},
}))
EOF

# ---------------------------------------------------------------- setup
smi > "$OUT/nvidia-smi.log" 2>&1
if [[ $MODE == run ]]; then
  step install 40 setup.log "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" $(ls "$ROOT"/.whl/*.whl 2> /dev/null)
  export PYTHONPATH="$PYTHONPATH:$WORK/site"  # after the project, before the machine's site-packages
else
  step install 40 setup.log "$PY" -m pip --version
fi
step versions 30 setup.log sh -c '"$0" "$1" > "$2"' "$PY" "$WORK/versions.py" "$WORK/versions.json"
if [[ $MODE == run ]]; then per_class=500 test_per_class=10; else per_class=4 test_per_class=1; fi
step fake-data 40 setup.log "$PY" -m stl_tune data fake --out "$WORK/fake" --train-per-class $per_class \
  --test-per-class $test_per_class &
fake=$!

# ---------------------------------------------------------------- tests
# pyproject.toml's addopts run the suite in 4 processes (-n 4): pytest-xdist's option, which a
# machine without it does not know, so there the addopts go; the cuda tests share the GPU one at a time.
if "$PY" -c "import xdist" 2> /dev/null; then xdist=(-n 8) serial=(-n 0); else xdist=(-o addopts=) serial=(-o addopts=); fi
if [[ $MODE == run ]]; then
  rest=(-m "not cuda" -v "${xdist[@]}" --timeout 100)
else  # the command line parses and collects; the suite itself runs in CI anyway
  rest=(-m "not cuda" -q --collect-only tests/test_config.py)
fi
step tests-all 130 tests-all.log "$PY" -m pytest -p no:cacheprovider "${rest[@]}" --junitxml "$WORK/tests-all.xml" &
suite=$!
if [[ $MODE == run ]]; then cuda=(-v -rs "${serial[@]}"); else cuda=(-q --collect-only tests/test_syncs.py); fi
step tests-cuda 130 tests-cuda.log "$PY" -m pytest -p no:cacheprovider -m cuda "${cuda[@]}" --junitxml "$WORK/tests-cuda.xml"
wait $suite $fake

# ---------------------------------------------------------------- bench
if [[ $MODE == run ]]; then
  bench=(--device cuda --epochs 1 --peak-tflops 790)
  step bench-w64-b64 110 bench.log "$PY" benchmarks/bench_trainer.py "${bench[@]}"
  step bench-w32-b256 70 bench.log "$PY" benchmarks/bench_trainer.py "${bench[@]}" --width 32 --batch-size 256 --no-counts
else
  bench=(--device cpu --threads 1 --width 4 --image-size 16 --images 90 --epochs 1 --batch-size 8 --peak-tflops 790)
  step bench-w64-b64 120 bench.log "$PY" benchmarks/bench_trainer.py "${bench[@]}"
fi

# ---------------------------------------------------------------- search
if [[ $MODE == run ]]; then
  model="width: 32" image=96 epochs=15 batch=256 device=auto
else  # on the CPU even on a GPU host
  model="width: 4, blocks: [1, 1, 1, 1]" image=16 epochs=1 batch=8 device=cpu
fi
cat > "$WORK/study.yaml" << EOF
name: device-check
search_space:  # nothing here changes the compiled graph: one compile per worker process
  optim.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
  optim.weight_decay: {type: float, low: 0.01, high: 0.1, log: true}
  augment.mix_epochs: {type: int, low: 0, high: $epochs}
  smoothing.start: {type: float, low: 0.0, high: 0.2}
fixed:
  data: {image_size: $image}
  model: {$model}
  optim: {epochs: $epochs, batch_size: $batch, warmup_epochs: 1}
  eval: {patience: 0}
  runtime: {device: $device}
sampler: {name: random, seed: 0}
pruner: {name: none}
EOF
for k in 1 2; do
  if [[ $MODE == run ]]; then slots=(--gpus all --workers-per-gpu $k --trials 1000 --time-budget 30s); else slots=(--gpus none --workers $k --trials $k); fi
  sample_memory $k
  step search-wpg$k 50 search.log "$PY" -m stl_tune run --study "$WORK/study.yaml" --name device-check-$k \
    --storage "sqlite:///$WORK/search-$k.db" --artifacts "$WORK/artifacts-$k" --data-dir "$WORK/fake" "${slots[@]}"
  kill $(jobs -p) 2> /dev/null; wait 2> /dev/null
done

# ---------------------------------------------------------------- after, and the summary
{ echo "=== after"; smi; } >> "$OUT/nvidia-smi.log" 2>&1
"$PY" - "$WORK" "$OUT" "$MODE" "$START" << 'EOF'
"""results.json from what the steps left: every part on its own, so a missing one is noted, not fatal."""
import datetime, json, re, statistics, sys, xml.etree.ElementTree as ET
from pathlib import Path

work, out, mode, start = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
res = {"date": datetime.datetime.fromtimestamp(start).isoformat(timespec="seconds"), "mode": mode}

def part(name, fn):
    try:
        res[name] = fn()
    except Exception as e:  # a step that did not get this far
        res[name] = {"missing": f"{type(e).__name__}: {e}"}

def steps():
    rows = [line.split("\t") for line in (work / "steps.tsv").read_text().splitlines()]
    return [{"step": n, "exit": rc if rc == "skipped" else int(rc), "timed_out": rc in ("124", "137"),
             "seconds": round(int(ms) / 1000, 1), "limit_s": int(lim)} for n, rc, ms, lim in rows]

def tests(which):
    xml = work / f"tests-{which}.xml"
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        failed = [f"{c.get('classname')}.{c.get('name')}" for c in suite.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"], "failed": failed}
    # cut off before pytest wrote its report: count the -v lines it printed
    log = (out / f"tests-{which}.log").read_text()
    found = re.findall(r"(PASSED|FAILED|ERROR|SKIPPED) +(\S+::\S+)|(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)", log)
    outcome = [(a or d, b or c) for a, b, c, d in found]
    return {"cut_off": True, **{k.lower(): sum(o == k for o, _ in outcome) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")},
            "failed": [t for o, t in outcome if o in ("FAILED", "ERROR")]}

def bench():
    runs, current = {}, None
    for line in (out / "bench.log").read_text().splitlines():
        if m := re.match(r"=== (bench-\S+) \(limit", line):
            current = runs.setdefault(m[1], {"figures": []})
        elif current is not None and line.startswith("{"):
            d = json.loads(line)
            (current["figures"].append(d) if "figure" in d else current.update(setup=d))
    return runs

def memory(k):
    mib = lambda f: [float(v) for v in re.findall(r"^\s*([\d.]+)\s*$", f.read_text(), re.M)] if f.exists() else []
    gpu = mib(work / f"mem-{k}.csv")
    apps = work / f"apps-{k}.csv"
    per_pid: dict[str, float] = {}
    for pid, used in re.findall(r"^\s*(\d+),\s*([\d.]+)\s*$", apps.read_text(), re.M) if apps.exists() else []:
        per_pid[pid] = max(per_pid.get(pid, 0.0), float(used))
    return {"gpu_peak_mib": max(gpu) if gpu else None, "gpu_idle_mib": min(gpu) if gpu else None,
            "per_process_peak_mib": sorted(per_pid.values(), reverse=True) or None}

def search():
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wall = {s["step"]: s["seconds"] for s in res["steps"]} if isinstance(res.get("steps"), list) else {}
    runs = {}
    for k in (1, 2):
        try:
            study = optuna.load_study(study_name=f"device-check-{k}", storage=f"sqlite:///{work}/search-{k}.db")
            done = [t for t in study.trials if t.state == TrialState.COMPLETE]
            ends = sorted(t.datetime_complete for t in done)
            span = (ends[-1] - ends[0]).total_seconds() if len(ends) > 1 else 0
            run_s = wall.get(f"search-wpg{k}")
            steady_epochs = [s for t in done for s in t.user_attrs.get("epoch_seconds", [])[1:]]  # not the compiling one
            runs[f"workers_per_gpu_{k}"] = {
                "trials_finished": len(done), "trials": len(study.trials),
                "states": {s.name: sum(t.state == s for t in study.trials) for s in TrialState if any(t.state == s for t in study.trials)},
                "run_seconds": run_s,
                "trials_per_hour_run": round(3600 * len(done) / run_s, 1) if run_s and done else None,
                # between the first and the last trial to finish: start-up and the first compile left out
                "trials_per_hour_steady": round(3600 * (len(ends) - 1) / span, 1) if span else None,
                "trial_seconds_median": statistics.median(t.user_attrs["seconds"] for t in done) if done else None,
                "epoch_seconds_median": statistics.median(steady_epochs) if steady_epochs else None,
                "compile_seconds": sorted(round(t.user_attrs.get("compile_seconds", 0), 1) for t in done),
                "best_value": max((t.value for t in done), default=None),
                "memory": memory(k),
            }
        except Exception as e:
            runs[f"workers_per_gpu_{k}"] = {"missing": f"{type(e).__name__}: {e}", "memory": memory(k)}
    return runs

part("steps", steps)
part("versions", lambda: json.loads((work / "versions.json").read_text()))
part("tests_cuda", lambda: tests("cuda"))
part("tests_all", lambda: tests("all"))
part("bench", bench)
part("search", search)
part("nvidia_smi", lambda: [l for l in (out / "nvidia-smi.log").read_text().splitlines() if "," in l and "MiB" in l])
(out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
bad = [s["step"] for s in res.get("steps", []) if isinstance(s, dict) and s["exit"] != 0]
print(f"device check ({mode}): {len(res.get('steps', []))} steps, not ok: {', '.join(bad) or 'none'}; {out}/results.json")
EOF
rm -rf "$WORK"
