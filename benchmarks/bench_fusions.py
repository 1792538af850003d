"""Measurement 7: the kernels in the compiled sampling loop's body, counted in XLA's optimized HLO.

``kj.sample`` is compiled (not run) on the default backend (CPU here) with
``jax.jit(f).lower(*args).compile().as_text()``; the main sampling ``while`` is the one
whose ``known_trip_count`` is N - 1 (else the one with the largest body). In its body
computation every instruction that would be a kernel of its own is counted: ``fusion``
calls, and any other op that is not free (``dot``/``convolution``/``custom-call`` outside a
fusion, ``copy``, ``conditional``, ``call``, ``while``, ...). Free: ``parameter``,
``get-tuple-element``, ``tuple``, ``constant``, ``bitcast``, ``after-all``,
``opt-barrier``. For ``conditional``/``call``/``while`` ops the kernels of the called
computations are counted too, per branch. A fusion is *scalar-only* when no array in its
output has more than one element (``f32[]``, ``f32[1]``): per-step scalar arithmetic that
pays a kernel launch (~1 us on XLA:CPU) for a few flops.

Cases: (a) the MLP of :mod:`benchmarks.models` at B=1, N=18, Heun, the suite's config
(diffusers' defaults, churn on); (b) memory-bound: ``x / (1 + sigma^2)`` on B=4 x 1M
floats, N=20, s_churn=40 with s_min=0, s_max=1e9 (churn at every step); (c) the same with
s_churn=0; (d) case (b) traced under :func:`benchmarks.switches.always_draw` (the draw made at
every step, no ``lax.cond``: the form kj.sample takes below its size threshold).

Also a script, to count another version of the library (the README's "before" numbers)::

    git worktree add /tmp/old 66ae097
    python -m benchmarks.bench_fusions --library /tmp/old      # from the repo root
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import jax

ROOT = Path(__file__).resolve().parent.parent
FREE = {
    "parameter",
    "get-tuple-element",
    "tuple",
    "constant",
    "bitcast",
    "after-all",
    "opt-barrier",
    "optimization-barrier",
}
# Ops whose called computations run as kernels of their own (a fusion's do not; a reduce's
# to_apply is its reducer).
CONTROL = {"conditional", "call", "while", "async-start"}
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$")
_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*")
_ARRAY = re.compile(r"\b[a-z]+[0-9]*\[([0-9,]*)\]")
_CALLED = re.compile(r"(?:to_apply|calls|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def computations(hlo: str) -> dict[str, list[str]]:
    """HLO module text -> {computation name: its instruction lines}."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in hlo.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and not line.startswith(" "):
                current = out.setdefault(m.group(1), [])
        elif line.startswith("}"):
            current = None
        elif line.strip():
            current.append(line)
    return out


def instruction(line: str) -> tuple[str, str, str, str]:
    """``(name, output shape, opcode, rest of the line)`` of one HLO instruction line."""
    m = _NAME.match(line)
    if m is None:
        raise ValueError(f"not an HLO instruction: {line[:120]}")
    rest = line[m.end() :]
    if rest.startswith("("):  # tuple shape: up to the matching parenthesis
        depth = 0
        end = 0
        for end, ch in enumerate(rest):  # noqa: B007 - end is used after the loop
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                break
        shape, rest = rest[: end + 1], rest[end + 1 :].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    opcode = rest[: rest.index("(")].strip()
    return m.group(1), shape, opcode, rest


def elements(shape: str) -> list[int]:
    """Element count of every array in an HLO shape (a tuple gives several)."""
    return [math.prod(int(d) for d in dims.split(",") if d) for dims in _ARRAY.findall(shape)]


def count_kernels(comps: dict[str, list[str]], name: str) -> dict[str, Any]:
    """The kernels of computation ``name``: count, by opcode, scalar-only fusions, nested counts."""
    kinds: dict[str, int] = {}
    scalar: list[str] = []
    nested: list[dict[str, Any]] = []
    fusion_shapes: list[str] = []
    for line in comps[name]:
        iname, shape, opcode, rest = instruction(line)
        if opcode in FREE:
            continue
        kinds[opcode] = kinds.get(opcode, 0) + 1
        if opcode == "fusion":
            fusion_shapes.append(shape)
            if max(elements(shape), default=1) <= 1:
                scalar.append(f"{iname} {shape}")
        if opcode in CONTROL:
            called = _CALLED.findall(rest)
            branches = _BRANCHES.search(rest)
            if branches:
                called += [b.strip().lstrip("%") for b in branches.group(1).split(",") if b.strip()]
            nested.append(
                {
                    "op": f"{opcode} {iname}",
                    "computations": {c: count_kernels(comps, c)["kernels"] for c in called if c in comps},
                }
            )
    return {
        "kernels": sum(kinds.values()),
        "by_kind": dict(sorted(kinds.items())),
        "fusions": kinds.get("fusion", 0),
        "scalar_only_fusions": len(scalar),
        "scalar_only": scalar,
        "fusion_shapes": fusion_shapes,
        "nested": nested,
    }


def loop_body(hlo: str, trip_count: int) -> tuple[dict[str, list[str]], str]:
    """The computations and the name of the sampling loop's body (trip count N - 1)."""
    comps = computations(hlo)
    loops = []
    for lines in comps.values():
        for line in lines:
            if " while(" not in line:
                continue
            body = re.search(r"body=%?([\w.\-]+)", line)
            trip = _TRIP.search(line)
            if body and body.group(1) in comps:
                loops.append((trip is not None and int(trip.group(1)) == trip_count, body.group(1)))
    if not loops:
        raise ValueError("no while loop in the compiled program")
    best = max(loops, key=lambda lb: (lb[0], len(comps[lb[1]])))
    return comps, best[1]


def count_program(fn: Any, args: tuple[Any, ...], trip_count: int, always: bool = False) -> dict[str, Any]:
    """Compiles ``jit(fn)(*args)`` (under ``always_draw`` if asked) and counts its loop body."""
    if always:
        from benchmarks.switches import compile_always_drawing

        compiled = compile_always_drawing(fn, *args)
    else:
        compiled = jax.jit(fn).lower(*args).compile()
    comps, body = loop_body(compiled.as_text(), trip_count)
    return {"body": body, **count_kernels(comps, body)}


def cases() -> list[tuple[dict[str, Any], Any, tuple[Any, ...], int, bool]]:
    """``(case, fn, args, trip count, always_draw)`` of every counted program."""
    import karras_jax as kj
    from benchmarks.models import init_model

    out = []
    apply_fn, params, shape = init_model("mlp")
    config = kj.KarrasVeConfig()
    n = 18
    state = kj.set_timesteps(config, n)

    def mlp(params: Any, keys: jax.Array, state: Any) -> jax.Array:
        return kj.sample(lambda x, s, c: apply_fn(params, x, s, c), keys, state, None, shape)

    keys = jax.random.split(jax.random.key(0), 1)
    out.append(
        (
            {"case": "a", "model": "mlp", "B": 1, "N": n, "s_churn": config.s_churn},
            mlp,
            (params, keys, state),
            n - 1,
            False,
        )
    )

    floats, batch, n = 1 << 20, 4, 20
    for label, s_churn, always in (("b", 40.0, False), ("c", 0.0, False), ("d", 40.0, True)):
        config_m = kj.KarrasVeConfig(s_churn=s_churn, s_min=0.0, s_max=1e9)
        state_m = kj.set_timesteps(config_m, n)

        def elementwise(keys: jax.Array, state: Any, config: Any = config_m) -> jax.Array:
            return kj.sample(lambda x, s, c: x / (1.0 + s * s), keys, state, None, (floats,))

        keys = jax.random.split(jax.random.key(0), batch)
        case = {
            "case": label,
            "model": "elementwise",
            "B": batch,
            "floats": batch * floats,
            "N": n,
            "s_churn": s_churn,
            "always_draw": always,
        }
        out.append((case, elementwise, (keys, state_m), n - 1, always))
    return out


def measure() -> list[dict[str, Any]]:
    """One row per case, for the ``karras_jax`` that is imported."""
    import karras_jax as kj

    rows = []
    for case, fn, args, trip, always in cases():
        counted = count_program(fn, args, trip, always)
        rows.append(
            {
                "measurement": "7_fusions",
                "case": {**case, "backend": jax.default_backend(), "library": str(Path(kj.__file__).parent)},
                "times": {},
                **counted,
            }
        )
    return rows


def run(suite: Any) -> list[dict[str, Any]]:
    """Rows of measurement 7 (the preset does not matter: compile only)."""
    del suite
    return measure()


def table(rows: list[dict[str, Any]]) -> str:
    """Plain-text summary: one line per case."""
    lines = []
    for r in rows:
        c = r["case"]
        nested = "; ".join(
            f"{n['op'].split()[0]}: " + "/".join(str(v) for v in n["computations"].values())
            for n in r["nested"]
        )
        lines.append(
            f"({c['case']}) {c['model']} B={c['B']} N={c['N']} s_churn={c['s_churn']}: "
            f"{r['kernels']} kernels "
            f"{r['by_kind']}, {r['scalar_only_fusions']} scalar-only fusions"
            + (f", nested {nested}" if nested else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--library", type=Path, default=None, help="import karras_jax from this checkout")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.library is not None:
        if "karras_jax" in sys.modules:
            raise SystemExit("karras_jax was imported before --library could take effect")
        sys.path.insert(0, str(args.library.resolve()))
    import karras_jax as kj

    where = Path(kj.__file__).resolve()
    if args.library is not None and args.library.resolve() not in where.parents:
        raise SystemExit(f"imported {where}, not from {args.library}")
    print(
        f"karras_jax from {where.parent}, JAX {jax.__version__} on {jax.default_backend()}", file=sys.stderr
    )
    rows = measure()
    print(json.dumps(rows, indent=1) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.append(str(ROOT))
    sys.exit(main())
