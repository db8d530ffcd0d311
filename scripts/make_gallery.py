"""Run the seed scenarios (2D) and make the gallery: docs/gallery/*.png and docs/gallery.md.

    python scripts/make_gallery.py [--outputs DIR] [--rerun]

Outputs (HDF5) go to DIR (default: outputs/, ignored by git) and are reused unless --rerun.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import engine
from engine.post import analysis, plots

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "infection_resolution": "Local infection resolving: the pro-inflammatory interleukin peaks, "
    "effectors recruited from vessels clear the pathogen, regulatory cells' IL-10 stops it.",
    "il2_therapy": "Tumour under repeated high-dose IL-2 through the vessels.",
    "il2_therapy_untreated": "The same tumour without IL-2 (control).",
    "autoimmune": "The same tissue with the stop signal broken: inflammation persists.",
    "autoimmune_healthy": "The healthy control with the stop signal intact.",
    "il2_niches": "IL-2 niches around single secreting helper cells (individual cells, not "
    "densities): responders coloured by pSTAT5, regulatory cells by their receptors, which "
    "IL-2 raises until they out-compete the responders.",
    "il2_niches_no_treg": "The same tissue without regulatory cells (control): wider niches, "
    "more responders with pSTAT5 above 0.5.",
}
CELLS = {  # what the maps draw over IL-2: type:state
    "il2_niches": ["Tresp:pSTAT5", "Treg:R"],
    "il2_niches_no_treg": ["Tresp:pSTAT5"],
}


def run(name: str, outputs: Path, rerun: bool) -> Path:
    out = outputs / f"{name}.h5"
    if rerun or not out.exists():
        cfg = engine.load_config(ROOT / "configs" / f"{name}.toml")
        engine.Simulation(cfg).run(out, overwrite=True, quiet=True)
    return out


def figures(name: str, out_path: Path, folder: Path) -> list[tuple[str, str]]:
    """(file name, caption) of the figures of one scenario."""
    made = []
    with engine.open_output(out_path) as out:
        plots.summary_plot(out, folder / f"{name}_totals.png", log=True, size=(1000, 700))
        made.append((f"{name}_totals.png", "domain totals and maxima against time"))
        middle = out.n_frames // 2
        for label, frame in (("middle", middle), ("end", out.n_frames - 1)):
            file = f"{name}_maps_{label}.png"
            cells = CELLS.get(name, ())
            plots.field_map(
                out, list(out.fields), folder / file, frame=frame, size=(1200, 900), cells=cells
            )
            time = analysis.format_time(out.time[frame])
            what = " with the cells" if cells else ""
            made.append((file, f"every field{what} at t = {time}"))
    return made


def niche_scaling_figure(folder: Path) -> tuple[str, str]:
    """The niche radius against consumption (responders x receptors) in il2_niches's model,
    with the slope -1/2 of Oyler-Yaniv et al. 2017 (tests/test_niches.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from engine.runs.examples import niche_scaling

    consumers = [(1600, 1500), (3200, 1500), (3200, 3000), (6400, 3000), (12800, 3000)]
    products, radii = niche_scaling(
        ROOT / "configs" / "il2_niches_no_treg.toml",
        consumers,
        threshold=0.01,
        overrides={"grid.shape": [160, 160]},
    )
    slope, intercept = np.polyfit(np.log(products), np.log(radii), 1)
    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    ax.loglog(products, radii, "o", label="simulated (16 secreting cells, 1.6 mm slab)")
    ax.loglog(products, np.exp(intercept) * products**slope, "-", label=f"fit: slope {slope:.3f}")
    guide = radii[0] * (products / products[0]) ** -0.5
    ax.loglog(products, guide, "k--", lw=0.8, label="slope -1/2")
    ax.minorticks_off()
    ax.set_xticks(products, [f"{p:.2g}" for p in products])
    ticks = [20, 30, 40, 60, 80, 100]
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("responders x receptors per cell")
    ax.set_ylabel("niche radius (um), IL-2 > 10 pM")
    ax.legend()
    file = "il2_niches_scaling.png"
    fig.savefig(folder / file, dpi=120)
    plt.close(fig)
    return file, (
        f"niche radius against consumption: log-log slope {slope:.3f} "
        "(theory -1/2, Oyler-Yaniv et al. 2017)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=Path, default=ROOT / "outputs")
    parser.add_argument("--rerun", action="store_true")
    args = parser.parse_args()
    args.outputs.mkdir(exist_ok=True)
    folder = ROOT / "docs" / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Gallery: the seed scenarios",
        "",
        "Made by `python scripts/make_gallery.py` from 2D runs of the configs in `configs/`.",
        "",
    ]
    for name, description in SCENARIOS.items():
        print(f"{name}: running and plotting")
        made = figures(name, run(name, args.outputs, args.rerun), folder)
        if name == "il2_niches":
            made.append(niche_scaling_figure(folder))
        lines += [f"## {name}", "", description, ""]
        lines += [
            f"![{name}: {caption}](gallery/{file})  \n*{caption}*\n" for file, caption in made
        ]
    (ROOT / "docs" / "gallery.md").write_text("\n".join(lines))
    print(f"wrote {ROOT / 'docs' / 'gallery.md'}")


if __name__ == "__main__":
    main()
