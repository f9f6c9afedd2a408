"""Data pipeline: readers -> preprocessing -> split + candidates -> cached SequenceDataset -> scenarios.

Typical use::

    from allmrec.data import load_preset, prepare, get_scenario
    ds = prepare(load_preset("amazon-beauty", path="../shared/data/amazon-beauty"))
    scenario = get_scenario(ds, "cold_items")
"""

from allmrec.data.config import PrepareConfig
from allmrec.data.dataset import SequenceDataset
from allmrec.data.presets import list_presets, load_preset
from allmrec.data.raw import DataFormatError, RawData
from allmrec.data.readers import read_raw
from allmrec.data.scenarios import Scenario, get_scenario
from allmrec.data.stats import dataset_stats, print_stats, stats_table
from allmrec.data.store import dataset_dir, fingerprint, load_prepared, prepare

__all__ = [
    "DataFormatError",
    "PrepareConfig",
    "RawData",
    "Scenario",
    "SequenceDataset",
    "dataset_dir",
    "dataset_stats",
    "fingerprint",
    "get_scenario",
    "list_presets",
    "load_prepared",
    "load_preset",
    "prepare",
    "print_stats",
    "read_raw",
    "stats_table",
]
