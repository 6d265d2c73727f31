"""The batch-size experiments: sweeps, per-run measurements, a crash-safe result store, empirical B_crit."""

from .bcrit import BcritFit, fit_bcrit
from .measure import GradNormStats, layer_cosines, layer_distances
from .plan import LR_RULES, RunSpec, StudyPlan
from .runner import RunRecord, SavedStudy, StudySummary, execute_run, load_study, run_study
from .store import ResultStore, StudyError, StudyLock

__all__ = ["BcritFit", "fit_bcrit", "GradNormStats", "layer_cosines", "layer_distances", "LR_RULES", "RunSpec",
           "StudyPlan", "RunRecord", "SavedStudy", "StudySummary", "execute_run", "load_study", "run_study",
           "ResultStore", "StudyError", "StudyLock"]
