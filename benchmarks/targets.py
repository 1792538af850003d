"""The targets of the benchmark issue, evaluated on one run's rows (ratios from that run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


def _rows(rows: list[Row], measurement: str) -> list[Row]:
    return [r for r in rows if r["measurement"] == measurement]


def _target(name: str, value: float | None, limit: float, at_least: bool, where: str) -> dict[str, Any]:
    met = None if value is None else (value >= limit if at_least else value <= limit)
    return {"target": name, "value": value, "limit": limit, "at_least": at_least, "met": met, "where": where}


def _fused(rows: list[Row], gpu: bool) -> list[dict[str, Any]]:
    found = _rows(rows, "1_fused_vs_loop")
    out = []
    at = [r for r in found if r["case"]["model"] == "mlp" and r["case"]["B"] == 1 and r["case"]["N"] == 50]
    if not gpu:
        out.append(
            _target(
                "fused vs Python loop, MLP B=1 N=50 (CPU)",
                at[0]["speedup"] if at else None,
                15.0,
                True,
                "speedup (loop / kj.sample)",
            )
        )
    worst = min(found, key=lambda r: r["speedup"], default=None)
    out.append(
        _target(
            "fused vs Python loop, never slower", worst["speedup"] if worst else None, 1.0, True, _case(worst)
        )
    )
    return out


def _torch(rows: list[Row], gpu: bool) -> list[dict[str, Any]]:
    found = _rows(rows, "2_vs_pytorch")

    def speed(r: Row) -> float:
        return min(v for v in (r["speedup_vs_diffusers"], r["speedup_vs_torch_heun"]) if v is not None)

    out = []
    if found and found[0]["case"]["torch_device"] == "cpu":
        at = [r for r in found if r["case"]["B"] == 1]
        out.append(
            _target(
                "vs PyTorch loops (diffusers, k-diffusion style), B=1 (CPU)",
                min(map(speed, at)) if at else None,
                10.0,
                True,
                "slower of the two peers",
            )
        )
    worst = min(found, key=speed, default=None)
    out.append(
        _target("vs PyTorch loops, never slower", speed(worst) if worst else None, 1.0, True, _case(worst))
    )
    return out


def _overhead(rows: list[Row], gpu: bool) -> list[dict[str, Any]]:
    found = _rows(rows, "5_overhead_over_network")
    out = []
    if gpu:
        at = [r for r in found if r["case"]["model"] == "mlp" and r["case"]["B"] == 1]
        worst = max(at, key=lambda r: r["overhead_ratio"], default=None)
        out.append(
            _target(
                "kj.sample / network alone, mlp B=1 (GPU)",
                worst["overhead_ratio"] if worst else None,
                1.3,
                False,
                _case(worst),
            )
        )
    for model in ("mlp", "conv"):
        mine = [r for r in found if r["case"]["model"] == model]
        if not mine:
            continue
        big = max(b["case"]["B"] for b in mine)
        at = [r for r in mine if r["case"]["B"] == big]
        worst = max(at, key=lambda r: r["overhead_ratio"])
        limit = 1.05 if gpu else 1.10
        out.append(
            _target(
                f"kj.sample / network alone, {model} at its largest B ({'GPU' if gpu else 'CPU'})",
                worst["overhead_ratio"],
                limit,
                False,
                _case(worst),
            )
        )
    return out


def _scaling(rows: list[Row], gpu: bool) -> list[dict[str, Any]]:
    out = []
    found = {r["case"]["N"]: r for r in _rows(rows, "3_scaling_with_n")}
    if found:
        low, high = found[min(found)], found[max(found)]
        out.append(
            _target(
                "compile time (trace+lower+compile)",
                high["times"]["lower_plus_compile"]["median"] / low["times"]["lower_plus_compile"]["median"],
                1.3,
                False,
                f"N={max(found)} vs N={min(found)}",
            )
        )
    per_step = _rows(rows, "3_temp_memory_per_step")
    if per_step:
        worst = max(per_step, key=lambda r: r["bytes_per_step"])
        low, high = worst["case"]["N"]
        out.append(
            _target(
                "compiled temp memory growth per step",
                worst["bytes_per_step"],
                64,
                False,
                f"bytes/step, worst of {len(per_step)}: " + _case(worst, skip=("N",)) + f", N={low}..{high}",
            )
        )
    return out


def _seeds(rows: list[Row], gpu: bool) -> list[dict[str, Any]]:
    out = []
    for r in _rows(rows, "4ab_seeds"):
        out.append(
            _target(
                "vmapped single-seed calls, throughput vs one call with B keys",
                r["vmap_throughput_ratio"],
                0.95,
                True,
                _case(r),
            )
        )
        if not gpu:
            out.append(
                _target(
                    "per-sample keys, extra cost vs batch-wide noise (CPU)",
                    r["per_sample_key_cost"],
                    0.10,
                    False,
                    _case(r),
                )
            )
    for r in _rows(rows, "4c_sharding"):
        out.append(
            _target("8 CPU devices, total throughput vs 1", r["throughput_ratio"], 0.8, True, _case(r))
        )
    return out


def _memory(rows: list[Row], gpu: bool) -> list[dict[str, Any]]:
    out = []
    for r in _rows(rows, "6_memory_bound"):
        impl = r["case"]["key_impl"]
        if gpu:
            out.append(
                _target(
                    f"memory-bound churned Heun step / one normal draw ({impl} keys, GPU)",
                    r["ratio_to_floor"],
                    1.2,
                    False,
                    _case(r),
                )
            )
            if r.get("no_churn_read_write_passes_per_step") is not None:
                out.append(
                    _target(
                        "memory-bound Heun step, s_churn=0, read-write passes (GPU)",
                        r["no_churn_read_write_passes_per_step"],
                        1.2,
                        False,
                        _case(r),
                    )
                )
        else:
            out.append(
                _target(
                    f"memory-bound Heun step / CPU floor ({impl} keys)",
                    r["ratio_to_floor"],
                    1.25,
                    False,
                    _case(r),
                )
            )
    return out


def _calls(rows: list[Row], gpu: bool) -> list[dict[str, Any]]:
    return [
        _target(
            f"{r['case']['sampler']} wrapper, added us per call over its jitted program",
            r["overhead_us"],
            10.0,
            False,
            _case(r),
        )
        for r in _rows(rows, "8_call_overhead")
    ]


def _generate(rows: list[Row], gpu: bool) -> list[dict[str, Any]]:
    out = [_target(f"kj.generate throughput / sampling alone, {r['case']['model']}", r["throughput_ratio"],
                   0.95, True, f"seeds={r['case']['seeds']}, batch={r['case']['batch']}")
           for r in _rows(rows, "11_generate")]
    out += [_target(f"generate --features throughput / generate alone, {r['case']['model']}",
                    r["features_ratio"], 0.9, True,
                    f"seeds={r['case']['seeds']}, batch={r['case']['batch']}, digits classifier features")
            for r in _rows(rows, "11_generate") if "features_ratio" in r]
    return out


def _diffrax(rows: list[Row], gpu: bool) -> list[dict[str, Any]]:
    return [_target(f"diffrax / kj.sample, deterministic Heun N={r['case']['N']}, {r['case']['model']} "
                    f"B={r['case']['B']}", r["ratio"], 1.0, True, "medians; >= 1: kj.sample as fast")
            for r in _rows(rows, "12_vs_diffrax") if r["case"]["solver"] == "heun"]


def _case(r: Row | None, skip: tuple[str, ...] = ()) -> str:
    if r is None:
        return "not measured"
    keys = ("model", "B", "N", "floats", "key_impl", "solver", "devices")
    return ", ".join(
        f"{k}={v}" for k, v in r["case"].items() if k in keys and k not in skip and v is not None
    )


CHECKS: list[Callable[[list[Row], bool], list[dict[str, Any]]]] = [
    _fused,
    _torch,
    _overhead,
    _scaling,
    _seeds,
    _memory,
    _calls,
    _generate,
    _diffrax,
]


def evaluate(rows: list[Row], gpu: bool) -> list[dict[str, Any]]:
    """Every target that the rows allow to check; ``met`` is None when not measured."""
    out = []
    for check in CHECKS:
        try:
            out += check(rows, gpu)
        except (KeyError, ValueError, ZeroDivisionError) as err:
            out.append(
                _target(f"{check.__name__.strip('_')}: could not evaluate ({err})", None, 0.0, True, "")
            )
    return out
