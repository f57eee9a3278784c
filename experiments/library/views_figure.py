"""The README's figure of a run's Optuna study, drawn by optuna.visualization.matplotlib from the
run's own storage (lrlab draws nothing here): each trial's evaluation curve (plot_intermediate_values),
steps to target against each hyperparameter (plot_slice) and their importances (plot_param_importances).

  python -m lrlab.experiments.random_search --search=learning_rate:1e-5:1,b1:0.5:0.99 --num_samples=24 \\
      --max_steps=1000 --eval_every=50 --workdir=runs/views --tensorboard
  (its results.json: experiments/library/results/views-random_search.json.gz)
  python experiments/library/views_figure.py sqlite:///runs/views/optuna.db experiments/library/figures/optuna_views.png
"""

from __future__ import annotations

import io
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402


def rendered(draw) -> matplotlib.image.AxesImage:
    """One of Optuna's figures as an image (each draws on a figure of its own)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is experimental
        axes = draw()
    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
    figure.set_size_inches(6.4 * max(1, len(getattr(axes, "flat", [axes]))), 4.8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    return plt.imread(buffer)


def main(storage: str, out: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=None, storage=storage)
    vis = optuna.visualization.matplotlib
    params = [p for p in study.best_trial.distributions if p != "optimizer"]
    images = [rendered(lambda: vis.plot_intermediate_values(study)),
              rendered(lambda: vis.plot_slice(study, params=params)),
              rendered(lambda: vis.plot_param_importances(study, params=params))]
    widths = [image.shape[1] / image.shape[0] for image in images]
    figure, axes = plt.subplots(1, 3, figsize=(4.2 * sum(widths), 4.6), gridspec_kw={"width_ratios": widths})
    for ax, image in zip(axes, images):
        ax.imshow(image)
        ax.axis("off")
    figure.suptitle(f"Optuna's own plots of an lrlab run's storage: {study.user_attrs.get('experiment')}, "
                    f"{len(study.trials)} trials (value: steps to target, misses above the budget; intermediate "
                    f"values: {study.user_attrs.get('target_key')})", fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
