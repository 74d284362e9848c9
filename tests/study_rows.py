"""Synthetic study result rows shared by the plot and table tests (three seeds, two strategies)."""


def row(strategy, seed, n, value, *, rnd=None, cost=None, schedule="iterative", **extra):
    r = {
        "run": f"{strategy}-{schedule}-s{seed}",
        "strategy": strategy,
        "schedule": schedule,
        "seed": seed,
        "round": n // 2 - 1 if rnd is None else rnd,
        "n_labelled": n,
        "accuracy": None if value is None else 0.8 + 0.1 * value,
        "iou_solid": value,
        "bce": 0.5,
        "porosity_error": 0.01,
        "grey_pore_error": None,
        "boundary_f1": float("nan"),
        "correction_cost": cost,
        "labelled": list(range(0, 4 * n, 4)),
    }
    r.update(extra)
    return r


def study_rows():
    rows = []
    for s, strategy in enumerate(["distributed", "spaced_entropy"]):
        for seed in range(3):
            for k, n in enumerate((2, 4, 6, 8)):
                value = 0.5 + 0.05 * n + 0.1 * s + 0.01 * seed
                rows.append(row(strategy, seed, n, value, rnd=k, cost=None if k == 0 else 1000 * (4 - k) + seed))
    return rows
