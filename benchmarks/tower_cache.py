"""What the text-tower cache saves: the fusion's text tower trained on a dataset, then fitted
again with the same inputs (loaded from the cache), timed, with the weights compared.

    python benchmarks/tower_cache.py --data ../shared/data/amazon-beauty [--out benchmarks/results/tower_cache_beauty.json]

Uses a temporary cache folder, so the user's ``$ALLMREC_HOME/text_towers`` is left alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from allmrec.data import load_preset, prepare
from allmrec.eval.report import machine_description
from allmrec.fusion.tower import TowerConfig, train_text_tower
from allmrec.text import item_text_embeddings, load_text_encoder
from allmrec.utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-beauty"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tower_cache_beauty.json"))
    args = ap.parse_args()
    ds = prepare(load_preset("amazon-beauty", path=str(Path(args.data).resolve())))
    table = item_text_embeddings(load_text_encoder("default"), ds).numpy()
    config = TowerConfig()
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        trained, _ = train_text_tower(ds, table, config, cache_dir=cache)
        t1 = time.perf_counter()
        loaded, _ = train_text_tower(ds, table, config, cache_dir=cache)
        t2 = time.perf_counter()
    same = all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))
    result = {"dataset": ds.name, "users": ds.n_users, "items": ds.n_items, "config": vars(config), "threads": torch.get_num_threads(),
              "train_seconds": round(t1 - t0, 2), "load_seconds": round(t2 - t1, 3), "same_weights": same, "machine": machine_description()}
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
