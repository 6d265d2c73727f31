"""Batch sizes on a production line: process batch vs transfer batch, set-up time, lead time, WIP,
and pipeline-parallel training seen as a line. See :mod:`batchscope.flow.line` for the model."""

from .closed_form import ClosedForm, agreement, closed_form
from .line import Line, Station, capacity, example_line, make_line
from .loading import load_line
from .pipeline import PipelineResult, bubble_formula, pipeline_line, simulate_pipeline
from .simulate import SimulationResult, simulate
from .stats import Estimate
from .sweep import SweepResult, lot_sizes, sweep_process, sweep_transfer

__all__ = [
    "Line", "Station", "capacity", "make_line", "example_line", "load_line",
    "simulate", "SimulationResult", "Estimate",
    "closed_form", "agreement", "ClosedForm",
    "sweep_transfer", "sweep_process", "SweepResult", "lot_sizes",
    "simulate_pipeline", "PipelineResult", "pipeline_line", "bubble_formula",
]
