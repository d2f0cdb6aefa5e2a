"""Compares two runs of scripts/gpu-chain.sh (CSV lines `what,index,value`), and optionally
the reference run against the PyTorch oracle's tests/fixtures/rm_run/expected.json.

    python3 scripts/compare-chains.py REF.csv GOT.csv --abs 1e-3 --rel 1e-3 [--oracle expected.json]

Prints one Markdown row per quantity (training losses of each run, the weak labels' margins,
each run's test margins) with its largest difference, and exits 1 if any value differs by
more than abs + rel * |reference|, or if the two runs did not measure the same things.
Standard library only (the GPU machine's python3 is enough).
"""

import argparse
import json
import sys


def read(path):
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            what, i, v = line.rsplit(",", 2)
            values.setdefault(what, {})[int(i)] = float(v)
    return values


def oracle(path):
    e = json.load(open(path))
    out = {}
    for run, key in (("teacher", "gt"), ("explicit", "explicit")):
        out[f"loss:{run}"] = {i + 1: v for i, v in enumerate(e[key]["losses"])}
        out[f"test_margin:{run}"] = dict(enumerate(e[key]["test_margins"]))
    out["w2s_margin"] = dict(enumerate(e["gt"]["w2s_margins"]))
    return out


def compare(name, ref, got, abs_tol, rel_tol):
    ok = True
    rows = []
    for what in sorted(set(ref) | set(got)):
        r, g = ref.get(what, {}), got.get(what, {})
        if set(r) != set(g):
            rows.append(f"| {name} | {what} | {len(r)} vs {len(g)} values | - | **no** |")
            ok = False
            continue
        worst, passed = 0.0, True
        for i, v in r.items():
            d = abs(g[i] - v)
            worst = max(worst, d)
            if not d <= abs_tol + rel_tol * abs(v):  # NaN fails
                passed = False
        ok &= passed
        rows.append(f"| {name} | {what} | {len(r)} | {worst:.2e} | {'yes' if passed else '**no**'} |")
    return ok, rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ref")
    p.add_argument("got")
    p.add_argument("--abs", type=float, required=True)
    p.add_argument("--rel", type=float, default=0.0)
    p.add_argument("--oracle")
    p.add_argument("--name", default="chain")
    a = p.parse_args()
    ref, got = read(a.ref), read(a.got)
    if not ref:
        sys.exit(f"{a.ref}: no values")
    print("| comparison | quantity | values | largest difference | within tolerance |")
    print("|---|---|---|---|---|")
    ok, rows = compare(a.name, ref, got, a.abs, a.rel)
    print("\n".join(rows))
    if a.oracle:
        o = oracle(a.oracle)
        # The oracle holds what PyTorch computed in f32: the reference must be within 1e-4.
        ok_o, rows = compare("reference vs PyTorch", o, {k: ref.get(k, {}) for k in o}, 1e-4, 0.0)
        print("\n".join(rows))
        ok &= ok_o
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
