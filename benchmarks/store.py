"""Where runs are kept: one JSON file per machine kind, the latest figures of each measurement.

``<out>/<machine>.json`` (``machine`` is :func:`benchmarks.environment.describe`'s label:
``cpu-amd-epyc-2c``, ``gpu-nvidia-h200-16c``, ...). A run replaces the rows of the
measurements it ran and keeps, from the file it found, those of the measurements it did not
run (``--only``, a time budget, a package not installed here), each with the run it came
from (``measurements[id]["run"]``: ``started``, ``commit``, ``preset``, load average). The
file is written to a temporary file in the same folder and renamed into place, so a run cut
short, or a failed write, leaves either the previous file or the new one, never half of one.

Also a script, to fold saved runs (e.g. ``benchmarks/gpu.sh``'s output) into a folder,
oldest first::

    python -m benchmarks.store RUN.json [RUN.json ...] --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Result = dict[str, Any]


def path_for(out: Path, label: str) -> Path:
    """The file of machine kind ``label`` in folder ``out``."""
    return out / f"{label}.json"


def measurement_id(name: str, ids: Iterable[str]) -> str | None:
    """The measurement id a row name belongs to (``"4ab_seeds"`` -> ``"4ab"``, ``"9a_cfg_batching"``
    -> ``"9"``, ``"12_vs_diffrax"`` -> ``"12"``, not ``"1"``): the longest id it starts with that
    is not followed by a digit."""
    found = [i for i in ids if name.startswith(i) and not name[len(i):len(i) + 1].isdigit()]
    return max(found, key=len, default=None)


def provenance(result: Result) -> dict[str, Any]:
    """What identifies the run a measurement came from."""
    return {
        "started": result.get("started"),
        "commit": result.get("git", {}).get("commit"),
        "dirty": result.get("git", {}).get("dirty"),
        "preset": result.get("preset", {}).get("name"),
        "load_average_at_start": result.get("machine", {}).get("load_average_at_start"),
    }


def stamp(result: Result) -> Result:
    """``result`` with its own provenance recorded in each of its measurements that lacks one."""
    run = provenance(result)
    measurements = {mid: {**m, "run": m.get("run", run)} for mid, m in result.get("measurements", {}).items()}
    return {**result, "measurements": measurements}


def merge(previous: Result | None, current: Result, ids: Iterable[str]) -> Result:
    """``current`` plus what ``previous`` measured that ``current`` did not (rows, errors, entries).

    Targets are not re-evaluated here (the caller does, on the merged rows).
    """
    ids = list(ids)
    current = stamp(current)
    if previous is None:
        return current
    previous = stamp(previous)
    errors = current.get("errors", {})
    # a measurement skipped for a missing package (torch, diffusers, diffrax) replaces nothing
    missing = {mid for mid, e in errors.items()
               if e.startswith("skipped:") and mid in previous["measurements"]}
    ran = {mid: m for mid, m in current["measurements"].items() if mid not in missing}
    kept = {mid: m for mid, m in previous["measurements"].items() if mid not in ran}
    rows = [r for r in previous.get("rows", []) if measurement_id(r["measurement"], ids) in kept]
    return {
        **current,
        "measurements": {**kept, **ran},
        "rows": rows + current.get("rows", []),
        "errors": {**{m: e for m, e in previous.get("errors", {}).items() if m in kept},
                   **{m: e for m, e in errors.items() if m not in missing}},
    }


def write(path: Path, result: Result) -> None:
    """Writes ``result`` as JSON to ``path`` atomically (temporary file in the folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the kept file private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path) -> Result | None:
    """The saved result at ``path``, or None when there is none."""
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import MEASUREMENTS
    from benchmarks.targets import evaluate

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="saved results JSON, merged oldest first")
    parser.add_argument("--out", type=Path, required=True, help="folder of one file per machine kind")
    args = parser.parse_args(argv)
    runs = sorted((json.loads(p.read_text()) for p in args.runs), key=lambda r: r["started"])
    for run in runs:
        path = path_for(args.out, run["label"])
        merged = merge(read(path), run, MEASUREMENTS)
        merged["targets"] = evaluate(merged["rows"], merged["machine"]["jax_backend"] == "gpu")
        write(path, merged)
        print(f"{path}: measurements {', '.join(merged['measurements'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
