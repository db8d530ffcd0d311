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
            plots.field_map(out, list(out.fields), folder / file, frame=frame, size=(1200, 900))
            time = analysis.format_time(out.time[frame])
            made.append((file, f"every field at t = {time}"))
    return made


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
        lines += [f"## {name}", "", description, ""]
        lines += [
            f"![{name}: {caption}](gallery/{file})  \n*{caption}*\n" for file, caption in made
        ]
    (ROOT / "docs" / "gallery.md").write_text("\n".join(lines))
    print(f"wrote {ROOT / 'docs' / 'gallery.md'}")


if __name__ == "__main__":
    main()
