"""lrlab: choose learning rates and optimizers by experiment, a whole population at a time.

    import lrlab
    task = lrlab.image_classification(my_flax_cnn, "mnist")            # or lrlab.Task(model, train, loss, ...)
    members = lrlab.grid("adam", learning_rate=np.geomspace(1e-6, 100, 48))
    result = lrlab.lr_valley(task, members, lrlab.SweepSettings(), workdir="runs/valley")
    print(result.report()); result.best(); result.band()

The experiments (each also `python -m lrlab.experiments.<name>`): lr_valley, schedules,
techniques, random_search, bayes_search, pbt, lr_finder, model_scaling, optimizer_comparison,
search_compare.
"""

__version__ = "0.2.0"

from lrlab.comparison import search_compare  # noqa: E402
from lrlab.curves import optimizer_comparison  # noqa: E402
from lrlab.lr_schedules import ScheduleSpec  # noqa: E402
from lrlab.modules import LinenModel, NNXModel  # noqa: E402
from lrlab.optimizers import HParam, Members, Optimizer, grid, optimizer  # noqa: E402
from lrlab.population_based import PBTConfig, pbt  # noqa: E402
from lrlab.pruning import PruneSpec  # noqa: E402
from lrlab.range_test import lr_finder, lr_range_test  # noqa: E402
from lrlab.retirement import RetireSpec  # noqa: E402
from lrlab.runner import Budget  # noqa: E402
from lrlab.scaling import model_scaling  # noqa: E402
from lrlab.search import bayes_search, random_search  # noqa: E402
from lrlab.sweep import SweepSettings  # noqa: E402
from lrlab.tasks import Target, Task, classification, image_classification  # noqa: E402
from lrlab.valley import lr_valley  # noqa: E402
from lrlab.variants import schedules, techniques  # noqa: E402
from lrlab.views import Views  # noqa: E402

__all__ = ["Budget", "HParam", "LinenModel", "Members", "NNXModel", "Optimizer", "PBTConfig", "PruneSpec",
           "RetireSpec",
           "ScheduleSpec", "SweepSettings", "Target", "Task", "classification", "grid", "image_classification",
           "lr_finder", "lr_range_test", "lr_valley", "model_scaling", "optimizer", "optimizer_comparison", "pbt",
           "random_search", "bayes_search", "schedules", "search_compare", "techniques"]
__all__ += ["Views"]
