"""lrlab: choose learning rates and optimizers by experiment, a whole population at a time.

    import lrlab
    task = lrlab.image_classification(my_flax_cnn, "mnist")            # or lrlab.Task(model, train, loss, ...)
    members = lrlab.grid("adam", learning_rate=np.geomspace(1e-6, 100, 48))
    result = lrlab.lr_valley(task, members, lrlab.SweepSettings(), workdir="runs/valley")
    print(result.report()); result.best(); result.band()

The experiments (each also `python -m lrlab.experiments.<name>`): lr_valley, schedules,
techniques, random_search, bayes_search, pbt, lr_finder, lr_free, model_scaling,
optimizer_comparison, search_compare.
"""

from lrlab.engine.devices import use_cpu_devices
from lrlab.engine.loop import Budget
from lrlab.optim.hparams import HParam
from lrlab.optim.members import Members, grid
from lrlab.optim.optimizers import Optimizer, optimizer
from lrlab.optim.schedules import ScheduleSpec
from lrlab.store.views import Views
from lrlab.studies.bayes_search import bayes_search
from lrlab.studies.lr_finder import lr_finder
from lrlab.studies.lr_free import lr_free
from lrlab.studies.lr_valley import lr_valley
from lrlab.studies.model_scaling import model_scaling
from lrlab.studies.optimizer_comparison import optimizer_comparison
from lrlab.studies.pbt import pbt
from lrlab.studies.random_search import random_search
from lrlab.studies.schedules import schedules
from lrlab.studies.search_compare import search_compare
from lrlab.studies.techniques import techniques
from lrlab.task.adapters import LinenModel, NNXModel
from lrlab.task.classification import classification, image_classification
from lrlab.task.target import Target
from lrlab.task.task import Task
from lrlab.training.exploit_explore import Bound, PBTConfig
from lrlab.training.pruning import PruneSpec
from lrlab.training.range_test import lr_range_test
from lrlab.training.retirement import RetireSpec
from lrlab.training.settings import SweepSettings
from lrlab.version import __version__

__all__ = ["Bound", "Budget", "HParam", "LinenModel", "Members", "NNXModel", "Optimizer", "PBTConfig", "PruneSpec",
           "RetireSpec",
           "ScheduleSpec", "SweepSettings", "Target", "Task", "classification", "grid", "image_classification",
           "lr_finder", "lr_free", "lr_range_test", "lr_valley", "model_scaling", "optimizer", "optimizer_comparison", "pbt",
           "random_search", "bayes_search", "schedules", "search_compare", "techniques"]
__all__ += ["Views", "__version__", "use_cpu_devices"]
