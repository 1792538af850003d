"""Markdown tables of one run: targets, then one table per group of measurements.

Re-render a saved run: ``python benchmarks/report.py RESULTS.json [--summary]``
(``--summary``: the machine line, the targets and the headline speedups only, the form
pasted into the README's "Performance" section).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g}" if seconds * 1e3 < 100 else f"{seconds * 1e3:.0f}"


def _x(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _median(r: Row | None, name: str) -> float | None:
    return None if r is None or name not in r["times"] else r["times"][name]["median"]


def targets_table(targets: list[dict[str, Any]]) -> str:
    lines = []
    for t in targets:
        sign = ">=" if t["at_least"] else "<="
        met = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append([t["target"], _x(t["value"], 3), f"{sign} {t['limit']:g}", met, t["where"]])
    return _table(["target", "measured", "limit", "", "where"], lines)


def _cases(rows: list[Row], measurements: tuple[str, ...]) -> list[tuple[tuple, dict[str, Row]]]:
    by_case: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        if r["measurement"] in measurements:
            c = r["case"]
            by_case.setdefault((c["model"], c["B"], c["N"]), {})[r["measurement"][0]] = r
    return sorted(by_case.items(), key=lambda kv: (kv[0][0] != "mlp", kv[0][2], kv[0][1]))


def loop_table(rows: list[Row]) -> str:
    """Measurement 1, one line per (model, B, N): median ms and speedup."""
    lines = []
    for (model, batch, n), group in _cases(rows, ("1_fused_vs_loop",)):
        r = group["1"]
        lines.append(
            [
                model,
                str(batch),
                str(n),
                _ms(_median(r, "kj.sample")),
                _ms(_median(r, "python_loop")),
                _x(r["speedup"], 1),
            ]
        )
    return _table(["model", "B", "N", "kj.sample ms", "JAX Python loop ms", "speedup"], lines)


def torch_table(rows: list[Row]) -> str:
    """Measurement 2, one line per (B, N): median ms, speedups, PyTorch threads used."""
    lines = []
    for (_, batch, n), group in _cases(rows, ("2_vs_pytorch",)):
        r = group["2"]
        threads = r.get("torch_threads_chosen", {})
        lines.append(
            [
                str(batch),
                str(n),
                _ms(_median(r, "kj.sample")),
                _ms(_median(r, "diffusers_loop")),
                _x(r["speedup_vs_diffusers"], 1),
                _ms(_median(r, "torch_heun_loop")),
                _x(r["speedup_vs_torch_heun"], 1),
                "/".join(str(threads.get(k, "-")) for k in ("diffusers_loop", "torch_heun_loop")),
                _x(r["network_speedup_vs_torch"]),
            ]
        )
    header = ["B", "N", "kj.sample ms", "diffusers loop ms", "speedup", "PyTorch Heun loop ms", "speedup"]
    header += ["torch threads", "networks alone: PyTorch time / Flax time"]
    return _table(header, lines)


def overhead_table(rows: list[Row]) -> str:
    """Measurement 5: kj.sample over the 2N - 1 network evaluations alone."""
    lines = []
    for (model, batch, n), group in _cases(rows, ("5_overhead_over_network",)):
        r = group["5"]
        lines.append(
            [
                model,
                str(batch),
                str(n),
                _ms(_median(r, "kj.sample")),
                _ms(_median(r, "network_only")),
                _x(r["overhead_ratio"]),
                _x(r["overhead_ratio_no_churn"]),
                _x(r.get("overhead_ratio_philox")),
            ]
        )
    header = ["model", "B", "N", "kj.sample ms", "network alone ms", "ratio", "ratio, s_churn=0"]
    header += ["ratio, philox4x32 keys"]
    return _table(header, lines)


def scaling_table(rows: list[Row]) -> str:
    lines = [
        [
            str(r["case"]["N"]),
            _x(r["times"]["trace_and_lower"]["median"]),
            _x(r["times"]["xla_compile"]["median"]),
            f"{r['temp_bytes']:,}",
            _x(r["seconds_per_step"] * 1e6, 1),
        ]
        for r in rows
        if r["measurement"] == "3_scaling_with_n"
    ]
    return _table(["N", "trace+lower s", "XLA compile s", "temp bytes", "us/step"], lines)


def temp_memory_table(rows: list[Row]) -> str:
    """Measurement 3, compiled temp memory per step: one line per (size, solver)."""
    lines = []
    for r in rows:
        if r["measurement"] != "3_temp_memory_per_step":
            continue
        c = r["case"]
        low, high = c["N"]
        lines.append(
            [
                c["model"],
                f"{c['B']} x {'x'.join(map(str, c['sample_shape']))}",
                c["solver"],
                f"{r['temp_bytes'][str(low)]:,}",
                f"{r['temp_bytes'][str(high)]:,}",
                _x(r["bytes_per_step"], 1),
            ]
        )
    header = ["denoiser", "B x sample", "solver", "temp bytes, N=10", "temp bytes, N=1000", "bytes/step"]
    return _table(header, lines)


def fusions_table(rows: list[Row]) -> str:
    """Measurement 7: kernels in the compiled loop body, per case."""
    lines = []
    for r in rows:
        if r["measurement"] != "7_fusions":
            continue
        c = r["case"]
        kinds = r["by_kind"]
        other = {k: v for k, v in kinds.items() if k not in ("fusion", "dot")}
        nested = "; ".join("/".join(str(v) for v in n["computations"].values()) for n in r["nested"])
        what = f"MLP B={c['B']}" if c["model"] == "mlp" else f"x/(1+sigma^2), {c['floats'] / 2**20:g}M floats"
        churn = f"s_churn={c['s_churn']:g}" + (", draw always made" if c.get("always_draw") else "")
        lines.append(
            [
                f"({c['case']})",
                f"{what}, N={c['N']}, {churn}",
                str(r["kernels"]),
                str(kinds.get("fusion", 0)),
                str(r["scalar_only_fusions"]),
                str(kinds.get("dot", 0)),
                ", ".join(f"{k} {v}" for k, v in other.items()) or "-",
                nested or "-",
            ]
        )
    header = ["", "case", "kernels", "fusions", "scalar-only fusions", "dots", "other"]
    header += ["kernels in the cond's branches (idle / draw)"]
    return _table(header, lines)


def call_table(rows: list[Row]) -> str:
    """Measurement 8: the wrappers' per-call cost."""
    lines = [
        [
            r["case"]["sampler"],
            f"B={r['case']['B']}, N={r['case']['N']}",
            str(r["case"]["calls"]),
            _x(r["times"]["wrapper"]["median"] * 1e6, 1),
            _x(r["times"]["jitted"]["median"] * 1e6, 1),
            _x(r["overhead_us"], 1),
        ]
        for r in rows
        if r["measurement"] == "8_call_overhead"
    ]
    header = ["sampler", "case", "calls each", "wrapper us (median)", "jitted us (median)"]
    header += ["added us/call (median of pairs)"]
    return _table(header, lines)


def models_table(rows: list[Row]) -> str:
    """Measurement 9: CFG batching and the preconditioned UNet's overhead."""
    lines = []
    for r in rows:
        if r["measurement"] not in ("9a_cfg_batching", "9b_adapter_overhead"):
            continue
        c, t = r["case"], r["times"]
        case = f"UNet 8x8, B={c['B']}, N={c['N']}"
        if r["measurement"] == "9a_cfg_batching":
            lines.append(["CFG: two calls of B / one call of 2B", case, _ms(t["cfg_two_calls"]["median"]),
                          _ms(t["cfg_one_call"]["median"]), _x(r["two_calls_ratio"], 2)])
        elif r["measurement"] == "9b_adapter_overhead":
            lines.append(["kj.sample (preconditioned) / network alone", case, _ms(t["kj.sample"]["median"]),
                          _ms(t["network_only"]["median"]), _x(r["overhead_ratio"], 2)])
    return _table(["comparison", "case", "ms", "vs ms", "ratio"], lines)


def train_table(rows: list[Row]) -> str:
    """Measurement 10: train-step throughput against PyTorch."""
    lines = []
    for r in rows:
        if r["measurement"] != "10_train_step":
            continue
        cuda = r["case"].get("torch_device") == "cuda"
        case = f"MLP, B={r['case']['B']}" + (", PyTorch on CUDA" if cuda else "")
        lines.append([case, _ms(r["times"]["kj"]["median"]), _ms(r["times"]["torch"]["median"]),
                      f"{r['samples_per_s_kj']:,.0f}", f"{r['samples_per_s_torch']:,.0f}",
                      _x(r["speedup"], 2)])
    header = ["case", "kj step ms", "PyTorch step ms", "kj samples/s", "PyTorch samples/s", "speedup"]
    return _table(header, lines)


def generate_table(rows: list[Row]) -> str:
    """Measurement 11: generation throughput against sampling alone."""
    lines = [[r["case"]["model"], str(r["case"]["seeds"]), str(r["case"]["batch"]),
              _ms(r["times"]["generate"]["median"]), _ms(r["times"]["sample_only"]["median"]),
              f"{r['samples_per_s']:,.0f}", _x(r["throughput_ratio"], 3),
              _ms(r["times"]["generate_features"]["median"]) if "generate_features" in r["times"] else "",
              _x(r["features_ratio"], 3) if "features_ratio" in r else ""]
             for r in rows if r["measurement"] == "11_generate"]
    header = ["model", "seeds", "batch", "generate ms", "sample only ms", "samples/s", "throughput ratio",
              "with --features ms", "features ratio"]
    return _table(header, lines)


def inception_table(rows: list[Row]) -> str:
    """Measurement 16: Inception-v3 features, kj.inception_features vs pytorch-fid's module."""
    lines = [[str(r["case"]["size"]), str(r["case"]["B"]), _ms(r["times"]["kj"]["median"]),
              _ms(r["times"]["pytorch-fid"]["median"]), f"{r['images_per_s']['kj']:,.2f}",
              f"{r['images_per_s']['pytorch-fid']:,.2f}", _x(r["ratio"]), f"{r['max_rel_diff']:.1e}"]
             for r in rows if r["measurement"] == "16_inception" and "pytorch-fid" in r["times"]]
    header = ["image size", "B", "kj ms", "pytorch-fid ms", "kj images/s", "pytorch-fid images/s",
              "pytorch-fid time / kj", "max rel diff"]
    return _table(header, lines)


def pod_table(rows: list[Row]) -> str:
    """Measurement 13: a DiT with its weights split over a model axis vs replicated."""
    lines = []
    for r in (r for r in rows if r["measurement"] == "13_pod"):
        c = r["case"]
        for name in ("split", "replicated"):
            m = r["memory"][name]
            keys = ("weight_bytes_on_device_0", "argument_bytes", "temp_bytes")
            mib = [f"{m[k] / 2**20:.1f}" for k in keys]
            lines.append([f"{c['parameters'] / 1e6:.1f}M, {c['mesh']}", name,
                          _ms(r["seconds_per_sample"][name]), *mib])
        lines.append(["", "replicated / split", _x(1 / r["time_ratio"]), _x(r["weight_memory_ratio"]),
                      _x(r["argument_memory_ratio"]), ""])
    header = ["DiT, mesh", "weights", "ms/sample", "weight MiB/device", "argument MiB/device",
              "temp MiB/device"]
    return _table(header, lines)


def solvers_table(rows: list[Row]) -> str:
    """Measurement 14: every solver's time per step and per network evaluation, against Euler's."""
    lines = []
    for r in (r for r in rows if r["measurement"] == "14_solvers"):
        for name, t in r["times"].items():
            lines.append([str(r["case"]["B"]), name, str(r["steps"][name]), str(r["nfe"][name]),
                          _ms(t["median"]), _ms(t["median"] / r["steps"][name]),
                          _x(r["per_step_vs_euler"][name]), _x(r["per_nfe_vs_euler"][name])])
    header = ["B", "solver", "steps", "NFE", "ms/call", "ms/step", "per step / Euler", "per NFE / Euler"]
    return _table(header, lines)


def likelihood_table(rows: list[Row]) -> str:
    """Measurement 15: likelihood samples/s, kj.log_likelihood vs k-diffusion's dopri5."""
    lines = []
    for r in (r for r in rows if r["measurement"] == "15_likelihood"):
        c = r["case"]
        for name, t in r["times"].items():
            evals = r["kd_fevals"].get(name, r["kj_evaluations"])
            vs = [_x(r["ratios"][f"{name} / {ours}"]) if f"{name} / {ours}" in r["ratios"] else ""
                  for ours in ("kj exact", "kj hutchinson")]
            lines.append([f"{c['model']} (d={c['dims']})", str(c["B"]), name, str(evals), _ms(t["median"]),
                          f"{r['samples_per_s'][name]:,.1f}", f"{r['mean_nats'][name]:.3f}", *vs])
        if r.get("kdiffusion_skipped"):
            skipped = r["kdiffusion_skipped"]
            lines.append([c["model"], str(c["B"]), "k-diffusion", "", "", "", "", skipped, ""])
    header = ["denoiser", "B", "program", "network evals", "ms/call", "samples/s", "mean nats",
              "time / kj exact", "time / kj hutchinson"]
    return _table(header, lines)


PROGRAMS = ("diffrax", "kj.sample", "fori_loop")  # measurement 12's columns


def diffrax_table(rows: list[Row]) -> str:
    """Measurement 12: deterministic sampling against diffrax (and the hand-written loop)."""
    lines = []
    for r in rows:
        if r["measurement"] != "12_vs_diffrax":
            continue
        c, t = r["case"], r["times"]
        lines.append([c["model"], str(c["B"]), f"{c['solver']} ({c['network_evals']})",
                      *(f"{_ms(t[k]['min'])} / {_ms(t[k]['median'])}" for k in PROGRAMS),
                      f"**{_x(r['ratio'])}** ({_x(r['ratio_best'])})", _x(r["ratio_to_loop"]),
                      f"{r['max_abs_diff_diffrax']:.1e}"])
    header = ["denoiser", "B", "solver (evals)", "diffrax ms (best / median)", "kj.sample ms", "fori_loop ms"]
    header += ["diffrax / kj (best)", "kj / loop", "max abs diff"]
    return _table(header, lines)


def seeds_table(rows: list[Row]) -> str:
    lines = []
    for r in rows:
        c = r["case"]
        if r["measurement"] == "4ab_seeds":
            lines.append(
                [
                    "(a) vmap of single-seed calls / one call",
                    f"B={c['B']}, N={c['N']}",
                    _ms(_median(r, "vmap_single_seed")),
                    _ms(_median(r, "kj.sample")),
                    f"throughput x{r['vmap_throughput_ratio']:.2f}",
                ]
            )
            lines.append(
                [
                    "(b) per-sample keys / batch-wide noise",
                    f"B={c['B']}, N={c['N']}",
                    _ms(_median(r, "kj.sample")),
                    _ms(_median(r, "batch_wide_noise")),
                    f"cost {r['per_sample_key_cost'] * 100:+.1f}%",
                ]
            )
        elif r["measurement"] == "4c_sharding":
            d = c["devices"]
            lines.append(
                [
                    f"(c) {d} CPU devices / 1",
                    f"B={c['B']}, N={c['N']}",
                    _ms(_median(r, f"{d}_devices")),
                    _ms(_median(r, "1_devices")),
                    f"throughput x{r['throughput_ratio']:.2f}",
                ]
            )
    return _table(["comparison", "case", "ms", "vs ms", "figure"], lines)


def memory_table(rows: list[Row]) -> str:
    lines = [
        [
            r["case"]["key_impl"],
            f"{r['case']['floats'] / 2**20:g}M",
            _ms(r["seconds_per_step"]),
            _ms(r["seconds_per_normal_draw"]),
            _ms(r["seconds_per_read_write"]),
            _ms(r["floor_seconds"]),
            _x(r["ratio_to_floor"]),
            _x(r["read_write_passes_per_step"], 1),
            _ms(r.get("fused_churn_seconds_per_step")),
            _x(r.get("fused_churn_ratio_to_floor")),
            _x(r.get("fused_churn_read_write_passes_per_step"), 1),
            _x(r.get("no_churn_read_write_passes_per_step"), 1),
        ]
        for r in rows
        if r["measurement"] == "6_memory_bound"
    ]
    header = [
        "keys",
        "floats",
        "ms/Heun step",
        "ms/normal draw",
        "ms/read-write",
        "floor ms (CPU: draw + read-write; GPU: draw)",
        "step/floor (median of rounds)",
        "read-write passes/step",
        "fused churn: ms/step",
        "step/floor",
        "passes/step",
        "s_churn=0: passes/step",
    ]
    return _table(header, lines)


def headline_table(rows: list[Row]) -> str:
    """One line per MLP batch size at the first N: kj.sample and its speedups."""
    loop = {
        (c["B"], c["N"]): r
        for r in rows
        if r["measurement"] == "1_fused_vs_loop"
        for c in [r["case"]]
        if c["model"] == "mlp"
    }
    torch = {(r["case"]["B"], r["case"]["N"]): r for r in rows if r["measurement"] == "2_vs_pytorch"}
    net = {
        (c["B"], c["N"]): r
        for r in rows
        if r["measurement"] == "5_overhead_over_network"
        for c in [r["case"]]
        if c["model"] == "mlp"
    }
    lines = []
    for batch, n in sorted(set(loop) | set(torch)):
        m1, m2, m5 = loop.get((batch, n)), torch.get((batch, n)), net.get((batch, n))
        lines.append(
            [
                str(batch),
                str(n),
                _ms(_median(m1 or m2, "kj.sample")),
                _x(m1 and m1["speedup"], 1),
                _x(m2 and m2["speedup_vs_diffusers"], 1),
                _x(m2 and m2["speedup_vs_torch_heun"], 1),
                _x(m5 and m5["overhead_ratio"]),
            ]
        )
    header = ["B", "N", "kj.sample ms", "vs JAX Python loop", "vs diffusers loop", "vs PyTorch Heun loop"]
    header += ["kj.sample / network alone"]
    return _table(header, lines)


def machine_line(result: dict[str, Any]) -> str:
    m, v = result["machine"], result["versions"]
    return (
        f"{m['cpu_model']} ({m['cpu_count']} cores), JAX {v['jax']} on {m['jax_backend']} "
        f"({m['device_kind']}), torch {v['torch']}, diffusers {v['diffusers']}; preset "
        f"`{result['preset']['name']}`, {result['started']}, load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_start'] or [])}"
    )


def summary(result: dict[str, Any]) -> str:
    """Machine line, targets, and the MLP headline speedups (for the README)."""
    return "\n\n".join(
        [
            machine_line(result),
            targets_table(result["targets"]),
            "MLP denoiser (d=64, hidden 256), Heun, churn on; median times, speedups from the same run:",
            headline_table(result["rows"]),
        ]
    )


def render(result: dict[str, Any]) -> str:
    """The whole report: machine line, targets, and the measurement tables."""
    head = machine_line(result)
    rows = result["rows"]
    parts = [
        head,
        "**Targets**",
        targets_table(result["targets"]),
        "**Fused vs a Python loop of jitted steps, MLP and conv net (measurement 1)**",
        loop_table(rows),
        "**Against PyTorch, MLP, identical weights and levels (measurement 2)**",
        torch_table(rows),
        "**Overhead over the network alone (measurement 5)**",
        overhead_table(rows),
        "**Scaling with N (measurement 3)**",
        scaling_table(rows),
        "**Compiled temporary memory per step (measurement 3, compiled only)**",
        temp_memory_table(rows),
        "**Seeds and devices (measurement 4)**",
        seeds_table(rows),
        "**Memory-bound limit (measurement 6)**",
        memory_table(rows),
        "**Kernels in the compiled loop body (measurement 7, compiled only)**",
        fusions_table(rows),
        "**Per-call cost of the sampler wrappers (measurement 8)**",
        call_table(rows),
        "**Trained-network adapters, package UNet (measurement 9)**",
        models_table(rows),
        "**Train step vs PyTorch, MLP, EDM loss, Adam, EMA (measurement 10)**",
        train_table(rows),
        "**Generation end to end vs sampling alone (measurement 11)**",
        generate_table(rows),
        "**Deterministic sampling vs diffrax, N=18, s_churn=0 (measurement 12)**",
        diffrax_table(rows),
        "**Weights split over a pod's model axis vs replicated, 8 CPU devices (measurement 13)**",
        pod_table(rows),
        "**Every solver per step vs Euler, MLP, N=18, s_churn=0 (measurement 14)**",
        solvers_table(rows),
        "**Likelihood vs k-diffusion, Heun N=32 vs dopri5 atol=rtol=1e-4 (measurement 15)**",
        likelihood_table(rows),
        "**FID's Inception-v3 features vs pytorch-fid, CPU (measurement 16)**",
        inception_table(rows),
    ]
    earlier = [f"{mid} ({m['run']['started']}, {(m['run']['commit'] or '')[:7]})"
               for mid, m in result.get("measurements", {}).items()
               if "run" in m and m["run"]["started"] != result["started"]]
    if earlier:
        parts.insert(1, "Measurements kept from earlier runs on this machine kind: " + ", ".join(earlier))
    if result.get("errors"):
        parts.append("**Errors**\n" + "\n".join(f"- {k}: {e}" for k, e in result["errors"].items()))
    if result.get("skipped"):
        parts.append("**Skipped (time budget)**: " + ", ".join(result["skipped"]))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args(argv)
    result = json.loads(args.results.read_text())
    print(summary(result) if args.summary else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
